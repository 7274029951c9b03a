"""The preview engine's previews: a few per task, small, and the last one is the video's end.

"Recognisably the final video" is measured as the mean absolute difference of 64×36
grayscale thumbnails (0–255): at most ``SAME`` between the last preview and the video's
last decoded frame, while the last frame of another prompt's video is further than that.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy
import pytest
from PIL import Image

from omniflash.contract import parse_generation_request
from omniflash.engines import Job, create_engine
from omniflash.engines.base import PREVIEW_WIDTH
from omniflash.engines.preview import PreviewEngine, preview_every
from omniflash.settings import Settings
from omniflash.worker.child import encode_preview

SAME = 4.0
"""Thumbnail difference up to which two pictures are the same shot (WebP and H.264 each
blur a little).  Measured on three prompts: 0.7–0.8 for the last preview against the last
frame; 9–14 for the same video's first frame (the camera has moved); 19–24 for another
prompt's last frame."""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> PreviewEngine:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), x264_preset="ultrafast")
    made = create_engine("preview", settings)
    assert isinstance(made, PreviewEngine)
    made.load()
    return made


def thumbnail(picture: Image.Image) -> numpy.ndarray:
    return numpy.asarray(picture.convert("L").resize((64, 36), Image.Resampling.BOX), float)


def difference(a: Image.Image, b: Image.Image) -> float:
    return float(numpy.abs(thumbnail(a) - thumbnail(b)).mean())


def last_frame(path: Path) -> Image.Image:
    with av.open(str(path)) as container:
        frames = list(container.decode(container.streams.video[0]))
        return frames[-1].to_image()


def run(
    engine: PreviewEngine, out: Path, prompt: str, seed: int, **body: object
) -> list[Image.Image]:
    request = {"model": "Omni-Flash-Ext", "prompt": prompt, "duration": 4, **body}
    spec = parse_generation_request(request)
    seen: list[Image.Image] = []
    job = Job("task_test", spec, seed, [], None, out, preview=seen.append)
    engine.generate(job, lambda _f: None, lambda: False)
    return seen


def test_previews_come_every_few_frames_and_fit_320(engine: PreviewEngine, tmp_path: Path) -> None:
    seen = run(engine, tmp_path / "a.mp4", "a red kite over the sea", 1, resolution="720p")
    frames = 4 * 24
    every = preview_every(frames)
    assert len(seen) == frames // every + (frames % every != 0)
    assert {p.size for p in seen} == {(320, 180)}
    assert all(p.mode == "RGB" for p in seen)
    # The camera moves: the previews are not one picture sent again.
    assert difference(seen[0], seen[-1]) > 1.0


def test_the_last_preview_is_the_videos_last_frame(engine: PreviewEngine, tmp_path: Path) -> None:
    ours = run(engine, tmp_path / "a.mp4", "a red kite over the sea", 1)
    other = run(engine, tmp_path / "b.mp4", "a night city in the rain", 9)
    final = last_frame(tmp_path / "a.mp4")
    data, width, height = encode_preview(ours[-1])
    sent = Image.open(io.BytesIO(data))
    assert sent.format == "WEBP" and sent.size == (width, height) == ours[-1].size
    assert difference(sent, final) <= SAME
    # The measure tells shots apart: another video's end, and this one's start, are not it.
    assert difference(other[-1], final) > SAME
    assert difference(ours[0], final) > SAME
    assert difference(last_frame(tmp_path / "b.mp4"), final) > SAME


def test_a_preview_is_webp_at_most_320_wide_and_640_tall() -> None:
    for size, expected in [
        ((1920, 1080), (320, 180)),
        ((1080, 1920), (320, 568)),
        ((200, 2000), (64, 640)),
        ((64, 48), (64, 48)),
    ]:
        data, width, height = encode_preview(Image.new("RGBA", size, (10, 200, 30, 255)))
        decoded = Image.open(io.BytesIO(data))
        decoded.load()
        assert decoded.format == "WEBP" and decoded.size == (width, height) == expected
        assert width <= PREVIEW_WIDTH and height <= 2 * PREVIEW_WIDTH
        assert len(data) < 16 * 1024


def test_no_preview_wanted_costs_nothing(engine: PreviewEngine, tmp_path: Path) -> None:
    spec = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a boat"})
    job = Job("task_test", spec, 1, [], None, tmp_path / "c.mp4")
    assert job.preview is None
    engine.generate(job, lambda _f: None, lambda: False)
    assert (tmp_path / "c.mp4").stat().st_size > 0
