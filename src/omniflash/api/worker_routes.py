"""``/worker/v1/``: the endpoints remote ``omniflash worker`` processes pull their tasks from.

A worker authenticates with its own token (``omniflash workers create``), never an API
key.  Every call after the claim names the task and the lease ``epoch`` it holds; a
stale epoch changes nothing and answers ``{"held": false}``.  The task logic is the
in-process workers' own: these routes call ``StoreTaskSource`` and the store.

==========================================  =======================================
``GET  /worker/v1/config``                  the server's lease and timeout settings
``POST /worker/v1/claim``                   long poll: 200 a lease, 204 none in time
``POST /worker/v1/tasks/{id}/heartbeat``    renew and record progress: ``held``
``GET  /worker/v1/tasks/{id}/inputs/{n}``   the task's n-th stored input, streamed
``PUT  /worker/v1/tasks/{id}/result``       the result file, streamed: ``held``
``POST /worker/v1/tasks/{id}/complete``     end the task with the uploaded file
``POST /worker/v1/tasks/{id}/fail``         end this attempt with an error
``POST /worker/v1/tasks/{id}/release``      hand the task back untried
==========================================  =======================================
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from omniflash import __version__
from omniflash.api.deps import Services, ServicesDep, services_of
from omniflash.api.responses import JSONResponse
from omniflash.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from omniflash.inputs import blob_inputs
from omniflash.store import TaskRow, TaskStatus, WorkerInfo
from omniflash.text import bearer_token
from omniflash.worker.source import Lease, StoreTaskSource, result_key

__all__ = ["MAX_CLAIM_WAIT_S", "router"]

router = APIRouter(prefix="/worker/v1", include_in_schema=False)

MAX_CLAIM_WAIT_S = 60.0
"""The longest a claim is held open; a worker asking for more gets this."""
URL_LIFETIME_S = 3600
"""How long a presigned input or upload URL outlives the task's own time limit."""
WRITE_CHUNK = 1024 * 1024


def authenticate_worker(request: Request) -> WorkerInfo:
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise AuthenticationFailed(
            "Authentication failed: send the worker token as `Authorization: Bearer TOKEN`"
        )
    worker = services_of(request).store.workers.authenticate(token)
    if worker is None:
        raise AuthenticationFailed(
            "Authentication failed: this worker token is unknown or revoked "
            "(API keys do not open the worker endpoints)"
        )
    return worker


WorkerDep = Annotated[WorkerInfo, Depends(authenticate_worker)]


class ClaimRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=60, description="the worker loop's own name")
    wait_s: float = Field(default=0.0, ge=0, description="how long to wait for a task")


class LeaseRequest(BaseModel):
    epoch: int


class HeartbeatRequest(LeaseRequest):
    progress: int = Field(default=0, ge=0, le=100)


class FailRequest(LeaseRequest):
    message: str = Field(max_length=4000)
    retry: bool = False


class CompleteRequest(LeaseRequest):
    result: dict[str, Any] = Field(description="frames, width, height, fps, duration, info")


def _source(services: Services) -> StoreTaskSource:
    return StoreTaskSource(services.settings, services.store, services.storage, services.waker)


def _task(services: Services, task_id: str) -> TaskRow:
    try:
        return services.store.tasks.get(task_id)
    except NotFound as exc:
        raise NotFound(f"No task {task_id!r}") from exc


def _lease(task: TaskRow, epoch: int) -> Lease:
    return Lease(task.id, task.spec, task.seed, task.attempts, epoch)


def _holds(task: TaskRow, epoch: int) -> bool:
    return task.status is TaskStatus.PROCESSING and task.lease_epoch == epoch


def _held(held: bool) -> dict[str, bool]:
    return {"held": held}


@router.get("/config")
def config(worker: WorkerDep, services: ServicesDep) -> dict[str, Any]:
    """What a worker must agree on with this server: it heartbeats by the server's lease."""
    s = services.settings
    return {
        "worker": worker.name,
        "version": __version__,
        "lease_s": s.lease_s,
        "task_timeout_s": s.task_timeout_s,
        "max_claim_wait_s": MAX_CLAIM_WAIT_S,
    }


