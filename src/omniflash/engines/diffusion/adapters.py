"""Input adapters: how a recipe hands images and video to its pipeline.

A job brings up to three kinds of input to one pipeline call (``Inputs``): a first
frame (the ``frame`` image, or the last frame of the previous call when a clip is
extended), reference images, and the frames of a reference video.  A recipe lists
the adapters that turn them into call arguments; the engine itself knows no model
family.  The adapters:

=================== ================== ===============================================
adapter             takes              passes
=================== ================== ===============================================
``image``           first frame        ``image=`` (Wan I2V, LTX image-to-video)
``reference_images`` reference images  ``reference_images=[…]`` (Wan VACE)
``video_mask``      video, first frame ``video=[…]`` + ``mask=[…]`` (Wan VACE): the video
                                       as a control signal (white mask), a first frame
                                       kept as is (black mask), grey frames to generate
``conditions``      video, first frame ``conditions=[LTXVideoCondition(…)]`` (LTX condition)
=================== ================== ===============================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from PIL import Image, ImageOps

__all__ = ["ADAPTERS", "Inputs", "build_call_kwargs", "consumed_by", "cover"]

_GREY = (128, 128, 128)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What one pipeline call is given, already at the call's native size where it matters."""

    first_frame: Image.Image | None = None
    references: tuple[Image.Image, ...] = ()
    video: tuple[Image.Image, ...] | None = None
    """Exactly as many frames as the call generates."""
    video_strength: float = 1.0
    """How strongly a conditioning video holds, where the adapter can say (LTX)."""

    def present(self) -> set[str]:
        found = set()
        if self.first_frame is not None:
            found.add("first_frame")
        if self.references:
            found.add("references")
        if self.video is not None:
            found.add("video")
        return found


def cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` scaled to cover ``size`` and centre-cropped to it, in RGB."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size == size:
        return rgb
    return ImageOps.fit(rgb, size, method=Image.Resampling.LANCZOS)


Shape = tuple[int, int, int]
"""Width, height and frame count of one call."""


def _image(inputs: Inputs, shape: Shape) -> dict[str, Any]:
    if inputs.first_frame is None:
        return {}
    return {"image": cover(inputs.first_frame, shape[:2])}


def _reference_images(inputs: Inputs, shape: Shape) -> dict[str, Any]:
    # VACE fits each reference into the frame itself, keeping its aspect ratio.
    return {"reference_images": list(inputs.references)} if inputs.references else {}


def _video_mask(inputs: Inputs, shape: Shape) -> dict[str, Any]:
    width, height, count = shape
    if inputs.video is None and inputs.first_frame is None:
        return {}
    if inputs.video is not None:
        frames = [cover(f, (width, height)) for f in inputs.video]
    else:
        frames = [Image.new("RGB", (width, height), _GREY)] * count
    masks = [Image.new("L", (width, height), 255)] * count
    if inputs.first_frame is not None:
        frames[0] = cover(inputs.first_frame, (width, height))
        masks[0] = Image.new("L", (width, height), 0)
    return {"video": frames, "mask": masks}


def _conditions(inputs: Inputs, shape: Shape) -> dict[str, Any]:
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    width, height, _ = shape
    first = None if inputs.first_frame is None else cover(inputs.first_frame, (width, height))
    if inputs.video is not None:
        frames = [cover(f, (width, height)) for f in inputs.video]
        if first is not None:
            frames[0] = first
        # At strength 1 LTX keeps the video's latents as they are: a copy, not a guide.
        strength = inputs.video_strength
        return {"conditions": [LTXVideoCondition(video=frames, frame_index=0, strength=strength)]}
    if first is not None:
        return {"conditions": [LTXVideoCondition(image=first, frame_index=0)]}
    return {}


@dataclasses.dataclass(frozen=True)
class Adapter:
    takes: frozenset[str]
    build: Callable[[Inputs, Shape], dict[str, Any]]


ADAPTERS: dict[str, Adapter] = {
    "image": Adapter(frozenset({"first_frame"}), _image),
    "reference_images": Adapter(frozenset({"references"}), _reference_images),
    "video_mask": Adapter(frozenset({"video", "first_frame"}), _video_mask),
    "conditions": Adapter(frozenset({"video", "first_frame"}), _conditions),
}


def consumed_by(adapters: Iterable[str]) -> frozenset[str]:
    """The kinds of input a list of adapters can pass on."""
    return frozenset().union(*(ADAPTERS[name].takes for name in adapters))


def build_call_kwargs(adapters: Iterable[str], inputs: Inputs, shape: Shape) -> dict[str, Any]:
    """Call arguments for ``inputs``; later adapters win where two set the same argument."""
    kwargs: dict[str, Any] = {}
    for name in adapters:
        kwargs.update(ADAPTERS[name].build(inputs, shape))
    return kwargs
