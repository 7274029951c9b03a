"""Recipes: which diffusers pipeline and model serve each request mode, and at what shape.

This module holds what a recipes file becomes (``Recipe``, ``RecipeBook``) and the
plan of one task's pipeline calls (``RecipeBook.plan``); reading and checking the file
is ``omniflash.engines.diffusion.recipe_file``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from omniflash.contract import Mode
from omniflash.engines.diffusion.adapters import consumed_by

__all__ = [
    "DEFAULT_RECIPES",
    "FrameRule",
    "Recipe",
    "RecipeBook",
    "Segment",
    "WarmupShape",
]

DEFAULT_RECIPES = "built-in omniflash/engines/recipes.toml"
_FRAME_RULE = re.compile(r"^\s*(\d+)\s*k\s*\+\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class FrameRule:
    """Valid frame counts ``multiple·k + remainder`` (Wan: 4k+1, LTX: 8k+1).

    >>> FrameRule(4, 1).round_up(70), FrameRule(8, 1).round_down(100)
    (73, 97)
    """

    multiple: int
    remainder: int

    @classmethod
    def parse(cls, text: str) -> FrameRule:
        match = _FRAME_RULE.match(text)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f'frame rule {text!r} must look like "4k+1"')
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def smallest(self) -> int:
        return self.multiple + self.remainder

    def round_up(self, n: int) -> int:
        n = max(n, self.smallest)
        return self.remainder + math.ceil((n - self.remainder) / self.multiple) * self.multiple

    def round_down(self, n: int) -> int:
        return max(
            self.smallest, self.remainder + (n - self.remainder) // self.multiple * self.multiple
        )


@dataclasses.dataclass(frozen=True)
class Segment:
    """One pipeline call: ``frames`` native frames; after the first, frame 0 repeats the last."""

    index: int
    recipe: Recipe
    frames: int
    start: int
    """Index of this segment's first frame in the whole native clip."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    pipeline: str
    model: str
    inputs: tuple[str, ...] = ()
    steps: int = 50
    guidance: float = 5.0
    dtype: str = "bfloat16"
    component_dtypes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fps: int = 16
    frames: FrameRule = FrameRule(4, 1)
    max_frames: int = 81
    multiple: int = 16
    sizes: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    pixels: int | None = None
    negative_prompt: str | None = None
    extend: str = "continue"
    """``continue``: more calls, each from the last frame; ``stretch``: slow one call down."""
    continue_with: str | None = None
    call_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Passed to the pipeline call as they are (``frame_rate``, ``decode_timestep``…)."""
    scheduler: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Scheduler settings over the folder's (Wan's ``flow_shift``: 3.0 at 480p, 5.0 at 720p)."""
    video_strength: float = 0.5
    """How strongly a reference video holds where the adapter can say (LTX ``conditions``)."""
    vae_tiling: bool = True
    offload: str = "none"
    """``none``, ``model``, ``sequential`` or ``group`` (diffusers' group offloading)."""
    group_offload: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Arguments of ``enable_group_offload`` over the engine's (block level, 1 block a group)."""
    text_encoder: str | None = None
    """A model folder or hub id whose ``text_encoder`` and ``tokenizer`` this recipe uses:
    recipes that name the same one share one copy in memory."""
    text_encoder_offload: bool = False
    """Keep the text encoder in CPU memory; it goes to the GPU only to encode a prompt."""
    quantize: str = "none"
    """``fp8``: FP8 weight-only quantisation of the denoising transformer(s) (torchao)."""
    cache: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """A step cache, ``{ kind = "first_block", threshold = 0.05 }`` (or ``taylorseer``, ``mag``)."""
    video_control: str = "rgb"
    """What a reference video becomes before a ``video_mask`` adapter passes it on:
    ``rgb`` (as it is), ``gray``, ``edges`` or ``depth`` (with ``control_model``)."""
    control_model: str | None = None
    """The depth model for ``video_control = "depth"`` (transformers, Depth Anything)."""
    attention: str = "default"
    """The attention kernel on a GPU; see ``omniflash.engines.diffusion.speed``."""
    compile: bool = False
    """``torch.compile`` the transformer's repeated blocks on a GPU."""
    seconds_per_step: float = 1.0
    """Rough GPU seconds per step at ``max_frames``, for ``estimated_time`` only."""

    @property
    def consumes(self) -> frozenset[str]:
        return consumed_by(self.inputs)

    @property
    def frame_limit(self) -> int:
        return self.frames.round_down(self.max_frames)

    def native_size(self, aspect_ratio: str) -> tuple[int, int]:
        """Width and height the model generates for ``aspect_ratio``."""
        if aspect_ratio in self.sizes:
            return self.sizes[aspect_ratio]
        if self.pixels is None:
            raise ValueError(f"recipe {self.name!r} has no size for aspect ratio {aspect_ratio}")
        a, b = (int(p) for p in aspect_ratio.split(":"))
        width = math.sqrt(self.pixels * a / b)
        height = width * b / a
        m = self.multiple
        return max(m, round(width / m) * m), max(m, round(height / m) * m)

    def frames_for(self, seconds: float) -> int:
        """Native frames that cover ``seconds`` at this recipe's frame rate."""
        return max(1, math.ceil(seconds * self.fps - 1e-9))


@dataclasses.dataclass(frozen=True)
class WarmupShape:
    mode: Mode
    aspect_ratio: str
    steps: int = 1


@dataclasses.dataclass(frozen=True)
class RecipeBook:
    """Recipes by name, the recipe for each mode, and the engine-wide options."""

    recipes: Mapping[str, Recipe]
    modes: Mapping[Mode, str]
    device: str = "auto"
    warmup: tuple[WarmupShape, ...] = ()
    source: str = DEFAULT_RECIPES
    gpus_per_task: int = 1
    """GPUs that run one task together (torch.distributed ranks, context parallelism)."""
    parallel: str = "ulysses"
    """How the ranks split attention: ``ulysses`` (all-to-all) or ``ring``."""

    @property
    def compiles(self) -> bool:
        return any(r.compile for r in self.in_use())

    def for_mode(self, mode: Mode) -> Recipe:
        return self.recipes[self.modes[mode]]

    def in_use(self) -> list[Recipe]:
        """The recipes the modes reach, directly or as continuations, in a stable order."""
        names: list[str] = []
        for mode in Mode:
            name: str | None = self.modes[mode]
            while name is not None and name not in names:
                names.append(name)
                name = self.recipes[name].continue_with
        return [self.recipes[n] for n in names]

    def plan(self, mode: Mode, seconds: float) -> tuple[list[Segment], bool]:
        """The pipeline calls that cover ``seconds``, and whether the result is stretched."""
        recipe = self.for_mode(mode)
        needed = recipe.frames_for(seconds)
        first = min(recipe.frames.round_up(needed), recipe.frame_limit)
        segments = [Segment(0, recipe, first, 0)]
        nxt = self.recipes[recipe.continue_with or recipe.name]
        # Without a recipe that starts from a frame, the only way to fill the time is slower.
        can_continue = recipe.extend == "continue" and "first_frame" in nxt.consumes
        if first >= needed or not can_continue:
            return segments, first < needed
        made = first
        while made < needed:
            count = min(nxt.frames.round_up(needed - made + 1), nxt.frame_limit)
            segments.append(Segment(len(segments), nxt, count, made - 1))
            made += count - 1
        return segments, False
