"""The pipeline calls a worker runs once at start, so no task pays for them.

A compiled transformer compiles again for each new shape: the size, the frame count,
and (VACE) the number of reference images and whether a first frame is kept.  With
``compile`` on, the engine warms every call shape the recipes serve, found by planning
every mode, aspect ratio and duration of the API the way a task plans them.  Without
it, only the recipes file's ``[[warmup]]`` tables run (kernel choice and allocator
growth, once).

A reference video sets its own duration, so video tasks of lengths outside
``DURATIONS`` may still compile on their first call.
"""

from __future__ import annotations

import dataclasses

from PIL import Image

from omniflash.contract import ASPECT_RATIOS, DURATIONS, Mode
from omniflash.engines.diffusion.adapters import Inputs
from omniflash.engines.diffusion.recipes import Recipe, RecipeBook

__all__ = ["WarmCall", "every_call_shape", "listed_shapes"]

_GREY = (128, 128, 128)


@dataclasses.dataclass(frozen=True)
class WarmCall:
    """One call shape: a recipe at a size and frame count, with the inputs it is given."""

    mode: Mode
    aspect_ratio: str
    recipe: Recipe
    width: int
    height: int
    frames: int
    first_frame: bool = False
    references: int = 0
    video: bool = False
    steps: int = 1

    @property
    def key(self) -> tuple[object, ...]:
        return (self.recipe.name, self.width, self.height, self.frames, self.first_frame,
                self.references, self.video)  # fmt: skip

    def inputs(self) -> Inputs:
        """Grey stand-ins of the right sizes and counts."""
        grey = Image.new("RGB", (self.width, self.height), _GREY)
        return Inputs(
            first_frame=grey if self.first_frame else None,
            references=(grey,) * self.references,
            video=(grey,) * self.frames if self.video else None,
        )


# The inputs each mode's first call can bring: (first frame, references, video).
_FIRST_CALL = {
    Mode.TEXT: [(False, 0, False)],
    Mode.FRAME: [(True, 0, False)],
    Mode.REFERENCE: [(False, 1, False), (False, 3, False)],
    Mode.VIDEO: [(False, 0, True), (False, 1, True), (False, 3, True), (True, 0, True)],
}


def every_call_shape(book: RecipeBook) -> list[WarmCall]:
    """Each distinct call shape of every mode, aspect ratio and duration, in a stable order."""
    found: dict[tuple[object, ...], WarmCall] = {}
    for mode in Mode:
        for ratio in ASPECT_RATIOS:
            for seconds in DURATIONS:
                segments, _ = book.plan(mode, seconds)
                for first, refs, video in _FIRST_CALL[mode]:
                    head = segments[0].recipe.consumes
                    if (refs and "references" not in head) or (first and "first_frame" not in head):
                        continue
                    for segment in segments:
                        takes = segment.recipe.consumes
                        width, height = segment.recipe.native_size(ratio)
                        call = WarmCall(
                            mode,
                            ratio,
                            segment.recipe,
                            width,
                            height,
                            segment.frames,
                            first_frame=first or segment.index > 0,
                            references=refs if "references" in takes else 0,
                            video=video and "video" in takes,
                        )
                        found.setdefault(call.key, call)
    return list(found.values())


def listed_shapes(book: RecipeBook) -> list[WarmCall]:
    """The ``[[warmup]]`` tables: each mode's first call at its longest."""
    calls = []
    for shape in book.warmup:
        recipe = book.for_mode(shape.mode)
        width, height = recipe.native_size(shape.aspect_ratio)
        first, refs, video = _FIRST_CALL[shape.mode][0]
        calls.append(
            WarmCall(
                shape.mode,
                shape.aspect_ratio,
                recipe,
                width,
                height,
                recipe.frame_limit,
                first,
                refs,
                video,
                shape.steps,
            )
        )
    return calls
