"""Workers: the claim loop, heartbeats, cancellation, timeouts, engine processes.

The remote side lives in ``omniflash.worker.http_source`` (``HttpTaskSource``, the
worker protocol's client) and ``omniflash.worker.remote`` (``run_remote_workers``, its
loop); neither is imported here, so that an API process does not load an HTTP client it
never uses.
"""

from omniflash.worker.listener import Listener
from omniflash.worker.maintenance import Maintenance
from omniflash.worker.pool import WorkerPool
from omniflash.worker.source import Lease, SourceUnavailable, StoreTaskSource, TaskSource
from omniflash.worker.supervisor import EngineProcess, Worker
from omniflash.worker.sweep import sweep_expired_files, sweep_orphans
from omniflash.worker.wake import Waker

__all__ = [
    "EngineProcess",
    "Lease",
    "Listener",
    "Maintenance",
    "SourceUnavailable",
    "StoreTaskSource",
    "TaskSource",
    "Waker",
    "Worker",
    "WorkerPool",
    "sweep_expired_files",
    "sweep_orphans",
]
