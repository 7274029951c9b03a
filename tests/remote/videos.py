"""Result files for the worker-boundary tests: real MP4s made with PyAV, cached per shape."""

from __future__ import annotations

import functools
import io
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy


@functools.lru_cache(maxsize=32)
def mp4_bytes(
    width: int = 1280,
    height: int = 720,
    frames: int = 96,
    fps: int = 24,
    *,
    faststart: bool = True,
    codec: str = "libx264",
) -> bytes:
    """An MP4 of ``frames`` flat grey frames: H.264 unless ``codec`` says otherwise."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        options = {"movflags": "+faststart"} if faststart else {}
        with av.open(str(path), mode="w", format="mp4", options=options) as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, fps)
            if codec == "libx264":
                stream.options = {"preset": "ultrafast"}
            for n in range(frames):
                image = numpy.full((height, width, 3), n % 256, numpy.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = n
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return path.read_bytes()


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1280, 720), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()
