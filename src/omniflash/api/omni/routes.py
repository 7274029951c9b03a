"""The Omni-Flash-Ext routes: submit, get, list, cancel, account.

The submit and the poll are added to the app's own router (``add_hot_routes``), the rest
are ``router``'s.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from omniflash.api.deps import DirectRoute, Reader, Services, ServicesDep, Submitter, Writer
from omniflash.api.omni.apimart import (
    RESPONSE_VERSION_HEADER,
    number,
    parse_language,
    request_id,
    response_version,
    submitted_task,
    task_data,
    with_request_id,
)
from omniflash.api.responses import JSONResponse, encode
from omniflash.api.submission import (
    counted_if_refused,
    counted_if_refused_async,
    idempotency_request,
    read_json,
    submit_spec,
)
from omniflash.contract import parse_generation_request
from omniflash.errors import InvalidRequest, NotFound
from omniflash.pricing import credits
from omniflash.store import KeyInfo, Submission, TaskRow
from omniflash.text import cursor, shown
from omniflash.text import task_id as checked_task_id

__all__ = ["add_hot_routes", "router"]

router = APIRouter()


def _submitted(submitted: Submission, version: str | None, services: Services) -> JSONResponse:
    """The submit's answer: the seed's one-item array, or the task object of ``version``."""
    headers = {"Idempotency-Replayed": "true"} if submitted.replayed else {}
    task = submitted.task
    data: Any
    if version is None:
        data = [{"status": "submitted", "task_id": task.id}]
    else:
        headers[RESPONSE_VERSION_HEADER] = version
        pricing = services.settings.pricing
        data = submitted_task(
            task, credits_cost=credits(task.credits), cost=pricing.cost(task.credits)
        )
    return JSONResponse(with_request_id({"code": 200, "data": data}), headers=headers)


async def submit(request: Request, key: Submitter, services: ServicesDep) -> JSONResponse:
    """Validate, price, charge and queue a task; answers at once with its id.

    ``X-APIMart-Response-Version: 2026-07-27`` (or later) answers ``data`` as the task object.
    """
    version = response_version(request.headers.get(RESPONSE_VERSION_HEADER))
    async with counted_if_refused_async(services, key):
        body = await read_json(request, services.settings.max_body_bytes)
    # The store blocks (SQLite waits on its write lock): keep it off the event loop.
    submitted = await run_in_threadpool(
        _submit, body, request.headers.get("idempotency-key"), key, services
    )
    return _submitted(submitted, version, services)


def _submit(body: Any, idem_key: str | None, key: KeyInfo, services: Services) -> Submission:
    with counted_if_refused(services, key):
        try:
            spec = parse_generation_request(body)
        except RecursionError as exc:
            raise InvalidRequest("The request body is nested too deeply") from exc
        idempotency = idempotency_request(idem_key, body)
    return submit_spec(services, key, spec, idempotency)


def _one_task(
    task: TaskRow, request: Request, services: Services, language: str | None = None
) -> Response:
    version = response_version(request.headers.get(RESPONSE_VERSION_HEADER))
    base = services.base_url(request)
    data = services.rendered(
        task,
        ("omni", base, language, version),
        lambda: task_data(services, task, base, language, version),
    )
    # ``with_request_id({"code": 200, "data": ...})``, its ``data`` encoded already.
    rid = request_id()
    tail = b',"request_id":' + encode(rid) + b"}" if rid is not None else b"}"
    return Response(b'{"code":200,"data":' + data + tail, media_type="application/json")


# Polls are most of the traffic: one read awaited on the event loop, no thread hop, and
# no dependency solving (``DirectRoute``).
async def get_task(
    task_id: str,
    request: Request,
    key: Reader,
    services: ServicesDep,
    language: Annotated[
        str | None,
        Query(description="zh, en, ko or ja: standard error messages in that language"),
    ] = None,
) -> Response:
    lang = parse_language(language)
    response_version(request.headers.get(RESPONSE_VERSION_HEADER))  # a bad one: 400 first
    task = await services.reads.task(checked_task_id(task_id), key.id)
    if task is None:
        raise NotFound(f"No task {shown(task_id)} for this API key")
    return _one_task(task, request, services, lang)


def add_hot_routes(app_router: APIRouter) -> None:
    """Add the submit and the poll (``GET /v1/tasks/{id}``), most of the traffic, to the
    app's own router: FastAPI matches a request against an included router's routes
    twice, a sixth of a poll's time.  The poll is a ``DirectRoute``."""
    app_router.add_api_route(
        "/v1/videos/generations",
        submit,
        methods=["POST"],
        summary="Submit a video generation task",
    )
    app_router.add_api_route(
        "/v1/tasks/{task_id}",
        get_task,
        methods=["GET"],
        summary="Get a task's status and result",
        route_class_override=DirectRoute,
    )


@router.post("/v1/tasks/{task_id}/cancel", summary="Cancel a pending or processing task")
async def cancel_task(
    task_id: str, request: Request, key: Writer, services: ServicesDep
) -> Response:
    task = await run_in_threadpool(services.store.tasks.cancel, checked_task_id(task_id), key.id)
    return _one_task(task, request, services)


@router.get("/v1/tasks", summary="List the caller's tasks, newest first")
async def list_tasks(
    request: Request,
    key: Reader,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="the last task id of the previous page")] = None,
) -> JSONResponse:
    version = response_version(request.headers.get(RESPONSE_VERSION_HEADER))
    rows = await services.reads.page(key.id, limit=limit + 1, after=cursor(after))
    page = rows[:limit]
    base = services.base_url(request)
    return JSONResponse(
        with_request_id(
            {
                "code": 200,
                "data": [task_data(services, t, base, version=version) for t in page],
                "has_more": len(rows) > limit,
                "next_after": page[-1].id if len(rows) > limit else None,
            }
        )
    )


@router.get("/v1/account", summary="The caller's key: name, balance and limits")
def account(key: Reader, services: ServicesDep) -> dict[str, Any]:
    from omniflash.webhooks import WebhookSecrets

    fresh = services.store.keys.get(key.id)
    return with_request_id(
        {
            "code": 200,
            "data": {
                "name": fresh.name,
                "prefix": fresh.prefix,
                "balance": number(credits(fresh.balance)),
                "rpm": fresh.rpm,
                "max_concurrent": fresh.max_concurrent,
                "webhook_secret": WebhookSecrets(services.store.db).current(key.id),
            },
        }
    )
