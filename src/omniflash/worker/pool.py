"""A server process's in-process workers: ``WorkerPool`` runs N workers over one
``TaskSource``, each with its own engine process, in this process's own scratch directory
(``ScratchDir``).

Beside them a server runs the reaper and the file sweeps (``worker.maintenance``) and, on
PostgreSQL, the listener that wakes them (``worker.listener``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import IO

from omniflash.settings import Settings
from omniflash.worker.source import TaskSource
from omniflash.worker.supervisor import Worker

__all__ = ["ScratchDir", "WorkerPool"]

log = logging.getLogger(__name__)


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
