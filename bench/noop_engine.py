"""An engine that does next to nothing, so that bench/fleet.py measures the queue, not generation.

Named ``bench.noop_engine:Noop`` (run from the repository root, or with it on PYTHONPATH).
The server checks every result file, so each task gets a real mp4 of the asked geometry:
blank frames encoded once per geometry and copied after that.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from omniflash.contract import GenerationSpec
from omniflash.engines import GenerationResult, Job
from omniflash.engines.base import CancelCheck, ProgressCallback
from omniflash.media.encode import Mp4Writer, YuvFrame
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
        spec = job.spec
        frames = spec.frames or 4 * spec.fps
        job.output_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_blank(spec.width, spec.height, frames, spec.fps), job.output_path)
        return GenerationResult(frames=frames, width=spec.width, height=spec.height, fps=spec.fps)


@functools.cache
def _blank(width: int, height: int, frames: int, fps: int) -> Path:
    path = Path(tempfile.mkdtemp(prefix="omniflash-noop-")) / f"{width}x{height}-{frames}.mp4"
    with Mp4Writer(path, width, height, fps=fps, preset="ultrafast") as out:
        for _ in range(frames):
            out.write_frame(YuvFrame.blank(width, height))
    return path
