"""Workers: the claim loop, heartbeats, cancellation, timeouts, engine processes."""

from omniflash.worker.pool import Listener, Maintenance, WorkerPool, sweep_expired_files
from omniflash.worker.remote import HttpTaskSource, ServerConfig, WorkerRejected, run_remote_workers
from omniflash.worker.source import Lease, SourceUnavailable, StoreTaskSource, TaskSource
from omniflash.worker.supervisor import EngineProcess, Worker
from omniflash.worker.wake import Waker

__all__ = [
    "EngineProcess",
    "HttpTaskSource",
    "Lease",
    "Listener",
    "Maintenance",
    "ServerConfig",
    "SourceUnavailable",
    "StoreTaskSource",
    "TaskSource",
    "Waker",
    "Worker",
    "WorkerPool",
    "WorkerRejected",
    "run_remote_workers",
    "sweep_expired_files",
]
