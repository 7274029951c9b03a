"""The reaper and the file sweeps, every couple of seconds, in every API replica.

``Maintenance`` requeues tasks whose lease expired, deletes expired and orphaned files
(``omniflash.worker.sweep``) and task events past their age (``EventStore.sweep``).
Two replicas reaping or sweeping at once is safe (see ``LeaseQueue.reap``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from omniflash.blobs import Storage
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.worker.sweep import orphan_age_s, sweep_expired_files, sweep_orphans
from omniflash.worker.wake import Waker

__all__ = ["Maintenance"]

log = logging.getLogger(__name__)
REAP_INTERVAL_S = 2.0
ORPHAN_SWEEP_EVERY = 12
"""The orphan sweep lists the whole bucket: once every this many sweeps (an hour by default)."""


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
        old_events = self.store.events.sweep()
        if old_events:
            log.info("deleted %d task events past their age", old_events)
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
