"""One task's generation: the plan's pipeline calls, then the frames the task asked for.

The first call runs at the recipe's native size from the task's inputs; each further
one continues from the previous call's last frame.  The native frames are then
re-timed to the output frame rate, scaled to the requested size and encoded as H.264.
Where a call runs (one process, or every rank of a group) is the engine's business:
this module gets it as ``run``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy
from PIL import Image

from omniflash.contract import Mode
from omniflash.engines.base import CancelCheck, GenerationResult, Job, ProgressCallback
from omniflash.engines.diffusion.adapters import Inputs, cover
from omniflash.engines.diffusion.guidance import PromptCache
from omniflash.engines.diffusion.recipes import Recipe, Segment
from omniflash.engines.diffusion.timeline import (
    native_indices,
    sample_clip,
    scaled_frames,
    tracked,
)
from omniflash.errors import EngineError, TaskCancelled
from omniflash.media.encode import Mp4Writer

__all__ = ["Progress", "RunPipeline", "StepCallback", "generate_clip", "job_inputs"]

log = logging.getLogger(__name__)

_INPUT_NAMES = {
    "first_frame": "a first frame",
    "references": "reference images",
    "video": "a video",
}
StepCallback = Callable[[int], None]


RunPipeline = Callable[
    [Recipe, str, tuple[int, int, int], Inputs, int, int | None, StepCallback | None, PromptCache],
    list[numpy.ndarray],
]
"""One pipeline call (``DiffusersEngine.run_pipeline``): recipe, prompt, (width, height,
frames), inputs, seed, steps (None: the recipe's), the step callback and the task's
prompt cache; RGB frames at the call's native size."""


class Progress:
    """Reports ``units / total`` to the worker, never going back."""

    def __init__(self, report: ProgressCallback, total: float) -> None:
        self.report, self.total, self.last = report, max(total, 1.0), 0.0

    def at(self, units: float) -> None:
        fraction = min(1.0, units / self.total)
        if fraction > self.last:
            self.last = fraction
            self.report(fraction)


def job_inputs(job: Job) -> tuple[Image.Image | None, tuple[Image.Image, ...]]:
    """The first frame and the reference images the job's mode asks for."""
    spec = job.spec
    as_frame = spec.mode is Mode.FRAME or (spec.mode is Mode.VIDEO and spec.image_role == "frame")
    if spec.mode is Mode.FRAME and not job.images:
        raise EngineError("a first-frame task needs one image")
    if as_frame:
        return (job.images[0] if job.images else None), ()
    if spec.mode is Mode.REFERENCE and not job.images:
        raise EngineError("a reference-image task needs 1 or 3 images")
    return None, tuple(job.images) if spec.mode is not Mode.TEXT else ()


def generate_clip(
    run: RunPipeline,
    job: Job,
    segments: list[Segment],
    stretched: bool,
    tracker: Progress,
    cancelled: CancelCheck,
    *,
    preset: str,
    engine: Mapping[str, object],
) -> GenerationResult:
    """The task's calls in order, then its frames re-timed, scaled and encoded.

    ``engine`` (its name and device) heads the result's ``info``; what each call did
    follows.
    """
    spec = job.spec
    assert spec.duration is not None
    head = segments[0].recipe
    size = head.native_size(spec.aspect_ratio)
    total = segments[-1].start + segments[-1].frames
    # A stretched clip spans the whole duration with fewer frames: a slower frame rate.
    native_fps = total / spec.duration if stretched else float(head.fps)
    first_frame, references = job_inputs(job)
    control: list[Image.Image] | None = None
    if spec.mode is Mode.VIDEO:
        if job.video is None:
            raise EngineError("a reference-video task needs its video")
        control = sample_clip(job.video, total, native_fps, spec.duration, size)

    started = time.monotonic()
    native: list[numpy.ndarray] = []
    prompts = PromptCache()
    done = 0.0
    details: list[dict[str, object]] = []
    for segment in segments:
        if cancelled():
            raise TaskCancelled("the task was cancelled")
        recipe = segment.recipe
        shape = (*recipe.native_size(spec.aspect_ratio), segment.frames)
        clip = None if control is None else control[segment.start : segment.start + shape[2]]
        if segment.index == 0:
            inputs = Inputs(first_frame, references, None if clip is None else tuple(clip))
            missing = inputs.present() - recipe.consumes
            if missing:
                raise EngineError(
                    f"recipe {recipe.name!r} ({recipe.pipeline}) cannot take "
                    f"{' or '.join(_INPUT_NAMES[m] for m in sorted(missing))}; its inputs are "
                    f"{list(recipe.inputs)}"
                )
        else:
            takes = recipe.consumes
            inputs = Inputs(
                first_frame=Image.fromarray(native[-1]),
                references=references if "references" in takes else (),
                video=tuple(clip) if clip is not None and "video" in takes else None,
            )

        def on_step(step: int, base: float = done, limit: int = recipe.steps) -> None:
            if cancelled():
                raise TaskCancelled("the task was cancelled")
            tracker.at(base + min(step + 1, limit))

        call_started = time.monotonic()
        frames = run(
            recipe, spec.prompt, shape, inputs, job.seed + segment.index, None, on_step, prompts
        )
        if frames[0].shape[:2] != (size[1], size[0]):
            frames = [numpy.asarray(cover(Image.fromarray(f), size)) for f in frames]
        native.extend(frames if segment.index == 0 else frames[1:])
        done += recipe.steps + 1
        tracker.at(done)
        details.append(
            {
                "recipe": recipe.name,
                "pipeline": recipe.pipeline,
                "model": recipe.model,
                "width": shape[0],
                "height": shape[1],
                "frames": shape[2],
                "steps": recipe.steps,
                "seconds": round(time.monotonic() - call_started, 3),
            }
        )
    generated = time.monotonic() - started

    out_frames = spec.duration * spec.fps
    indices = native_indices(out_frames, spec.fps, len(native), native_fps)
    frames_out = tracked(
        scaled_frames(native, indices, (spec.width, spec.height)),
        tracker.at, done, tracker.total - done, out_frames, cancelled,
    )  # fmt: skip
    encode_started = time.monotonic()
    with Mp4Writer(job.output_path, spec.width, spec.height, fps=spec.fps, preset=preset) as writer:
        for frame in frames_out:
            writer.write_rgb(frame)
    tracker.at(tracker.total)
    info: dict[str, object] = {}
    cut = prompts.cut()
    if cut is not None:
        log.warning(
            "task %s: the prompt has %d tokens; the text encoder saw the first %d",
            job.task_id, cut["tokens"], cut["token_limit"],
        )  # fmt: skip
        info["prompt_cut"] = cut
    return GenerationResult(
        frames=writer.frames,
        width=spec.width,
        height=spec.height,
        fps=spec.fps,
        info={
            **engine,
            "calls": details,
            "native_frames": len(native),
            "native_fps": round(native_fps, 3),
            "stretched": stretched,
            "seconds": {
                "generate": round(generated, 3),
                "encode": round(time.monotonic() - encode_started, 3),
            },
            "text_encodings": prompts.encodings,
            **info,
        },
    )
