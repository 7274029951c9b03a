"""``/worker/v1/``: the endpoints remote ``omniflash worker`` processes pull their tasks from.

A worker authenticates with its own token (``omniflash workers create``), never an API
key.  A lease belongs to the token that claimed it: every call on a task checks the
calling token against the task's lease holder and answers another token exactly as if
the task did not exist (404).  Every call after the claim names the lease ``epoch`` it
holds; a stale epoch changes nothing and answers ``{"held": false}``.  The worker's
numbers never decide money: ``complete`` checks the uploaded file and the store prices
what the file holds.  The task logic is the in-process workers' own: these routes call
the store, and ``worker.results`` for a result.

==========================================  =======================================
``GET  /worker/v1/config``                  the protocol version, lease and timeouts
``POST /worker/v1/claim``                   long poll: 200 a lease, 204 none in time
``POST /worker/v1/tasks/{id}/heartbeat``    renew and record progress: ``held``
``GET  /worker/v1/tasks/{id}/inputs/{n}``   the task's n-th stored input, streamed
``PUT  /worker/v1/tasks/{id}/result``       the result file, streamed: ``held``
``POST /worker/v1/tasks/{id}/complete``     check the uploaded file, end the task
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
from starlette.concurrency import run_in_threadpool

from omniflash import __version__
from omniflash.api.deps import Services, ServicesDep, services_of
from omniflash.api.responses import JSONResponse
from omniflash.api.workers.bodies import (
    ClaimRequest,
    CompleteRequest,
    EpochQuery,
    FailRequest,
    HeartbeatRequest,
    LeaseRequest,
    reported,
)
from omniflash.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
)
from omniflash.ids import hash_key
from omniflash.input_blobs import blob_inputs
from omniflash.media.mp4check import ResultRejected
from omniflash.store import TaskRow, TaskStatus, WorkerInfo
from omniflash.text import bearer_token, is_task_id, shown
from omniflash.worker.results import ResultIntake, result_key
from omniflash.worker.source import PROTOCOL_VERSION, Lease

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


class ClaimTokens:
    """Tokens that opened a claim in the last ``TTL_S`` seconds, so that a fleet's long
    polls do not read the token table each time they come back.

    Safe for the claim alone: the claim's own transaction holds the token's row and
    refuses a revoked one, and a claimed lease is answered only after a fresh check
    (``is_active``).  A revoked token's poll may wait out one cached ``TTL_S`` and get
    204, never a task; every other worker route reads the token fresh.
    """

    TTL_S = 5.0
    MAX = 100_000

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, WorkerInfo]] = {}

    def authenticate(self, request: Request) -> WorkerInfo:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return authenticate_worker(request)
        digest = hash_key(token)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and now - known[0] < self.TTL_S:
            return known[1]
        worker = authenticate_worker(request)
        if len(self._known) >= self.MAX:
            self._known.clear()
        self._known[digest] = (now, worker)
        return worker


def authenticate_claim(request: Request) -> WorkerInfo:
    state = request.app.state
    tokens = getattr(state, "claim_tokens", None)
    if tokens is None:
        tokens = state.claim_tokens = ClaimTokens()
    return tokens.authenticate(request)


ClaimWorkerDep = Annotated[WorkerInfo, Depends(authenticate_claim)]


def _results(services: Services) -> ResultIntake:
    return ResultIntake(services.settings, services.store, services.storage, services.waker)


def _task(services: Services, task_id: str, worker: WorkerInfo) -> TaskRow:
    """The task, when ``worker`` holds (or last held) its lease; otherwise not found."""
    missing = NotFound(f"No task {shown(task_id)}")
    if not is_task_id(task_id):
        raise missing
    try:
        task = services.store.tasks.get(task_id)
    except NotFound as exc:
        raise missing from exc
    if task.lease_worker != worker.id:
        raise missing
    return task


def _lease(task: TaskRow, epoch: int) -> Lease:
    return Lease(task.id, task.spec, task.seed, task.attempts, epoch)


def _holds(task: TaskRow, epoch: int) -> bool:
    return task.status is TaskStatus.PROCESSING and task.lease_epoch == epoch


def _held(held: bool) -> dict[str, bool]:
    return {"held": held}


@router.get("/config")
def config(worker: WorkerDep, services: ServicesDep) -> dict[str, Any]:
    """What a worker must agree on with this server: the protocol, and the server's lease."""
    s = services.settings
    return {
        "worker": worker.name,
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "lease_s": s.lease_s,
        "task_timeout_s": s.task_timeout_s,
        "max_claim_wait_s": MAX_CLAIM_WAIT_S,
    }


