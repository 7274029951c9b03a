"""The FastAPI application: routes, the error handlers, and the worker pool's lifetime.

Every error that leaves a route is rendered by the seed's envelope
(``api.omni.errors.seed_error``); the OpenAI routes render their own errors first
(``api.openai.shapes.OpenAIRoute``), and the MCP endpoint its tool errors.

``create_app(settings)`` builds everything from ``Settings``; tests call it directly
(with ``start_workers=False`` when they drive the store themselves).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from omniflash import __version__, webhooks
from omniflash.api.bodies import MCP_PATH, BodyLimit
from omniflash.api.deps import Services
from omniflash.api.docs import models as discovery
from omniflash.api.docs.swagger import install_docs
from omniflash.api.events import routes as event_routes
from omniflash.api.events.hub import EventHub
from omniflash.api.files import downloads as files
from omniflash.api.files import uploads
from omniflash.api.limits import KeyCache, ReadLimiter
from omniflash.api.mcp.endpoint import McpEndpoint
from omniflash.api.omni import webhook_secret
from omniflash.api.omni.errors import seed_error, task_language
from omniflash.api.omni.routes import add_hot_routes, router
from omniflash.api.openai import videos as openai_videos
from omniflash.api.openai.shapes import is_openai_path, openai_error
from omniflash.api.responses import JSONResponse
from omniflash.api.workers import previews as worker_previews
from omniflash.api.workers import routes as worker_routes
from omniflash.blobs import Storage, StorageUnavailable, UrlSigner, create_storage
from omniflash.blobs.health import StorageHealth
from omniflash.engines.estimates import estimator_for
from omniflash.errors import (
    InvalidRequest,
    NotFound,
    OmniflashError,
    ServiceUnavailable,
    for_status,
)
from omniflash.metrics import Metrics, RequestMiddleware
from omniflash.metrics import router as metrics_router
from omniflash.settings import Settings
from omniflash.store import OUTAGES, Store
from omniflash.store.reads import hot_reads
from omniflash.worker import Listener, Maintenance, StoreTaskSource, WorkerPool
from omniflash.worker.wake import Waker

__all__ = ["create_app"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def dialect_error(path: str, exc: OmniflashError, headers: dict[str, str]) -> Response:
    """``exc`` in the shape of the dialect that serves ``path``: for an error raised before
    any route could render it (``BodyLimit``'s refusals)."""
    if is_openai_path(path):
        return openai_error(exc, headers=headers)
    return seed_error(exc, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "Invalid request parameters: " + "; ".join(parts)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    storage: Storage | None = None,
    start_workers: bool = True,
) -> FastAPI:
    store = store or Store(settings.database_url)
    owns_storage = storage is None
    storage = storage or create_storage(settings)
    waker = Waker()
    pool = None
    if start_workers and settings.workers > 0:
        pool = WorkerPool(settings, StoreTaskSource(settings, store, storage, waker))
    metrics = Metrics(
        store,
        settings,
        workers=lambda: (pool.alive(), len(pool.workers)) if pool is not None else (0, 0),
    )
    metrics.install(store)
    # Every replica reaps and sweeps (safe in parallel), and listens for tasks queued
    # elsewhere: its own workers and the remote workers long-polling it wait on ``waker``.
    # Every replica sends webhooks too: the outbox's leases share the work out.
    background: list[Maintenance | Listener | webhooks.WebhookSender] = []
    if start_workers:
        background.append(Maintenance(settings, store, storage, waker))
        background.append(
            webhooks.WebhookSender(settings, store, on_outcome=metrics.webhook_outcome)
        )
    listener = None if store.db.is_sqlite else Listener(store, waker)
    if listener is not None:
        background.append(listener)
    reads = hot_reads(store.db)
    services = Services(
        settings=settings,
        store=store,
        storage=storage,
        signer=UrlSigner(
            settings.secret_override.encode()
            if settings.secret_override
            else store.meta.url_secret()
        ),
        pool=pool,
        estimator=estimator_for(settings),
        waker=waker,
        key_cache=KeyCache(reads.key),
        reads=reads,
        read_limiter=ReadLimiter(settings.read_rpm),
    )
    webhooks.install(store, settings, services.signer)
    mcp = McpEndpoint(services)
    # The event streams' one source of news in this process (on PostgreSQL, a channel of
    # the process's one LISTEN connection, the workers' listener's).
    event_hub = EventHub(store, listener)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for thread in background:
            thread.start()
        event_hub.start()
        if pool is not None:
            pool.start()
        # What the process holds before it serves (modules, the app, its routes: most of
        # its objects) is moved out of the collector's sight: a full collection then walks
        # only what requests made, instead of pausing every poll in flight for tens of ms.
        # (Given back at shutdown, so that a process that builds many apps, as the tests
        # do, can still collect the cycles an app leaves.)
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            event_hub.close()
            await mcp.close()
            await reads.close()
            if pool is not None:
                pool.close()
            for thread in background:
                thread.close()
            if owns_storage:
                storage.close()

    app = FastAPI(
        title="omniflash",
        version=__version__,
        summary="Self-hostable video generation speaking the Omni-Flash-Ext API",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        default_response_class=JSONResponse,
    )
    app.state.services = services
    app.state.event_hub = event_hub
    app.state.metrics = metrics
    # Inside the request middleware, so that a refused body's answer has its request id.
    app.add_middleware(BodyLimit, settings=settings, render=dialect_error)
    app.add_middleware(RequestMiddleware, metrics=metrics)
    add_hot_routes(app.router)
    app.include_router(router)
    app.include_router(event_routes.router)
    app.include_router(files.router)
    app.include_router(worker_routes.router)
    app.include_router(worker_previews.router)
    app.include_router(openai_videos.router)
    app.include_router(webhook_secret.router)
    app.include_router(metrics_router)
    app.include_router(discovery.router)
    app.include_router(uploads.router)
    app.router.routes.append(Route(MCP_PATH, mcp, methods=["GET", "POST", "DELETE"]))
    install_docs(app)

    @app.exception_handler(OmniflashError)
    async def _omniflash_error(request: Request, exc: OmniflashError) -> JSONResponse:
        return seed_error(exc, language=task_language(request))

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(_request: Request, exc: StorageUnavailable) -> JSONResponse:
        log.error("blob storage unavailable: %s", exc)
        return seed_error(ServiceUnavailable())

    async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
        # Still failing after the store's own retry on a fresh connection: an outage.
        log.error("database unavailable: %s", str(exc).splitlines()[0])
        return seed_error(ServiceUnavailable("The database cannot be reached just now; try again"))

    for outage in OUTAGES:
        app.add_exception_handler(outage, _database_down)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return seed_error(InvalidRequest(_validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return seed_error(NotFound("No such endpoint"))
        return seed_error(for_status(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return seed_error(OmniflashError())

    storage_health = StorageHealth(storage)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """200 when the database and blob storage answer and every in-process worker is
        alive; else 503, naming each problem."""
        workers = services.pool
        expected = len(workers.workers) if workers is not None else 0
        alive = workers.alive() if workers is not None else 0
        body: dict[str, object] = {"engine": settings.engine, "workers": alive}
        problems = []
        try:
            body["pending"] = store.tasks.pending_count()
        except Exception as exc:  # any database failure makes this replica unhealthy
            problems.append(f"database: {type(exc).__name__}")
        storage_problem = storage_health.problem()
        if storage_problem is not None:
            problems.append(f"storage: {storage_problem}")
        if alive < expected:
            problems.append(f"{expected - alive} of {expected} workers stopped")
        body["status"] = "degraded" if problems else "ok"
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/", include_in_schema=False)
    def playground() -> Response:
        page = STATIC / "index.html"
        if not page.exists():
            return Response("omniflash is running. API docs: /docs\n", media_type="text/plain")
        return FileResponse(page, media_type="text/html")

    return app
