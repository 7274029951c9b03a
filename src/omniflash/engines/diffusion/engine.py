"""``DiffusersEngine``: open-weight video diffusion models, chosen per mode by recipes.

The engine owns the process's life: its GPUs (``devices``), its pipelines
(``loader``), the warm-up, the other ranks of a multi-GPU task (``ranks``) and each
pipeline call, run on every rank at once (``run_pipeline``).  One task runs as one or
more such calls (``RecipeBook.plan``), in the order ``generation.generate_clip`` gives.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy

from omniflash.contract import GenerationSpec
from omniflash.engines.base import (
    CancelCheck,
    GenerationResult,
    Job,
    PreviewCallback,
    ProgressCallback,
)
from omniflash.engines.diffusion.adapters import Inputs
from omniflash.engines.diffusion.control import control_frames
from omniflash.engines.diffusion.devices import pin_gpus
from omniflash.engines.diffusion.generation import Progress, StepCallback, generate_clip
from omniflash.engines.diffusion.guidance import PromptCache, call_pipeline
from omniflash.engines.diffusion.latent_previews import LatentPreviewer
from omniflash.engines.diffusion.loader import PipelineLoader, device_lost, free_device_memory
from omniflash.engines.diffusion.ranks import RankGroup, agree_stop
from omniflash.engines.diffusion.recipe_file import load_recipes
from omniflash.engines.diffusion.recipes import Recipe, RecipeBook
from omniflash.engines.diffusion.warmup import every_call_shape, listed_shapes
from omniflash.errors import EngineBroken, EngineError, GenerationError, TaskCancelled

if TYPE_CHECKING:
    from omniflash.settings import Settings

__all__ = ["INSTALL_HINT", "DiffusersEngine", "require_gpu_extra"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[gpu]'"
_EXTRA = ("torch", "diffusers", "transformers", "ftfy")
RANK_REPLY_S = 10.0
"""How long rank 0, having failed, waits to hear that the other ranks failed too."""


def require_gpu_extra() -> None:
    """Fail fast, before any model is touched, when the ``[gpu]`` extra is not installed.

    ``find_spec`` rather than an import keeps the API process, which builds an engine
    only for ``estimate_seconds``, free of torch.  ``ftfy`` is listed because Wan's
    image-to-video and VACE pipelines need it but diffusers does not declare it.
    """
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"the diffusers engine needs {', '.join(missing)}; install them in the omniflash "
            f"checkout with: {INSTALL_HINT}"
        )


class DiffusersEngine:
    """Generates with Hugging Face diffusers pipelines named by ``Settings.recipes_path``."""

    name = "diffusers"
    cancel_grace_s = 120.0
    """A cancel is seen between denoising steps; text encoding and the VAE decode of a
    long clip run longer than that without a check, so the worker waits this long before
    it kills the engine (and the models must load again)."""

    def __init__(self, settings: Settings, *, rank: int = 0, world: int | None = None) -> None:
        require_gpu_extra()
        self.settings = settings
        self.book: RecipeBook = load_recipes(settings.recipes_path)
        self.rank = rank
        self.world = world or self.book.gpus_per_task
        """Processes, one per GPU, that run each task together (rank 0 is this one)."""
        self.loader = PipelineLoader(
            self.book, settings.workers, settings.worker_index, world=self.world
        )
        self.group: RankGroup | None = None
        self.loader.controls = rank == 0

    def __repr__(self) -> str:
        return f"<DiffusersEngine {self.book.source} {self.loader!r}>"

    @property
    def device(self) -> str:
        return self.loader.device or "cpu"

    def load(self) -> None:
        """Load every pipeline a mode can reach; a model shared by two recipes loads once.

        A model that cannot be loaded is logged, not fatal: the tasks that need it fail
        with the reason (and are refunded), the other modes keep working, and the next
        task that needs it tries again.

        First the process takes its GPUs: ``CUDA_VISIBLE_DEVICES`` narrowed to this
        worker's (before torch first touches CUDA), and with ``gpus_per_task`` above 1
        the other ranks started (``omniflash.engines.diffusion.ranks``).
        """
        if self.rank == 0:
            self._pin_gpus()
        if self.world > 1:
            # Rank r runs on the r-th of the GPUs rank 0 narrowed the process group to.
            self.loader.gpu_index = self.rank
        self.loader.start()
        if self.rank == 0 and self.world > 1:
            self.group = RankGroup(self.settings, self.world, self.device.startswith("cuda"))
            self.group.start()
        self.loader.load_all()
        if self.group is not None:
            self.group.wait_ready()

    def _pin_gpus(self) -> None:
        """This worker's GPUs only, for every kernel of the process (``devices.pin_gpus``)."""
        if self.book.device not in ("auto", "cuda"):
            return  # a CPU, or a device the operator named
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            log.warning(
                "CUDA was initialised before the engine chose its GPUs; torch.cuda.set_device only"
            )
            return
        gpus = pin_gpus(self.settings.worker_index, self.world)
        if gpus is not None:
            # The process sees only its own GPUs.
            self.loader.gpu_index = 0
            log.info("worker %d: GPUs %s", self.settings.worker_index, ",".join(gpus))

    def close(self) -> None:
        """Stop the other ranks (they also end with this process)."""
        if self.group is not None:
            self.group.close()
            self.group = None

    # -- generating --------------------------------------------------------------------

    def warmup(self) -> None:
        """Run each call shape the worker should not compile or tune during a task.

        With ``compile`` on a GPU that is every shape the recipes serve (every mode,
        aspect ratio and duration); otherwise the ``[[warmup]]`` tables.  A shape that
        fails is logged and skipped: the worker still starts, and the tasks that hit
        the same problem fail with its message.
        """
        compiled = self.book.compiles and self.device.startswith("cuda")
        calls = every_call_shape(self.book) if compiled else listed_shapes(self.book)
        if compiled:
            log.info("compile is on: warming %d call shapes", len(calls))
        prompts = PromptCache()
        for call in calls:
            recipe, size = call.recipe, f"{call.width}x{call.height}x{call.frames}"
            started = time.monotonic()
            try:
                # Compiled warm-ups stop before the VAE: only the transformer compiles.
                self.run_pipeline(
                    recipe, "warmup", (call.width, call.height, call.frames), call.inputs(),
                    0, call.steps, None, prompts, decode=not compiled,
                )  # fmt: skip
            except Exception as exc:
                log.error(
                    "warmup of %s (%s) at %s failed: %s", call.mode.value, recipe.name, size, exc
                )
                continue
            log.info(
                "warmed %s (%s) at %s in %.1f s",
                call.mode.value, recipe.name, size, time.monotonic() - started,
            )  # fmt: skip

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        segments, _ = self.book.plan(spec.mode, spec.duration or 10)
        seconds = sum(
            s.recipe.steps * s.recipe.seconds_per_step * s.frames / s.recipe.frame_limit
            for s in segments
        )
        return seconds + 0.02 * (spec.duration or 10) * spec.fps

    def generate(
        self, job: Job, progress: ProgressCallback, cancelled: CancelCheck
    ) -> GenerationResult:
        import torch

        spec = job.spec
        if spec.duration is None:
            raise EngineError("the task has no duration; a reference video must set one")
        segments, stretched = self.book.plan(spec.mode, spec.duration)
        steps = sum(s.recipe.steps + 1 for s in segments)
        tracker = Progress(progress, steps + max(1, steps // 10))
        head = segments[0].recipe
        try:
            run = self.run_pipeline
            if job.preview is not None:
                run = functools.partial(self.run_pipeline, preview=job.preview)
            return generate_clip(
                run, job, segments, stretched, tracker, cancelled,
                preset=self.settings.x264_preset,
                engine={"engine": self.name, "device": self.device},
            )  # fmt: skip
        except GenerationError:
            raise
        except torch.cuda.OutOfMemoryError:
            failure: EngineError = EngineError(
                f"out of GPU memory generating {spec.width}x{spec.height}, {spec.duration} s "
                f"with recipe {head.name!r}; lower max_frames or the native size in the "
                "recipe, or enable offload"
            )
        except Exception as exc:
            log.exception("task %s: recipe %s failed", job.task_id, head.name)
            message = f"recipe {head.name!r} ({head.pipeline}) failed: {type(exc).__name__}: {exc}"
            failure = EngineBroken(message) if device_lost(exc) else EngineError(message)
        # Outside the except block the traceback, and the GPU tensors its frames held, are
        # gone: only now can the memory go back.
        free_device_memory()
        raise failure

    def run_pipeline(
        self,
        recipe: Recipe,
        prompt: str,
        shape: tuple[int, int, int],
        inputs: Inputs,
        seed: int,
        steps: int | None,
        on_step: StepCallback | None,
        prompts: PromptCache | None = None,
        *,
        decode: bool = True,
        preview: PreviewCallback | None = None,
    ) -> list[numpy.ndarray]:
        """One pipeline call; RGB ``uint8`` frames at the call's native size.

        ``prompts`` holds the task's text embeddings: calls that share a text encoder
        encode the prompt once.  ``decode=False`` stops at the latents (a warm-up of
        the compiled transformer needs no VAE) and returns no frames.  ``preview`` is
        shown the latents every few steps (``latent_previews``), on rank 0 only.
        """
        import torch

        pipe = self.loader.get(recipe)
        generator = torch.Generator(device=self.device).manual_seed(seed % 2**63)
        previewer = (
            None if preview is None else LatentPreviewer(preview, steps or recipe.steps, shape)
        )

        def step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            stop = False
            if on_step is not None:
                try:
                    on_step(step)
                except TaskCancelled:
                    stop = True
            # Every rank stops at the same step, or the others would wait for it forever.
            if self.world > 1:
                stop = agree_stop(stop, self.device)
            if stop:
                raise TaskCancelled("the task was cancelled")
            if previewer is not None and "latents" in kwargs:
                previewer.step(_pipe, step, kwargs["latents"])
            return kwargs

        # Rank 0 makes the control video once; the other ranks are sent it.
        if self.rank == 0 and inputs.video is not None and "video_mask" in recipe.inputs:
            control = control_frames(recipe.video_control, inputs.video, self.loader.depth(recipe))
            inputs = dataclasses.replace(inputs, video=tuple(control))
        if self.group is not None:
            self.group.send_call(
                {"task": id(prompts), "recipe": recipe.name, "prompt": prompt, "shape": shape,
                 "inputs": inputs, "seed": seed, "steps": steps, "decode": decode}
            )  # fmt: skip
        try:
            video = call_pipeline(
                pipe, recipe, prompt, shape, inputs,
                step_end=step_end, generator=generator, steps=steps, prompts=prompts,
                device=self.device, decode=decode,
            )  # fmt: skip
        except TaskCancelled:
            if self.group is not None:
                self.group.collect()
            raise
        except Exception as exc:
            # An input every rank refuses fails on all of them before the first step: the
            # group is still in step.  Otherwise a rank waits in a collective: restart.
            if self.group is not None and self.group.collect(timeout=RANK_REPLY_S) is None:
                raise EngineBroken(
                    f"a call across {self.world} ranks failed on rank 0 "
                    f"({type(exc).__name__}: {exc}); the ranks start again"
                ) from exc
            raise
        if previewer is not None:
            previewer.finish()
        if self.group is not None:
            problems = self.group.collect()
            if problems:
                raise EngineBroken("; ".join(problems or ()))
        if not decode:
            return []
        video = (numpy.clip(video, 0.0, 1.0) * 255.0 + 0.5).astype(numpy.uint8)
        return list(video)
