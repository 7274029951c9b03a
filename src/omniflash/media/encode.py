"""Encoding mp4: H.264, yuv420p, a 1/fps time base, ``moov`` before ``mdat`` (faststart).

Frames go in as RGB arrays or, faster, as yuv420p planes; the file appears at its
final path only once it is complete::

    with Mp4Writer(path, 1280, 720) as writer:
        for rgb in frames:
            writer.write_rgb(rgb)
    probe_mp4(path).frames
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy

__all__ = ["DEFAULT_CRF", "Mp4Info", "Mp4Writer", "YuvFrame", "probe_mp4"]

DEFAULT_CRF = 23
# Untagged H.264 is read as BT.709 by some players and BT.601 by others; swscale's
# RGB<->YUV default is BT.601 limited range, so the stream says exactly that.
_SMPTE170M = 6
_LIMITED_RANGE = 1


@dataclasses.dataclass(frozen=True)
class YuvFrame:
    """A yuv420p frame and writable numpy views of its planes (``y`` is height × width)."""

    frame: Any
    y: numpy.ndarray
    u: numpy.ndarray
    v: numpy.ndarray

    @classmethod
    def blank(cls, width: int, height: int) -> YuvFrame:
        """A new frame with uninitialised planes, to be filled in place."""
        return cls.wrap(av.VideoFrame(width, height, "yuv420p"))

    @classmethod
    def wrap(cls, frame: Any) -> YuvFrame:
        """Views over an existing yuv420p ``av.VideoFrame`` (its rows may be padded)."""
        if frame.format.name != "yuv420p":
            raise ValueError(f"expected a yuv420p frame, got {frame.format.name}")
        views = []
        for plane in frame.planes:
            rows = numpy.frombuffer(plane, numpy.uint8).reshape(plane.height, plane.line_size)
            views.append(rows[:, : plane.width])
        return cls(frame, views[0], views[1], views[2])

    @classmethod
    def from_rgb(cls, rgb: numpy.ndarray) -> YuvFrame:
        """Convert an RGB ``uint8`` array (even sides) with swscale."""
        frame = av.VideoFrame.from_ndarray(numpy.ascontiguousarray(rgb), format="rgb24")
        return cls.wrap(frame.reformat(format="yuv420p"))


def _check_even(width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs positive even sides, got {width}×{height}")


class Mp4Writer:
    """Write H.264 frames to ``path`` (via ``path.part``, renamed into place on success).

    Leaving the ``with`` block by an exception deletes the partial file; a killed
    process leaves at most the ``.part`` file, never a truncated ``path``.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        *,
        fps: int = 24,
        preset: str = "veryfast",
        crf: int = DEFAULT_CRF,
    ) -> None:
        _check_even(width, height)
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".part")
        self.width, self.height, self.fps = width, height, fps
        self.preset, self.crf = preset, crf
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None

    def __repr__(self) -> str:
        return f"<Mp4Writer {self.path.name} {self.width}×{self.height} frames={self.frames}>"

    def open(self) -> Mp4Writer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(
            str(self.partial_path), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            stream = container.add_stream("libx264", rate=self.fps)
            stream.width, stream.height = self.width, self.height
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, self.fps)
            stream.codec_context.time_base = Fraction(1, self.fps)
            context = stream.codec_context
            context.colorspace = context.color_primaries = context.color_trc = _SMPTE170M
            context.color_range = _LIMITED_RANGE
            stream.options = {"preset": self.preset, "crf": str(self.crf)}
        except BaseException:
            container.close()
            self.partial_path.unlink(missing_ok=True)
            raise
        self._container, self._stream = container, stream
        return self

    def __enter__(self) -> Mp4Writer:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write_frame(self, frame: YuvFrame) -> None:
        """Encode a frame as is (no copy); it must be ``width`` × ``height``."""
        if self._stream is None:
            raise RuntimeError("the writer is not open")
        av_frame = frame.frame
        if (av_frame.width, av_frame.height) != (self.width, self.height):
            raise ValueError(
                f"frame is {av_frame.width}×{av_frame.height}, "
                f"the video is {self.width}×{self.height}"
            )
        av_frame.pts = self.frames
        self._container.mux(self._stream.encode(av_frame))
        self.frames += 1

    def write_yuv(self, y: numpy.ndarray, u: numpy.ndarray, v: numpy.ndarray) -> None:
        """Encode yuv420p planes: ``y`` is height × width, ``u`` and ``v`` half that."""
        if y.shape != (self.height, self.width):
            raise ValueError(f"Y plane is {y.shape}, expected {(self.height, self.width)}")
        half = (self.height // 2, self.width // 2)
        if u.shape != half or v.shape != half:
            raise ValueError(f"U/V planes are {u.shape}/{v.shape}, expected {half}")
        out = YuvFrame.blank(self.width, self.height)
        out.y[...], out.u[...], out.v[...] = y, u, v
        self.write_frame(out)

    def write_rgb(self, rgb: numpy.ndarray) -> None:
        """Encode an RGB ``uint8`` array, height × width × 3."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != numpy.uint8:
            raise ValueError(
                f"expected a uint8 array of shape {(self.height, self.width, 3)}, "
                f"got {rgb.dtype} {rgb.shape}"
            )
        self.write_frame(YuvFrame.from_rgb(rgb))

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to ``path``."""
        if self._container is None:
            return
        container, stream = self._container, self._stream
        self._container = self._stream = None
        try:
            container.mux(stream.encode(None))
            container.close()
        except BaseException:
            container.close()
            self.partial_path.unlink(missing_ok=True)
            raise
        os.replace(self.partial_path, self.path)

    def abort(self) -> None:
        """Stop without producing ``path``; the partial file is deleted."""
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            with contextlib.suppress(av.FFmpegError, OSError):
                container.close()
        self.partial_path.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Mp4Info:
    width: int
    height: int
    fps: Fraction
    frames: int
    """Counted by decoding every frame."""
    codec: str
    pix_fmt: str
    duration: float


def probe_mp4(path: Path) -> Mp4Info:
    """Geometry, rate, codec and the decoded frame count of a video file's first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = sum(1 for _ in container.decode(stream))
        context = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        duration = (
            float(stream.duration * stream.time_base)
            if stream.duration and stream.time_base
            else frames / float(rate or 1)
        )
        return Mp4Info(
            width=context.width,
            height=context.height,
            fps=Fraction(rate),
            frames=frames,
            codec=context.name,
            pix_fmt=context.pix_fmt or "",
            duration=duration,
        )
