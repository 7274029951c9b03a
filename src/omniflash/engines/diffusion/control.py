"""A reference video as VACE takes it: a control video, not the video itself.

VACE (Wan 2.1 VACE) learned video-to-video tasks from *control* videos: depth, pose,
optical flow, scribble, gray, layout, each under a mask that marks every pixel to be
generated.  Given the raw frames under that mask it re-creates the video, colours and
faces included, and reference images lose to it.  When the video is the motion
reference and the images are the identity, the video must carry where things are and
how they move, and nothing of how they look: that is a depth video (VACE's "depth"
task, with Depth Anything V2 as VACE's own annotator uses), composed with
reference-to-video for the identity, the way VACE composes "Animate Anything" (pose)
and "Move Anything" (layout).  Pose covers only people, and flow and layout need
further models; depth works for any scene.

``video_control`` in a recipe chooses:

========= ===================================================================
``rgb``   the frames as they are (copies the video's look; the old behaviour)
``gray``  luminance (VACE's colourisation task: keeps textures and faces)
``edges`` a Sobel edge map, white on black: a stand-in for VACE's scribble
          annotator (a learned model), with no model to load
``depth`` Depth Anything V2 through transformers (``control_model``), near bright,
          scaled over the whole clip so that brightness means the same depth in
          every frame
========= ===================================================================
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy
from PIL import Image, ImageFilter, ImageOps

__all__ = ["DepthModel", "control_frames"]

log = logging.getLogger(__name__)


class DepthModel:
    """A depth estimator (Depth Anything V2 in transformers) on the engine's device."""

    def __init__(self, source: str, device: str, dtype: Any) -> None:
        transformers: Any = importlib.import_module("transformers")
        self.source, self.device, self.dtype = source, device, dtype
        self.processor = transformers.AutoImageProcessor.from_pretrained(source)
        model = transformers.AutoModelForDepthEstimation.from_pretrained(source, dtype=dtype)
        self.model = model.eval().to(device)

    def __repr__(self) -> str:
        return f"<DepthModel {self.source} on {self.device}>"

    def __call__(self, frames: Sequence[Image.Image], batch: int = 16) -> list[numpy.ndarray]:
        """Relative depth of each frame (larger is nearer), at the frame's size."""
        import torch

        out: list[numpy.ndarray] = []
        for start in range(0, len(frames), batch):
            chunk = list(frames[start : start + batch])
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                depth = self.model(pixel_values=pixels.to(self.device, self.dtype)).predicted_depth
            width, height = chunk[0].size
            depth = torch.nn.functional.interpolate(
                depth[:, None].float(), size=(height, width), mode="bicubic", align_corners=False
            )
            out.extend(d[0].cpu().numpy() for d in depth)
        return out


def _edges(frame: Image.Image) -> Image.Image:
    gray = ImageOps.grayscale(frame).filter(ImageFilter.GaussianBlur(1))
    return ImageOps.autocontrast(gray.filter(ImageFilter.FIND_EDGES)).convert("RGB")


def control_frames(
    kind: str, frames: Sequence[Image.Image], depth: DepthModel | None = None
) -> list[Image.Image]:
    """``frames`` turned into the control video ``kind`` names (see the module's table)."""
    if kind == "rgb":
        return list(frames)
    if kind == "gray":
        return [ImageOps.grayscale(f).convert("RGB") for f in frames]
    if kind == "edges":
        return [_edges(f) for f in frames]
    if depth is None:
        raise ValueError('video_control = "depth" needs its control_model loaded')
    maps = depth(frames)
    low = min(float(m.min()) for m in maps)
    high = max(float(m.max()) for m in maps)
    scale = 255.0 / (high - low) if high > low else 0.0
    return [
        Image.fromarray(((m - low) * scale).clip(0, 255).astype(numpy.uint8)).convert("RGB")
        for m in maps
    ]
