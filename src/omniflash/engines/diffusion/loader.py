"""Loading pipelines: the device, the dtypes, and one copy of each model in memory.

Recipes that name the same model folder (Wan 2.2 TI2V serves text and first frame) share
its loaded components: the second pipeline class is built around the first one's
modules.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from typing import Any

from omniflash.engines.diffusion.control import DepthModel
from omniflash.engines.diffusion.memory import (
    apply_cache,
    group_offload,
    load_text_encoder,
    quantize_fp8,
)
from omniflash.engines.diffusion.ranks import parallelize
from omniflash.engines.diffusion.recipes import Recipe, RecipeBook
from omniflash.engines.diffusion.speed import speed_up
from omniflash.errors import EngineError

__all__ = ["PipelineLoader", "device_lost", "free_device_memory", "share_components"]

log = logging.getLogger(__name__)


def device_lost(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the GPU unusable for this process (not an out-of-memory)."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc)
    return "CUDA error" in text or "device-side assert" in text


def free_device_memory() -> None:
    """Give cached GPU memory back after a failure (a no-op without CUDA)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def share_components(cls: Any, base: Any) -> Any:
    """A pipeline of class ``cls`` (``base``'s own, or another) around ``base``'s modules.

    ``from_pipe`` would do this too, but it casts every shared module to one dtype,
    undoing a recipe's per-component dtypes (a float32 VAE beside a bfloat16
    transformer) in the pipeline that is already loaded.
    """
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in base.config.items() if k in params and not k.startswith("_")}
    kwargs.update({k: v for k, v in base.components.items() if k in params})
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PipelineLoader:
    """Loads each recipe's pipeline once per process and keeps it."""

    def __init__(
        self, book: RecipeBook, workers: int, worker_index: int = 0, *, world: int = 1
    ) -> None:
        self.book = book
        self.workers = workers
        self.worker_index = worker_index
        self.world = world
        self.gpu_index: int | None = None
        """Which visible GPU to use, when the engine narrowed them to its own."""
        self.device: str | None = None
        self.pipes: dict[str, Any] = {}
        self._by_model: dict[tuple[str, str], Any] = {}
        self.depth_models: dict[str, DepthModel] = {}
        self.controls = True
        """Whether this process makes control videos (rank 0 only)."""
        self.text_encoders: dict[tuple[str, str], tuple[Any, Any]] = {}
        """Shared text encoders and tokenizers by source and dtype."""
        self._schedulers: dict[tuple[str, str], dict[str, Any]] = {}
        """The model folder's own scheduler config, before any recipe's settings."""

    def __repr__(self) -> str:
        return f"<PipelineLoader device={self.device} loaded={sorted(self.pipes)}>"

    def start(self) -> None:
        """Choose the device (once) and log the recipes, CUDA and the dtype policy."""
        if self.device is not None:
            return
        import torch

        cuda = torch.cuda.is_available()
        wanted = self.book.device
        device = ("cuda" if cuda else "cpu") if wanted == "auto" else wanted
        if device == "cuda" and self.gpu_index is not None:
            device = f"cuda:{self.gpu_index}"
        elif device == "cuda" and torch.cuda.device_count() > 1:
            # One worker per GPU: worker i takes GPU i (round robin past the last one).
            device = f"cuda:{self.worker_index % torch.cuda.device_count()}"
        if device.startswith("cuda") and not cuda:
            raise EngineError(f"recipes ask for device {wanted!r} but torch sees no CUDA device")
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        if device == "cpu":
            self._share_cpu(torch)
        self.device = device
        log.info(
            "diffusers engine: recipes %s (%s); CUDA %s; device %s; dtype %s",
            self.book.source,
            ", ".join(f"{m.value}→{n}" for m, n in self.book.modes.items()),
            f"present ({torch.cuda.device_count()} × {torch.cuda.get_device_name()})"
            if cuda
            else "absent",
            device,
            "float32" if device == "cpu" else "per recipe",
        )

    def _share_cpu(self, torch: Any) -> None:
        """Give each worker's engine process its share of the cores.

        Every worker runs its own engine process (and with several ranks, one per
        rank); each torch taking all cores makes them spin against each other,
        several times slower than sharing.  A lower
        limit the operator set (``OMP_NUM_THREADS``) is kept.
        """
        share = max(1, (os.cpu_count() or 1) // max(1, self.workers * self.world))
        if torch.get_num_threads() > share:
            torch.set_num_threads(share)

    def load_all(self) -> dict[str, str]:
        """Load every recipe a mode reaches; returns the reason for each one that failed."""
        self.start()
        failed: dict[str, str] = {}
        for recipe in self.book.in_use():
            try:
                self.get(recipe)
            except EngineError as exc:
                failed[recipe.name] = str(exc)
                log.error("%s; tasks that need it fail until it loads", exc)
        return failed

    def get(self, recipe: Recipe) -> Any:
        """The pipeline of ``recipe``, loaded on first use or after a failed try."""
        pipe = self.pipes.get(recipe.name)
        if pipe is None:
            self.start()
            started = time.monotonic()
            pipe = self._load(recipe)
            self.depth(recipe)
            self.pipes[recipe.name] = pipe
            log.info(
                "recipe %s: %s from %s, %s, in %.1f s",
                recipe.name, recipe.pipeline, recipe.model, self.dtype_name(recipe),
                time.monotonic() - started,
            )  # fmt: skip
        return pipe

    def depth(self, recipe: Recipe) -> DepthModel | None:
        """The depth model of a ``video_control = "depth"`` recipe, loaded once."""
        source = recipe.control_model
        if recipe.video_control != "depth" or source is None or not self.controls:
            return None
        if source not in self.depth_models:
            assert self.device is not None
            dtype = self._dtype(recipe)
            dtype = dtype["default"] if isinstance(dtype, dict) else dtype
            try:
                self.depth_models[source] = DepthModel(source, self.device, dtype)
            except Exception as exc:
                raise EngineError(
                    f"could not load control model {source!r} for recipe {recipe.name!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            log.info("recipe %s: depth control from %s", recipe.name, source)
        return self.depth_models[source]

    def _configure(self, pipe: Any, recipe: Recipe, key: tuple[str, str]) -> Any:
        """Check the recipe's call arguments; give the pipeline the recipe's scheduler."""
        params = inspect.signature(type(pipe).__call__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(recipe.call_kwargs) - set(params))
        if unknown and not takes_any:
            raise ValueError(
                f"call_kwargs {unknown} are not arguments of {recipe.pipeline}; scheduler "
                "settings such as flow_shift go in the recipe's `scheduler` table"
            )
        # Each recipe its own scheduler: the folder's config and the recipe's settings.
        config = self._schedulers.get(key, dict(pipe.scheduler.config))
        pipe.scheduler = type(pipe.scheduler).from_config(config, **recipe.scheduler)
        return pipe

    def adopt(self, recipe: Recipe, pipe: Any) -> None:
        """Serve ``recipe`` with a pipeline built elsewhere (benchmarks, embedding).

        It is placed and sped up as a loaded one would be.
        """
        self.start()
        key = (recipe.model, self.dtype_name(recipe))
        self._schedulers[key] = dict(pipe.scheduler.config)
        self._place(pipe, recipe)
        self.pipes[recipe.name] = self._by_model[key] = self._configure(pipe, recipe, key)

    def dtype_name(self, recipe: Recipe) -> str:
        if self.device == "cpu":
            return "float32"
        extra = "".join(f", {c} {d}" for c, d in sorted(recipe.component_dtypes.items()))
        return recipe.dtype + extra

    def _dtype(self, recipe: Recipe) -> Any:
        import torch

        # Half precision on a CPU is slow where it works at all.
        if self.device == "cpu":
            return torch.float32
        if not recipe.component_dtypes:
            return getattr(torch, recipe.dtype)
        dtypes = {c: getattr(torch, d) for c, d in recipe.component_dtypes.items()}
        return {"default": getattr(torch, recipe.dtype), **dtypes}

    def _load(self, recipe: Recipe) -> Any:
        import diffusers
        import torch

        cls: Any = getattr(diffusers, recipe.pipeline, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise EngineError(
                f"recipe {recipe.name!r}: diffusers {diffusers.__version__} has no pipeline "
                f"class {recipe.pipeline!r}"
            )
        key = (recipe.model, self.dtype_name(recipe))
        pipe: Any = None
        try:
            base = self._by_model.get(key)
            # Offload hooks belong to one pipeline: an offloaded model is loaded per recipe.
            if base is not None and recipe.offload == "none":
                return self._configure(share_components(cls, base), recipe, key)
            shared = self._text_encoder(recipe)
            pipe = cls.from_pretrained(recipe.model, dtype=self._dtype(recipe), **shared)
            self._schedulers[key] = dict(pipe.scheduler.config)
            self._place(pipe, recipe)
            self._configure(pipe, recipe, key)
        except torch.cuda.OutOfMemoryError:
            failure = EngineError(
                f"out of GPU memory loading {recipe.model!r} for recipe {recipe.name!r}; "
                'use a smaller model or set offload = "model" in the recipe'
            )
        except Exception as exc:
            failure = EngineError(
                f"could not load model {recipe.model!r} for recipe {recipe.name!r} "
                f"({recipe.pipeline}): {type(exc).__name__}: {exc}"
            )
        else:
            self._by_model[key] = pipe
            return pipe
        # Outside the except block nothing holds the half-loaded model: its memory can go.
        pipe = None
        free_device_memory()
        raise failure

    def _text_encoder(self, recipe: Recipe) -> dict[str, Any]:
        """The shared text encoder a recipe names, loaded on first use, as call arguments."""
        if recipe.text_encoder is None:
            return {}
        import torch

        name = (
            "float32"
            if self.device == "cpu"
            else recipe.component_dtypes.get("text_encoder", recipe.dtype)
        )
        key = (recipe.text_encoder, name)
        if key not in self.text_encoders:
            self.text_encoders[key] = load_text_encoder(recipe.text_encoder, getattr(torch, name))
            log.info("text encoder from %s, %s, shared by every recipe that names it", *key)
        encoder, tokenizer = self.text_encoders[key]
        return {"text_encoder": encoder, "tokenizer": tokenizer}

    def _place(self, pipe: Any, recipe: Recipe) -> None:
        assert self.device is not None
        cuda = self.device.startswith("cuda")
        done: list[str] = []
        if recipe.quantize == "fp8":
            # Before the move: the GPU never holds the wider weights.
            done += quantize_fp8(pipe)
        if recipe.offload == "group":
            done.append(group_offload(pipe, self.device, recipe.group_offload))
        elif cuda and recipe.offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif cuda and recipe.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        encoder: Any = getattr(pipe, "text_encoder", None)
        if recipe.text_encoder_offload and encoder is not None:
            encoder.to("cpu")
            done.append("text encoder waits in CPU memory")
        vae: Any = getattr(pipe, "vae", None)
        # Tiled decoding keeps long, large clips within memory on a GPU; on a CPU it only slows.
        if recipe.vae_tiling and cuda and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        if self.world > 1:
            done += parallelize(pipe, self.world, self.book.parallel, recipe.attention, cuda)
        if cuda:
            done += speed_up(pipe, recipe.attention, recipe.compile)
        if recipe.cache:
            done += apply_cache(pipe, recipe.cache, recipe.steps)
        for line in done:
            log.info("recipe %s: %s", recipe.name, line)
        pipe.set_progress_bar_config(disable=True)
