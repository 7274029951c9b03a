"""An engine that does nothing, so that bench/fleet.py measures the queue, not generation.

Named ``bench.noop_engine:Noop`` (run from the repository root, or with it on PYTHONPATH).
"""

from __future__ import annotations

from omniflash.contract import GenerationSpec
from omniflash.engines import GenerationResult, Job
from omniflash.engines.base import CancelCheck, ProgressCallback
from omniflash.settings import Settings


class Noop:
    name = "noop"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        return 0.0

    def generate(
        self, job: Job, progress: ProgressCallback, cancelled: CancelCheck
    ) -> GenerationResult:
        job.output_path.parent.mkdir(parents=True, exist_ok=True)
        job.output_path.write_bytes(b"\0")
        return GenerationResult(
            frames=job.spec.frames or 0, width=job.spec.width, height=job.spec.height, fps=24
        )