@router.post("/claim", status_code=200, responses={204: {"description": "no task in time"}})
async def claim(
    body: ClaimRequest, request: Request, worker: ClaimWorkerDep, services: ServicesDep
) -> Response:
    """The oldest pending task under a new lease, waiting up to ``wait_s`` for one.

    The wait parks no thread and costs the database nothing: the long poll waits in line
    in this process's ``Dispatcher``, and a task queued anywhere (a submit, a requeue, a
    revoke's hand-back: each a ``NOTIFY`` on PostgreSQL) wakes one waiter, which claims.
    A poll that arrives while the queue is known to be empty waits without claiming.
    Once an interval one waiter of the process counts the pending tasks, for news that
    never came as a signal.  The token is read at most once in ``ClaimTokens.TTL_S``
    per token.  Only the claims themselves run in the thread pool.  A worker
    that hung up is not handed a task: a lease claimed for it is released.  A token
    revoked during the wait gets 401 and no task.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(body.wait_s, MAX_CLAIM_WAIT_S)
    owner = f"{worker.name}/{body.owner}"[:100]
    dispatch = services.waker.dispatcher()
    interval = services.settings.poll_interval_s
    # A poll claims when it comes (unless the queue is known empty) and when woken; a
    # poll that only looks up at the end of an interval does not.
    claim_now = dispatch.take_kept() or dispatch.maybe_pending()
    while True:
        if await request.is_disconnected() or _stopping(request):
            if claim_now:  # a wake meant for a claim: the next waiter makes it
                dispatch.hand_on()
            return Response(status_code=204)
        if claim_now:
            news = dispatch.news
            try:
                got = await _claim_once(services, owner, worker)
            except BaseException:
                dispatch.hand_on()
                raise
            if got is not None:
                if await request.is_disconnected():
                    await run_in_threadpool(_give_back, services, got, worker)
                    return Response(status_code=204)
                if not await run_in_threadpool(services.store.workers.is_active, worker.id):
                    # Revoked after the claim committed: the revoke handed the task back.
                    raise AuthenticationFailed(
                        "Authentication failed: this worker token is revoked"
                    )
                return JSONResponse(_claim_answer(services, got))
            dispatch.found_empty(news)
        left = deadline - loop.time()
        if left <= 0:
            return Response(status_code=204)
        # Each ``interval`` the poll looks up (a disconnect, a shutdown) without a claim.
        claim_now = await dispatch.wait(min(left, interval))
        if not claim_now and dispatch.probe_due(interval):
            pending = await run_in_threadpool(
                services.store.workers.pending_tasks, dispatch.waiting + 1
            )
            dispatch.probed(pending)
            claim_now = pending > 0
        claim_now = claim_now or dispatch.take_kept()


async def _claim_once(services: Services, owner: str, worker: WorkerInfo) -> Lease | None:
    """One claim for ``worker``; one that commits after this request was cancelled is
    handed back rather than left leased to nobody."""
    pending = asyncio.ensure_future(
        run_in_threadpool(
            services.store.tasks.claim, owner, services.settings.lease_s, worker_id=worker.id
        )
    )
    try:
        got = await asyncio.shield(pending)
    except asyncio.CancelledError:
        try:
            lost = await pending
        except Exception:  # the claim itself failed: nothing to hand back
            lost = None
        if lost is not None:
            await run_in_threadpool(_give_back, services, _lease(lost.task, lost.epoch), worker)
        raise
    return None if got is None else _lease(got.task, got.epoch)


def _give_back(services: Services, lease: Lease, worker: WorkerInfo) -> None:
    if services.store.tasks.release(lease.task_id, lease.epoch, worker_id=worker.id):
        services.waker.notify()


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
    """Renew the lease; ``held: false`` once the task was cancelled or handed to another,
    or once it has run past the task time limit (and a lease more) since it was claimed.

    One statement when held: the renewal itself names the token, so only a refused one
    reads the task, to answer another token's task (or none) with 404."""
    if not is_task_id(task_id):
        raise NotFound(f"No task {shown(task_id)}")
    s = services.settings
    held = services.store.tasks.heartbeat(
        task_id,
        body.epoch,
        progress=min(body.progress, 99),
        lease_s=s.lease_s,
        worker_id=worker.id,
        max_run_s=s.task_timeout_s + s.lease_s,
    )
    if not held:
        _task(services, task_id, worker)
    return _held(held)


