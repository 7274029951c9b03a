"""The Omni-Flash-Ext routes: submit, get, list, cancel, account."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from omniflash.api.deps import Caller, Services, ServicesDep, Submitter
from omniflash.api.presenters import task_public
from omniflash.api.submission import idempotency_request, read_json, submit_spec
from omniflash.contract import parse_generation_request
from omniflash.errors import InvalidRequest
from omniflash.pricing import credits
from omniflash.store import KeyInfo, TaskRow

__all__ = ["router"]

router = APIRouter()


def _submitted(task_id: str, replayed: bool = False) -> JSONResponse:
    headers = {"Idempotency-Replayed": "true"} if replayed else None
    return JSONResponse(
        {"code": 200, "data": [{"status": "submitted", "task_id": task_id}]}, headers=headers
    )


@router.post("/v1/videos/generations", summary="Submit a video generation task")
async def submit(request: Request, key: Submitter, services: ServicesDep) -> JSONResponse:
    """Validate, price, charge and queue a task; answers at once with its id."""
    body = await read_json(request, services.settings.max_body_bytes)
    # The store blocks (SQLite waits on its write lock): keep it off the event loop.
    return await run_in_threadpool(
        _submit, body, request.headers.get("idempotency-key"), key, services
    )


def _submit(body: Any, idem_key: str | None, key: KeyInfo, services: Services) -> JSONResponse:
    try:
        spec = parse_generation_request(body)
    except RecursionError as exc:
        raise InvalidRequest("The request body is nested too deeply") from exc
    submitted = submit_spec(services, key, spec, idempotency_request(idem_key, body))
    return _submitted(submitted.task.id, replayed=submitted.replayed)


def _one_task(task: TaskRow, request: Request, services: Services) -> JSONResponse:
    public = task_public(
        task,
        base_url=services.base_url(request),
        signer=services.signer,
        pricing=services.settings.pricing,
        presigner=services.presigner,
    )
    return JSONResponse({"code": 200, "data": public})


# Polls are most of the traffic: one thread hop for the one query, the rest on the loop.
@router.get("/v1/tasks/{task_id}", summary="Get a task's status and result")
async def get_task(
    task_id: str, request: Request, key: Caller, services: ServicesDep
) -> JSONResponse:
    task = await run_in_threadpool(services.store.tasks.get, task_id, key.id)
    return _one_task(task, request, services)


@router.post("/v1/tasks/{task_id}/cancel", summary="Cancel a pending or processing task")
async def cancel_task(
    task_id: str, request: Request, key: Caller, services: ServicesDep
) -> JSONResponse:
    task = await run_in_threadpool(services.store.tasks.cancel, task_id, key.id)
    return _one_task(task, request, services)


@router.get("/v1/tasks", summary="List the caller's tasks, newest first")
async def list_tasks(
    request: Request,
    key: Caller,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="the last task id of the previous page")] = None,
) -> JSONResponse:
    rows = await run_in_threadpool(
        services.store.tasks.list_for_key, key.id, limit=limit + 1, after=after
    )
    page = rows[:limit]
    base = services.base_url(request)
    return JSONResponse(
        {
            "code": 200,
            "data": [
                task_public(
                    t,
                    base_url=base,
                    signer=services.signer,
                    pricing=services.settings.pricing,
                    presigner=services.presigner,
                )
                for t in page
            ],
            "has_more": len(rows) > limit,
            "next_after": page[-1].id if len(rows) > limit else None,
        }
    )


@router.get("/v1/account", summary="The caller's key: name, balance and limits")
def account(key: Caller, services: ServicesDep) -> dict[str, Any]:
    from omniflash.webhooks import WebhookSecrets

    fresh = services.store.keys.get(key.id)
    return {
        "code": 200,
        "data": {
            "name": fresh.name,
            "prefix": fresh.prefix,
            "balance": credits(fresh.balance),
            "rpm": fresh.rpm,
            "max_concurrent": fresh.max_concurrent,
            "webhook_secret": WebhookSecrets(services.store.db).current(key.id),
        },
    }
