"""``omniflash worker``: a pool of workers on a GPU machine, fed by an API server.

The machine needs the server's URL and a worker token, no database and no storage
credentials: its tasks come over HTTP (``omniflash.worker.http_source``), and the same
``WorkerPool`` that runs beside the API runs them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from omniflash import __version__
from omniflash.settings import Settings
from omniflash.worker.http_source import (
    HttpTaskSource,
    ProtocolError,
    ServerConfig,
    WorkerRejected,
)
from omniflash.worker.pool import WorkerPool
from omniflash.worker.source import SourceUnavailable

# The two errors are what ``run_remote_workers`` raises, so callers catch them from here.
__all__ = ["run_remote_workers"]

log = logging.getLogger(__name__)


def run_remote_workers(
    settings: Settings, stop: threading.Event, *, echo: Callable[[str], None] = print
) -> None:
    """``omniflash worker``: a ``WorkerPool`` over ``HttpTaskSource`` until ``stop`` is set.

    Waits (with backoff) for the server to answer, heartbeats by the server's lease, and
    on ``stop`` hands every running task back untried.  Raises ``WorkerRejected`` when
    the server refuses the token, at start or later, and ``ProtocolError`` when what
    answers at start is not an omniflash server.
    """
    assert settings.server_url and settings.worker_token
    source = HttpTaskSource(settings.server_url, settings.worker_token)
    try:
        config = _connect(source, stop)
        if config is None:
            return
        settings = dataclasses.replace(
            settings, lease_s=config.lease_s, task_timeout_s=config.task_timeout_s
        )
        pool = WorkerPool(
            settings, source, claim_wait_s=min(settings.claim_wait_s, config.max_claim_wait_s)
        )

        def rejected(message: str) -> None:
            log.error("%s; stopping", message)
            stop.set()
            pool.stop_event.set()

        source.on_rejected = rejected
        echo(
            f"omniflash {__version__} worker {config.worker!r}: server {source.server_url} "
            f"(omniflash {config.version}), engine {settings.engine}, "
            f"{len(pool.workers)} worker(s), scratch in {settings.scratch_dir.resolve()}"
        )
        pool.start()
        try:
            stop.wait()
        finally:
            _stop(pool, source)
            log.info("stopped: %r", pool)
    finally:
        source.shutdown()
    if source.rejected:
        raise WorkerRejected(source.rejected)
    if source.broken:
        raise ProtocolError(source.broken)


def _connect(source: HttpTaskSource, stop: threading.Event) -> ServerConfig | None:
    """The server's config, retried while it cannot be reached; ``None`` if stopped first."""
    delay = 0.5
    while not stop.is_set():
        try:
            return source.config()
        except SourceUnavailable as exc:
            log.warning("server unreachable (%s); retrying in %.1f s", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
    return None


def _stop(pool: WorkerPool, source: HttpTaskSource, grace_s: float = 60.0) -> None:
    """Hand the running tasks back, then stop without waiting out idle long polls.

    A lease that a claim brings back after this point is released by the source itself,
    and the server hands no task to a worker that hung up.
    """
    source.close()
    pool.stop_event.set()
    deadline = time.monotonic() + grace_s
    while source.held() and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.close(timeout=0.5)
