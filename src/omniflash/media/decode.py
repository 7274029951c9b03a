"""Decoding input images and videos from their bytes, with size and length limits.

The type a server claims (``Content-Type``, a data URI's ``image/png``) is never
used: the bytes decide.  Dimensions are checked from the header before any
pixels are decoded.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy
from PIL import Image, ImageOps

from omniflash.errors import BadInput

__all__ = ["IMAGE_FORMATS", "VideoClip", "decode_image", "probe_video"]

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
"""Formats accepted as input images (JPEG covers MPO); others, EPS among them, are refused."""

# The API takes one reference video, so errors found after probing name it.
_VIDEO_LABEL = "video_urls[0]"
_WHITE = (255, 255, 255, 255)


def _megapixels(pixels: int) -> str:
    return f"{round(pixels / 1_000_000, 1):g} megapixels"


def _too_many_pixels(label: str, width: int, height: int, max_pixels: int) -> BadInput:
    return BadInput(
        f"{label}: {width}×{height} is more than the limit of {_megapixels(max_pixels)}"
    )


def _bomb(label: str, max_pixels: int) -> BadInput:
    limit = (
        max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    )
    return BadInput(f"{label}: the image is more than the limit of {_megapixels(limit)}")


def decode_image(data: bytes, *, label: str, max_pixels: int) -> Image.Image:
    """An RGB image, turned upright by its EXIF orientation; transparency becomes white."""
    Image.init()
    formats = [name for name in IMAGE_FORMATS if name in Image.OPEN]
    undecodable = BadInput(f"{label}: not a decodable image")
    # Pillow's own bomb guard warns (or raises) at sizes of its choosing; make it an
    # exception so nothing is emitted, and let ``max_pixels`` decide below it.  Its other
    # warnings (corrupt EXIF, odd palettes) are about the sender's file, not ours to log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=formats)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise _bomb(label, max_pixels) from exc
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            raise undecodable from exc
        width, height = image.size
        if width <= 0 or height <= 0:
            raise undecodable
        if width * height > max_pixels:
            raise _too_many_pixels(label, width, height, max_pixels)
        try:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise _bomb(label, max_pixels) from exc
        except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError) as exc:
            raise undecodable from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, _WHITE)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclasses.dataclass(frozen=True)
class VideoClip:
    """A probed input video.  ``width`` and ``height`` are as displayed (rotation applied)."""

    path: Path
    width: int
    height: int
    fps: float
    duration: float
    frame_count: int

    def iter_frames(self, size: tuple[int, int] | None = None) -> Iterator[numpy.ndarray]:
        """RGB ``uint8`` frames (height × width × 3) in order, at most ``frame_count``.

        With ``size=(w, h)`` each frame is scaled to cover w×h and centre-cropped to it.
        """
        produced = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if produced >= self.frame_count:
                        return
                    yield _frame_array(frame, size)
                    produced += 1
        except (av.FFmpegError, OSError) as exc:
            raise BadInput(f"{_VIDEO_LABEL}: could not decode frame {produced}") from exc


def _turns(frame: Any) -> int:
    """Quarter turns counter-clockwise that show ``frame`` upright (its display matrix)."""
    return round((frame.rotation or 0) / 90) % 4


def _frame_array(frame: Any, size: tuple[int, int] | None) -> numpy.ndarray:
    turns = _turns(frame)
    if size is None:
        array: numpy.ndarray = frame.to_ndarray(format="rgb24")
        return numpy.ascontiguousarray(numpy.rot90(array, turns)) if turns else array
    width, height = size
    shown_w, shown_h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    scale = max(width / shown_w, height / shown_h)
    cover_w = max(width, round(shown_w * scale))
    cover_h = max(height, round(shown_h * scale))
    stored_w, stored_h = (cover_h, cover_w) if turns % 2 else (cover_w, cover_h)
    array = frame.reformat(
        width=stored_w, height=stored_h, format="rgb24", interpolation="AREA"
    ).to_ndarray()
    if turns:
        array = numpy.rot90(array, turns)
    left, top = (cover_w - width) // 2, (cover_h - height) // 2
    return numpy.ascontiguousarray(array[top : top + height, left : left + width])


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None or value <= 0:
        return None
    return float(value * time_base)


def probe_video(path: Path, *, label: str, max_seconds: float, max_pixels: int) -> VideoClip:
    """Open a video file with PyAV and check it: a video stream, size and length limits.

    The frame count comes from the container when it agrees with duration × rate;
    otherwise every frame is decoded and counted (stopping past ``max_seconds``).
    """
    undecodable = BadInput(f"{label}: not a decodable video")
    too_long = BadInput(f"{label}: longer than the limit of {max_seconds:g} s")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadInput(f"{label}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.codec_context.width, stream.codec_context.height
            if width <= 0 or height <= 0:
                raise undecodable
            if width * height > max_pixels:
                raise _too_many_pixels(label, width, height, max_pixels)
            duration = _seconds(stream.duration, stream.time_base)
            if duration is None and container.duration:
                duration = container.duration / av.time_base
            if duration is not None and duration > max_seconds:
                raise too_long
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            declared = stream.frames
            trusted = (
                declared > 0
                and duration is not None
                and fps > 0
                and abs(declared - duration * fps) <= max(2.0, 0.05 * declared)
            )
            count, first, end = 0, None, 0.0
            start = _seconds(stream.start_time, stream.time_base) or 0.0
            for index, frame in enumerate(container.decode(stream)):
                count = index + 1
                if fps > 0 and count > max_seconds * fps + 2:
                    raise too_long
                first = first if first is not None else frame
                if frame.time is not None:
                    step = 1 / fps if fps > 0 else 0.0
                    end = max(end, frame.time - start + step)
                    if end > max_seconds + step:
                        raise too_long
                if trusted:
                    break
    except BadInput:
        raise
    except (av.FFmpegError, OSError, ValueError, ZeroDivisionError) as exc:
        raise undecodable from exc
    if first is None:
        raise BadInput(f"{label}: has no video frames")
    if trusted:
        count = declared
    else:
        duration = end if end > 0 else duration
    if not duration or duration <= 0:
        duration = count / fps if fps > 0 else float(count)
    if fps <= 0:
        fps = count / duration
    if duration > max_seconds:
        raise too_long
    if _turns(first) % 2:
        width, height = height, width
    return VideoClip(
        path=path,
        width=width,
        height=height,
        fps=fps,
        duration=duration,
        frame_count=count,
    )