@router.post("/claim", status_code=200, responses={204: {"description": "no task in time"}})
async def claim(
    body: ClaimRequest, request: Request, worker: WorkerDep, services: ServicesDep
) -> Response:
    """The oldest pending task under a new lease, waiting up to ``wait_s`` for one.

    The wait parks no thread: it awaits the waker, which every submit (and, on
    PostgreSQL, every ``NOTIFY`` from any replica) sets; only the claims themselves run
    in the thread pool.  A worker that hung up is not handed a task.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(body.wait_s, MAX_CLAIM_WAIT_S)
    owner = f"{worker.name}/{body.owner}"[:100]
    s = services.settings
    while True:
        seen = services.waker.generation
        if await request.is_disconnected() or _stopping(request):
            return Response(status_code=204)
        got = await run_in_threadpool(services.store.tasks.claim, owner, s.lease_s)
        if got is not None:
            return JSONResponse(_claim_answer(services, _lease(got.task, got.epoch)))
        left = deadline - loop.time()
        if left <= 0:
            return Response(status_code=204)
        # Woken by a submit at once; the periodic retry covers requeues by other processes
        # on SQLite, which has no NOTIFY.
        await services.waker.wait_async(seen, min(left, s.poll_interval_s))


def _stopping(request: Request) -> bool:
    """True once the server is shutting down (``omniflash serve`` sets ``app.state.stopping``)."""
    stopping = getattr(request.app.state, "stopping", None)
    return bool(stopping is not None and stopping())


def _claim_answer(services: Services, lease: Lease) -> dict[str, Any]:
    """The lease, with presigned URLs for its inputs and result when the storage has them."""
    expires = int(time.time() + services.settings.task_timeout_s + URL_LIFETIME_S)
    storage = services.storage
    inputs = {
        label: url
        for label, key in blob_inputs(lease.spec).items()
        if (url := storage.presigned_url(key, expires)) is not None
    }
    upload = storage.presigned_url(result_key(lease), expires, method="PUT")
    return {"lease": lease.to_dict(), "input_urls": inputs, "upload_url": upload}


@router.post("/tasks/{task_id}/heartbeat")
def heartbeat(
    task_id: str, body: HeartbeatRequest, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """Renew the lease; ``held: false`` once the task was cancelled or handed to another."""
    s = services.settings
    return _held(
        services.store.tasks.heartbeat(
            task_id, body.epoch, progress=min(body.progress, 99), lease_s=s.lease_s
        )
    )


@router.get("/tasks/{task_id}/inputs/{index}")
def input_file(
    task_id: str, index: int, epoch: int, worker: WorkerDep, services: ServicesDep
) -> StreamingResponse:
    """The task's ``index``-th stored input (in ``blob_inputs`` order), to its lease holder."""
    task = _task(services, task_id)
    if not _holds(task, epoch):
        raise Conflict(f"Task {task_id} is no longer held under lease epoch {epoch}")
    keys = list(blob_inputs(task.spec).values())
    if not 0 <= index < len(keys):
        raise NotFound(f"Task {task_id} has no stored input {index}")
    try:
        size = services.storage.size(keys[index])
    except FileNotFoundError as exc:
        raise NotFound(f"Input {index} of task {task_id} is missing from storage") from exc
    return StreamingResponse(
        services.storage.iter_bytes(keys[index]),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.put("/tasks/{task_id}/result")
async def upload_result(
    task_id: str, epoch: int, request: Request, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """Store the request body as this attempt's result file (``complete`` then ends the task).

    The body goes to a temporary file first, so a half-sent upload never reaches storage.
    """
    task = await run_in_threadpool(_task, services, task_id)
    key = result_key(_lease(task, epoch))
    if not _holds(task, epoch):
        # Drained, so that the worker reads this answer rather than a reset connection.
        async for _chunk in request.stream():
            pass
        # Already completed with this very file: an earlier upload's answer was lost.
        return _held(task.result_key == key)
    tmp_dir = services.settings.data_dir / "uploads"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{task_id}.{epoch}.", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            buffer = bytearray()
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) >= WRITE_CHUNK:
                    await run_in_threadpool(out.write, bytes(buffer))
                    buffer.clear()
            await run_in_threadpool(out.write, bytes(buffer))
        if path.stat().st_size == 0:
            raise InvalidRequest("The result file is empty")
        await run_in_threadpool(services.storage.put, key, path)
    finally:
        path.unlink(missing_ok=True)
    return _held(True)


@router.post("/tasks/{task_id}/complete")
def complete(
    task_id: str, body: CompleteRequest, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """End the task with the file uploaded for this epoch; the final price is the server's."""
    if not isinstance(body.result.get("duration"), int | float):
        raise InvalidRequest("result.duration (seconds of video) is required")
    task = _task(services, task_id)
    lease = _lease(task, body.epoch)
    if _holds(task, body.epoch) and not services.storage.exists(result_key(lease)):
        raise InvalidRequest(f"No result was uploaded for task {task_id} epoch {body.epoch}")
    return _held(_source(services).record_result(lease, body.result))


@router.post("/tasks/{task_id}/fail")
def fail(
    task_id: str, body: FailRequest, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """End this attempt: queued again if ``retry`` and attempts remain, else failed (refunded)."""
    task = _task(services, task_id)
    held = _source(services).fail(_lease(task, body.epoch), body.message, retry=body.retry)
    if held and body.retry:
        services.waker.notify()  # it may be pending again: wake the idle workers here
    return _held(held)


@router.post("/tasks/{task_id}/release")
def release(
    task_id: str, body: LeaseRequest, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """Hand the task back untried (the worker is stopping); no attempt is used."""
    task = _task(services, task_id)
    held = _source(services).release(_lease(task, body.epoch))
    if held:
        services.waker.notify()
    return _held(held)
