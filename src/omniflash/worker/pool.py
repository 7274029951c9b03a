"""What a server process runs beside its API: workers, the reaper and file sweep, the listener.

- ``WorkerPool``: N workers over one ``TaskSource``, each with its own engine process,
  and this process's own scratch directory.
- ``Maintenance``: requeues tasks whose lease expired and deletes expired and orphaned
  files (``omniflash.worker.sweep``).  Every API replica runs it; two replicas reaping
  or sweeping at once is safe (see ``TaskStore.reap``).
- ``Listener``: on PostgreSQL, turns ``NOTIFY`` from any process into ``Waker.notify``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from omniflash.blobs import Storage
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.store.task_rows import NOTIFY_CHANNEL
from omniflash.worker.source import TaskSource
from omniflash.worker.supervisor import Worker
from omniflash.worker.sweep import orphan_age_s, sweep_expired_files, sweep_orphans
from omniflash.worker.wake import Waker

__all__ = ["Listener", "Maintenance", "ScratchDir", "WorkerPool"]

log = logging.getLogger(__name__)
REAP_INTERVAL_S = 2.0
ORPHAN_SWEEP_EVERY = 12
"""The orphan sweep lists the whole bucket: once every this many sweeps (an hour by default)."""


class ScratchDir:
    """This process's own scratch directory under the shared scratch root.

    Each process holds a lock on its directory for as long as it lives, so a starting
    process removes only the directories of processes that are gone, never the files
    of running tasks elsewhere.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock: IO[bytes] | None = None

    def open(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for other in self.root.iterdir():
            if other.is_dir() and self._abandoned(other):
                shutil.rmtree(other, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / ".lock", "wb")  # noqa: SIM115 - held for our lifetime
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self.path

    @staticmethod
    def _abandoned(directory: Path) -> bool:
        try:
            with open(directory / ".lock", "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except FileNotFoundError:
            # Not yet locked by a process that is just creating it, or a stray directory:
            # leave anything younger than a minute alone.
            return time.time() - directory.stat().st_mtime > 60
        except OSError:
            return False  # locked: its process is alive
        return True

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        source: TaskSource,
        count: int | None = None,
        *,
        claim_wait_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.stop_event = threading.Event()
        self.scratch = ScratchDir(settings.scratch_dir)
        self.workers = [
            Worker(
                settings,
                source,
                self.scratch.path,
                self.stop_event,
                index=i,
                claim_wait_s=claim_wait_s,
            )
            for i in range(settings.workers if count is None else count)
        ]

    def __repr__(self) -> str:
        return f"<WorkerPool {self.workers!r}>"

    def start(self) -> None:
        self.scratch.open()
        for worker in self.workers:
            worker.start()

    def alive(self) -> int:
        return sum(w.is_alive() for w in self.workers)

    def close(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        for worker in self.workers:
            worker.join(timeout)
        self.scratch.close()


class Maintenance(threading.Thread):
    """The reaper and the file sweeps, every couple of seconds.

    Each job runs on its own: a reap that fails does not skip the sweep, and within a
    job one poisoned task is logged, counted and skipped (see ``TaskStore.reap`` and
    ``omniflash.worker.sweep``).
    """

    def __init__(self, settings: Settings, store: Store, storage: Storage, waker: Waker) -> None:
        super().__init__(name="maintenance", daemon=True)
        self.settings = settings
        self.store = store
        self.storage = storage
        self.waker = waker
        self.stop_event = threading.Event()
        self.sweeps = 0
        self._orphans_at: float | None = None

    def run(self) -> None:
        last_sweep = 0.0
        while not self.stop_event.wait(REAP_INTERVAL_S):
            self._job("reap", self.reap)
            if time.monotonic() - last_sweep >= self.settings.sweep_interval_s:
                last_sweep = time.monotonic()
                self._job("sweep", self.sweep)

    def _job(self, job: str, run: Callable[[], object]) -> None:
        try:
            run()
        except Exception:
            log.exception("%s pass failed; trying again shortly", job)
            self.store.tasks.report_error(job, "-")

    def reap(self) -> None:
        if self.store.tasks.reap(self.settings.max_attempts):
            self.waker.notify()

    def sweep(self) -> None:
        s = self.settings
        swept = sweep_expired_files(self.store, self.storage, s.result_ttl_s)
        if swept:
            log.info("deleted the expired files of %d tasks", swept)
        if self.sweeps % ORPHAN_SWEEP_EVERY == 0:
            # The first pass after a start judges every file; later ones what came of age
            # since the previous pass, with an hour's overlap.
            now, age = time.time(), orphan_age_s(s)
            since = None if self._orphans_at is None else self._orphans_at - age - 3600
            sweep_orphans(
                self.store,
                self.storage,
                older_than_s=age,
                upload_ttl_s=s.upload_ttl_s,
                temp_dir=s.data_dir / "uploads",
                now=now,
                since=since,
            )
            self._orphans_at = now
        self.sweeps += 1

    def close(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        with contextlib.suppress(RuntimeError):
            self.join(timeout)


class Listener(threading.Thread):
    """PostgreSQL: wake this process's waiters on every task queued anywhere."""

    def __init__(self, store: Store, waker: Waker) -> None:
        super().__init__(name="listener", daemon=True)
        self.store = store
        self.waker = waker
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.store.db.listen(NOTIFY_CHANNEL, self.waker.notify, self.stop_event)

    def close(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        with contextlib.suppress(RuntimeError):
            self.join(timeout)