@router.get("/tasks/{task_id}/inputs/{index}")
def input_file(
    task_id: str, index: int, epoch: EpochQuery, worker: WorkerDep, services: ServicesDep
) -> StreamingResponse:
    """The task's ``index``-th stored input (in ``blob_inputs`` order), to its lease holder."""
    task = _task(services, task_id, worker)
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
    task_id: str, epoch: EpochQuery, request: Request, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """Store the request body as this attempt's result file (``complete`` then ends the task).

    The body goes to a temporary file first, so a half-sent upload never reaches storage;
    ``BodyLimit`` stops it with 413 past ``OMNIFLASH_MAX_RESULT_BYTES``.
    """
    task = await run_in_threadpool(_task, services, task_id, worker)
    key = result_key(_lease(task, epoch))
    if not _holds(task, epoch):
        # Drained (``BodyLimit`` bounds it), so that the worker reads this answer rather
        # than a reset connection.
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
    """Check the file uploaded for this epoch and end the task; the price is the server's.

    A file that is not the asked video answers 400: the attempt has then failed (it is
    retried while attempts remain) and the file is deleted.  Reported numbers outside
    what the task asked for answer 400 and change nothing.
    """
    task = _task(services, task_id, worker)
    report = reported(body.result, task.spec)
    lease = _lease(task, body.epoch)
    if _holds(task, body.epoch) and not services.storage.exists(result_key(lease)):
        raise InvalidRequest(f"No result was uploaded for task {task_id} epoch {body.epoch}")
    try:
        return _held(_results(services).record(lease, report, worker_id=worker.id))
    except ResultRejected as exc:
        raise InvalidRequest(
            f"The result of task {task_id} was refused, and this attempt has failed: {exc}"
        ) from exc


@router.post("/tasks/{task_id}/fail")
def fail(
    task_id: str, body: FailRequest, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """End this attempt: queued again if ``retry`` and attempts remain, else failed (refunded)."""
    _task(services, task_id, worker)
    held = services.store.tasks.fail(
        task_id,
        body.epoch,
        body.message,
        retry=body.retry,
        max_attempts=services.settings.max_attempts,
        worker_id=worker.id,
    )
    if held and body.retry:
        services.waker.notify()  # it may be pending again: wake the idle workers here
    return _held(held)


@router.post("/tasks/{task_id}/release")
def release(
    task_id: str, body: LeaseRequest, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """Hand the task back untried (the worker is stopping); no attempt is used."""
    _task(services, task_id, worker)
    held = services.store.tasks.release(task_id, body.epoch, worker_id=worker.id)
    if held:
        services.waker.notify()
    return _held(held)
