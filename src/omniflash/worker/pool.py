"""The in-process worker pool a server runs: N workers plus the reaper and the file sweep."""

from __future__ import annotations

import logging
import shutil
import threading
import time

from omniflash.settings import Settings
from omniflash.storage import Storage
from omniflash.store import Store
from omniflash.store.tasks import NOTIFY_CHANNEL
from omniflash.worker.supervisor import Worker

__all__ = ["WorkerPool", "sweep_expired_results"]

log = logging.getLogger(__name__)
REAP_INTERVAL_S = 2.0


def sweep_expired_results(store: Store, storage: Storage) -> int:
    """Delete result files whose signed URLs have expired; returns how many."""
    count = 0
    for task in store.tasks.expired_results():
        if task.result_key:
            storage.delete(task.result_key)
        store.tasks.mark_result_deleted(task.id)
        count += 1
    return count


class WorkerPool:
    def __init__(self, settings: Settings, store: Store, storage: Storage) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.stop_event = threading.Event()
        self.wakeup = threading.Condition()
        self.workers = [
            Worker(settings, store, storage, self.wakeup, self.stop_event, index=i)
            for i in range(settings.workers)
        ]
        self._maintenance = threading.Thread(target=self._maintain, name="reaper", daemon=True)
        self._listener: threading.Thread | None = None
        if not store.db.is_sqlite:
            self._listener = threading.Thread(
                target=store.db.listen,
                args=(NOTIFY_CHANNEL, self.notify, self.stop_event),
                name="listener",
                daemon=True,
            )

    def __repr__(self) -> str:
        return f"<WorkerPool {self.workers!r}>"

    def start(self) -> None:
        # Scratch files belong to attempts that died with a previous process.
        shutil.rmtree(self.settings.scratch_dir, ignore_errors=True)
        self.settings.scratch_dir.mkdir(parents=True, exist_ok=True)
        for worker in self.workers:
            worker.start()
        self._maintenance.start()
        if self._listener is not None:
            self._listener.start()

    def notify(self) -> None:
        """Wake an idle worker: a task was just queued."""
        with self.wakeup:
            self.wakeup.notify()

    def _maintain(self) -> None:
        last_sweep = 0.0
        while not self.stop_event.wait(REAP_INTERVAL_S):
            try:
                if self.store.tasks.reap(self.settings.max_attempts):
                    self.notify()
                if time.monotonic() - last_sweep >= self.settings.sweep_interval_s:
                    last_sweep = time.monotonic()
                    swept = sweep_expired_results(self.store, self.storage)
                    if swept:
                        log.info("deleted %d expired result files", swept)
            except Exception:
                log.exception("maintenance pass failed")

    def close(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        with self.wakeup:
            self.wakeup.notify_all()
        for worker in self.workers:
            worker.join(timeout)
        self._maintenance.join(timeout)
        if self._listener is not None:
            self._listener.join(timeout)
