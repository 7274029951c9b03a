"""Jobs and inputs for the diffusers engine tests."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import av
import numpy
from PIL import Image

from omniflash.contract import GenerationSpec, Mode
from omniflash.engines import Job
from omniflash.media.decode import VideoClip, probe_video
from omniflash.media.encode import Mp4Writer

__all__ = ["OUT_SIZE", "Decoded", "data_uri", "make_clip", "make_job", "solid"]

OUT_SIZE = (128, 72)
"""Requested output: small, 16:9, even sides; the tiny models generate 64×48."""


def solid(color: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> Image.Image:
    """An image with a colour block and a bright square, so crops and scales show."""
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return image


def data_uri(image: Image.Image) -> str:
    """``image`` as a PNG ``data:`` URI, the way a client inlines an input image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Decoded:
    """Every frame of an mp4 and what its stream says about itself."""

    def __init__(self, source: Path | bytes) -> None:
        target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        with av.open(target, "r") as container:
            stream = container.streams.video[0]
            context = stream.codec_context
            self.codec, self.pix_fmt = context.name, context.pix_fmt
            self.fps = float(stream.average_rate or 0)
            self.frames = numpy.stack(
                [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            )
        data = source if isinstance(source, bytes) else source.read_bytes()
        moov, mdat = data.find(b"moov"), data.find(b"mdat")
        self.faststart = 0 <= moov < mdat

    @property
    def size(self) -> tuple[int, int]:
        """Width and height."""
        return self.frames.shape[2], self.frames.shape[1]


def make_clip(root: Path, speed: int) -> VideoClip:
    """A real mp4 (a square moving at ``speed`` px per frame), probed like a fetched input."""
    path = root / f"clip-{speed}.mp4"
    with Mp4Writer(path, 160, 96, fps=24, preset="ultrafast") as writer:
        for i in range(72):
            frame = numpy.zeros((96, 160, 3), numpy.uint8)
            frame[:, :, 2] = 90
            x = (i * speed) % 120
            frame[30:70, x : x + 40] = (240, 200, 40)
            writer.write_rgb(frame)
    return probe_video(path, label="video_urls[0]", max_seconds=60, max_pixels=10**7)


def make_job(
    tmp_path: Path,
    mode: Mode,
    *,
    images: list[Image.Image] | None = None,
    video: VideoClip | None = None,
    image_role: str | None = None,
    seed: int = 7,
    duration: int = 4,
    size: tuple[int, int] = OUT_SIZE,
    name: str = "out",
) -> Job:
    images = images or []
    role = image_role or (("frame" if mode is Mode.FRAME else "reference") if images else None)
    spec = GenerationSpec(
        prompt="a red fox runs through snow",
        mode=mode,
        resolution="720p",
        aspect_ratio="16:9",
        width=size[0],
        height=size[1],
        duration=duration,
        image_urls=tuple(f"https://example.com/{i}.png" for i in range(len(images))),
        video_url="https://example.com/v.mp4" if video is not None else None,
        image_role=role,
        seed=seed,
    )
    return Job(
        task_id=f"task-{name}",
        spec=spec,
        seed=seed,
        images=images,
        video=video,
        output_path=tmp_path / f"{name}.mp4",
    )
