"""Prometheus metrics: one registry per app, HTTP and task counters, state read at scrape.

``Metrics(store, …)`` holds the app's own ``CollectorRegistry`` (never the global one, so
tests can build several apps).  What happens in this process is counted here: HTTP
requests (``RequestMiddleware``), tasks submitted (when the task row is inserted, whatever
dialect submitted it), tasks finished (a ``TaskStore`` end hook, in the process that ends
them), webhook attempts.  Prometheus adds the replicas up.  What is shared state is read
from the database when scraped, so every replica reports the same, right value:
``omniflash_queue_depth`` and the remote workers.
"""

from __future__ import annotations

import collections
import hmac
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from omniflash.errors import AuthenticationFailed
from omniflash.logs import new_request_id, request_id_var, task_id_var
from omniflash.settings import Settings
from omniflash.store import Store, TaskRow, TaskStatus
from omniflash.text import bearer_token
from omniflash.webhooks import OUTCOMES

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["Metrics", "RequestMiddleware", "router"]

RUN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
MAINTENANCE_JOBS = ("reap", "sweep", "webhook", "end_hook")
"""``omniflash_maintenance_errors_total{job}``: a row skipped after an error, per job."""
REMOTE_SEEN_S = 120.0
"""A remote worker seen within this long counts as ``omniflash_workers{state="remote"}``."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Metrics:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        workers: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """``workers()`` answers (alive, expected) for this process's in-process pool."""
        self.store = store
        self.settings = settings
        # ``…_created`` series double the output and no dashboard here uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter(
            "omniflash_tasks_submitted", "Tasks queued.", ["mode", "resolution"], registry=r
        )
        self.finished = Counter(
            "omniflash_tasks_finished",
            "Tasks ended, by final status.",
            ["status", "mode", "resolution"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "omniflash_queue_wait_seconds",
            "From submit to a worker's first claim, for tasks that ran.",
            ["engine", "mode"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.task_run = Histogram(
            "omniflash_task_run_seconds",
            "From a worker's first claim to the task's end.",
            ["engine", "mode"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "omniflash_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self._http_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.http_duration = Histogram(
            "omniflash_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "omniflash_webhook_deliveries",
            "Webhook attempts, by outcome: delivered, retry, gave_up, refused.",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            self.webhook_deliveries.labels(outcome)
        self.maintenance_errors = Counter(
            "omniflash_maintenance_errors",
            "Rows the machinery skipped after an error, by job: reap, sweep, webhook, "
            "end_hook (the log names each row).",
            ["job"],
            registry=r,
        )
        for job in MAINTENANCE_JOBS:
            self.maintenance_errors.labels(job)
        r.register(_StateCollector(store, workers))
        self._counted_ends: collections.OrderedDict[str, None] = collections.OrderedDict()

    # -- hooks ----------------------------------------------------------------------------

    def install(self, store: Store) -> None:
        """Count tasks as they are submitted and as they end (inside the ending transaction)."""
        store.tasks.end_hooks.append(self._on_end)
        store.tasks.submit_hooks.append(self._on_submit)
        store.tasks.error_hooks.append(self._on_error)

    def _on_error(self, job: str, _item_id: str) -> None:
        self.maintenance_errors.labels(job).inc()

    def _on_submit(self, task: TaskRow) -> None:
        self.submitted.labels(task.spec.mode.value, task.spec.resolution).inc()

    def _on_end(self, _conn: sa.Connection, task: TaskRow, status: TaskStatus) -> None:
        # A task ends once, but its ending transaction runs again when another end hook
        # failed in it (``TaskEnds._ending``): counted once by its id.
        if task.id in self._counted_ends:
            return
        self._counted_ends[task.id] = None
        if len(self._counted_ends) > 4096:
            self._counted_ends.popitem(last=False)
        spec = task.spec
        self.finished.labels(status.value, spec.mode.value, spec.resolution).inc()
        if task.started_at is not None:
            engine = str(task.info.get("engine") or self.settings.engine)
            self.queue_wait.labels(engine, spec.mode.value).observe(
                max(0.0, task.started_at - task.created_at)
            )
            ended = task.completed_at if task.completed_at is not None else time.time()
            self.task_run.labels(engine, spec.mode.value).observe(max(0.0, ended - task.started_at))

    def webhook_outcome(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome).inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # The labelled series of each (method, route, status), looked up once: a label
        # lookup costs more than the count.
        series = self._http_series.get((method, route, status))
        if series is None:
            if len(self._http_series) >= 10_000:  # methods are the client's to choose
                self._http_series.clear()
            series = self._http_series[(method, route, status)] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
        series[0].inc()
        series[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Read at scrape time: the queue (database), workers, GPU memory."""

    def __init__(self, store: Store, workers: Callable[[], tuple[int, int]] | None) -> None:
        self.store = store
        self.workers = workers

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape only: registering must not query the database

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "omniflash_queue_depth", "Pending tasks, from the database (every replica agrees)."
        )
        depth.add_metric([], self.store.tasks.pending_count())
        yield depth
        workers = GaugeMetricFamily(
            "omniflash_workers",
            "Workers: this process's running and stopped, and remote ones seen lately.",
            labels=["state"],
        )
        alive, expected = self.workers() if self.workers is not None else (0, 0)
        workers.add_metric(["running"], alive)
        workers.add_metric(["stopped"], expected - alive)
        remote = self.store.workers.seen_since(time.time() - REMOTE_SEEN_S)
        workers.add_metric(["remote"], remote)
        yield workers
        yield from _gpu_memory()


def _gpu_memory() -> Iterable[Metric]:
    """Per-GPU memory from ``nvidia-smi``, where there is one (the engines run in children)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    used = GaugeMetricFamily(
        "omniflash_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"]
    )
    total = GaugeMetricFamily("omniflash_gpu_memory_total_bytes", "GPU memory.", labels=["gpu"])
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            used.add_metric([parts[0]], int(parts[1]) * 1024 * 1024)
            total.add_metric([parts[0]], int(parts[2]) * 1024 * 1024)
    yield used
    yield total


class RequestMiddleware:
    """Gives each request an id (``X-Request-Id``), logs with it, and counts the request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        request_id = new_request_id(incoming)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
                params = scope.get("path_params") or {}
                task_id = params.get("task_id") or params.get("video_id")
                if task_id:
                    task_id_var.set(str(task_id))
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope["method"], path, status, time.perf_counter() - started
            )
            request_id_var.reset(token)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format; a Bearer token when ``OMNIFLASH_METRICS_TOKEN`` is set."""
    m: Metrics = request.app.state.metrics
    token = m.settings.metrics_token
    if token:
        given = bearer_token(request.headers.get("authorization"))
        # Compared as bytes: ``compare_digest`` raises on ``str`` outside ASCII.
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise AuthenticationFailed("/metrics wants `Authorization: Bearer <metrics token>`")
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
