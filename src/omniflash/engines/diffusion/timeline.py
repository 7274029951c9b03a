"""From native frames to the requested clip: which native frame each output frame shows.

A model generates at its own frame rate and size; the output has ``duration × fps``
frames at the requested size.  Output frame ``j`` (at ``j / out_fps`` seconds) shows
the native frame nearest that time, so a 16 fps clip plays at the right speed at
24 fps, and a clip that was too short for the duration (``stretch``) plays slower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy
from PIL import Image

from omniflash.engines.base import CancelCheck
from omniflash.engines.diffusion.adapters import cover
from omniflash.errors import TaskCancelled

if TYPE_CHECKING:
    from omniflash.media.decode import VideoClip

__all__ = ["native_indices", "sample_clip", "scaled_frames", "tracked"]


def native_indices(
    out_frames: int, out_fps: int, native_count: int, native_fps: float
) -> list[int]:
    """For each output frame, the native frame to show.

    >>> native_indices(6, 24, 4, 16)
    [0, 1, 1, 2, 3, 3]
    """
    last = native_count - 1
    return [min(last, int(j * native_fps / out_fps + 0.5)) for j in range(out_frames)]


def scaled_frames(
    native: Sequence[numpy.ndarray], indices: Sequence[int], size: tuple[int, int]
) -> Iterator[numpy.ndarray]:
    """The output frames, each native frame scaled (cover, centre crop) once."""
    cache_index, cache_frame = -1, None
    for index in indices:
        if index != cache_index or cache_frame is None:
            image = cover(Image.fromarray(native[index]), size)
            cache_index, cache_frame = index, numpy.asarray(image)
        yield cache_frame


def sample_clip(
    clip: VideoClip, count: int, fps: float, seconds: float, size: tuple[int, int]
) -> list[Image.Image]:
    """``count`` frames of ``clip`` at ``fps``, covering ``size``.

    The output is ``seconds`` long: a longer clip is cut, a shorter one slowed to fit.
    """
    speed = min(1.0, clip.duration / seconds) if seconds > 0 else 1.0
    available = max(1, clip.frame_count)
    wanted = [min(available - 1, int(i / fps * speed * clip.fps)) for i in range(count)]
    keep = set(wanted)
    found: dict[int, Image.Image] = {}
    last: Image.Image | None = None
    for index, frame in enumerate(clip.iter_frames(size=size)):
        last = Image.fromarray(frame)
        if index in keep:
            found[index] = last
        if index >= max(wanted):
            break
    if last is None:
        raise ValueError("the reference video has no frames")
    # A container may promise more frames than it holds: the last one decoded stands in.
    return [found.get(i, last) for i in wanted]


def tracked(
    frames: Iterator[numpy.ndarray],
    at: Callable[[float], None],
    base: float,
    span: float,
    count: int,
    cancelled: CancelCheck,
) -> Iterator[numpy.ndarray]:
    """``frames`` passed on, with progress and a cancel check every 24 frames."""
    for index, frame in enumerate(frames):
        if index % 24 == 0:
            if cancelled():
                raise TaskCancelled("the task was cancelled")
            at(base + span * index / count)
        yield frame
