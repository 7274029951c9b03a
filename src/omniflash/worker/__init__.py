"""Workers: the claim loop, heartbeats, cancellation, timeouts, engine processes."""

from omniflash.worker.pool import WorkerPool, sweep_expired_results
from omniflash.worker.supervisor import EngineProcess, Worker

__all__ = ["EngineProcess", "Worker", "WorkerPool", "sweep_expired_results"]
