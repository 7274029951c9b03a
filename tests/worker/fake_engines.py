"""Engines for the worker tests, named by ``module:factory`` so a spawned process finds them."""

from __future__ import annotations

import time

from omniflash.contract import GenerationSpec
from omniflash.engines import GenerationResult, Job
from omniflash.engines.base import CancelCheck, ProgressCallback
from omniflash.errors import EngineBroken, TaskCancelled
from omniflash.settings import Settings


class LostDevice:
    """Loads, then loses its device on the first task, as a GPU after an illegal access."""

    name = "lost-device"
    cancel_grace_s = 42.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        return 1.0

    def generate(
        self, job: Job, progress: ProgressCallback, cancelled: CancelCheck
    ) -> GenerationResult:
        raise EngineBroken("CUDA error: an illegal memory access was encountered")


class Slow(LostDevice):
    """Runs until cancelled: a task that is still going whenever a test looks."""

    name = "slow"
    cancel_grace_s = 5.0

    def generate(
        self, job: Job, progress: ProgressCallback, cancelled: CancelCheck
    ) -> GenerationResult:
        while not cancelled():
            time.sleep(0.05)
        raise TaskCancelled("cancelled")
