"""The preview engine: every mode to a real mp4 of the requested geometry, checked by decoding."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy
import pytest
from PIL import Image

from omniflash.contract import parse_generation_request
from omniflash.engines import Job, create_engine
from omniflash.engines.preview import PreviewEngine
from omniflash.errors import BadInput, TaskCancelled
from omniflash.media.decode import VideoClip, probe_video
from omniflash.settings import Settings

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 60), (30, 60, 220)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> PreviewEngine:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), x264_preset="ultrafast")
    made = create_engine("preview", settings)
    assert isinstance(made, PreviewEngine)
    made.load()
    return made


def job(
    out: Path,
    *,
    prompt: str = "a red kite over the sea",
    seed: int = 1,
    images: list[Image.Image] | None = None,
    video: VideoClip | None = None,
    **body: Any,
) -> Job:
    request = {"model": "Omni-Flash-Ext", "prompt": prompt, "duration": 4, **body}
    images = images or []
    if images:
        request["image_urls"] = ["https://example.com/x.png"] * len(images)
    if video is not None:
        request["video_urls"] = ["https://example.com/x.mp4"]
        request.pop("duration")
    spec = parse_generation_request(request)
    if video is not None:
        spec = spec.with_duration(max(4, min(10, round(video.duration))))
    return Job("task_test", spec, seed, images, video, out)


def decode(path: Path) -> tuple[numpy.ndarray, Any]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = numpy.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream


def run(engine: PreviewEngine, the_job: Job) -> numpy.ndarray:
    seen: list[float] = []
    result = engine.generate(the_job, seen.append, lambda: False)
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0
    frames, _ = decode(the_job.output_path)
    assert (result.width, result.height, result.frames) == (
        frames.shape[2],
        frames.shape[1],
        frames.shape[0],
    )
    return frames


@pytest.mark.parametrize(
    ("resolution", "aspect", "size"),
    [
        ("720p", "16:9", (1280, 720)),
        ("720p", "9:16", (720, 1280)),
        ("720p", "1:1", (720, 720)),
        ("720p", "4:3", (960, 720)),
        ("720p", "3:4", (720, 960)),
        ("720p", "21:9", (1680, 720)),
        ("1080p", "16:9", (1920, 1080)),
    ],
)
def test_geometry_length_and_format(
    engine: PreviewEngine, tmp_path: Path, resolution: str, aspect: str, size: tuple[int, int]
) -> None:
    out = tmp_path / "out.mp4"
    engine.generate(
        job(out, resolution=resolution, aspect_ratio=aspect), lambda _: None, lambda: False
    )
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == size
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == Fraction(24)
        assert sum(1 for _ in container.decode(stream)) == 4 * 24
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "faststart puts moov first"
    assert not out.with_name("out.mp4.part").exists()


def test_4k_is_3840_by_2160(engine: PreviewEngine, tmp_path: Path) -> None:
    the_job = job(tmp_path / "x.mp4", resolution="4K")
    assert (the_job.spec.width, the_job.spec.height, the_job.spec.frames) == (3840, 2160, 96)
    first = next(iter(engine.frames(the_job)))
    assert first.y.shape == (2160, 3840) and first.u.shape == (1080, 1920)


def test_text_moves_and_depends_on_prompt_and_seed(engine: PreviewEngine, tmp_path: Path) -> None:
    a = run(engine, job(tmp_path / "a.mp4"))
    again = run(engine, job(tmp_path / "again.mp4"))
    other_prompt = run(engine, job(tmp_path / "b.mp4", prompt="a quiet forest in the snow"))
    other_seed = run(engine, job(tmp_path / "c.mp4", seed=2))
    assert numpy.array_equal(a, again), "same prompt and seed, same video"
    moved = numpy.abs(a[0].astype(int) - a[-1].astype(int)).mean()
    assert moved > 5, f"first and last frames barely differ ({moved:.1f})"
    for other in (other_prompt, other_seed):
        assert numpy.abs(a[0].astype(int) - other[0].astype(int)).mean() > 5


def test_prompt_is_drawn(engine: PreviewEngine, tmp_path: Path) -> None:
    frames = run(engine, job(tmp_path / "a.mp4", prompt="W" * 40))
    bottom = frames[0, 600:700].astype(int)
    # White letters on the dark caption band: many near-white and many near-black pixels.
    bright = (bottom.min(axis=2) > 200).sum()
    dark = (bottom.max(axis=2) < 40).sum()
    assert bright > 500 and dark > 5000, (bright, dark)


def halves() -> Image.Image:
    """Left half red, right half blue, 4:3."""
    image = Image.new("RGB", (400, 300), RED)
    image.paste(BLUE, (200, 0, 400, 300))
    return image


def test_frame_mode_starts_on_the_image(engine: PreviewEngine, tmp_path: Path) -> None:
    frames = run(engine, job(tmp_path / "a.mp4", images=[halves()]))
    first = frames[0].astype(int)
    # 4:3 covered into 16:9: the image fills the frame, red on the left, blue on the right.
    assert numpy.abs(first[:, :600] - RED).mean() < 12
    assert numpy.abs(first[:, 680:] - BLUE).mean() < 12
    # The camera pushes in: the red/blue edge stays at the centre, everything else grows.
    last = frames[-1].astype(int)
    assert numpy.abs(last[:, :600] - RED).mean() < 12
    assert not numpy.array_equal(frames[0], frames[-1])


def colour_share(frame: numpy.ndarray, colour: tuple[int, int, int]) -> float:
    near = numpy.abs(frame.astype(int) - colour).max(axis=2) < 40
    return float(near.mean())


def test_reference_images_all_appear(engine: PreviewEngine, tmp_path: Path) -> None:
    cards = [Image.new("RGB", (300, 300), c) for c in (RED, GREEN, BLUE)]
    frames = run(engine, job(tmp_path / "a.mp4", images=cards, generation_type="reference"))
    for colour in (RED, GREEN, BLUE):
        assert colour_share(frames[48], colour) > 0.03, colour
    one = run(engine, job(tmp_path / "b.mp4", images=cards[:1], generation_type="reference"))
    assert colour_share(one[48], RED) > 0.1
    assert colour_share(one[48], GREEN) < 0.01


def clip(tmp_path: Path, seconds: float, fps: int = 12) -> VideoClip:
    """A clip whose brightness counts its frames up."""
    path = tmp_path / f"clip{seconds}.mp4"
    count = round(seconds * fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index in range(count):
            level = 20 + index * 200 // count
            array = numpy.full((120, 160, 3), level, numpy.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        out.mux(stream.encode(None))
    return probe_video(path, label="video_urls[0]", max_seconds=60, max_pixels=10**7)


@pytest.mark.parametrize(("seconds", "expected"), [(5.0, 5), (2.0, 4), (12.5, 10)])
def test_video_is_retimed_to_the_output_length(
    engine: PreviewEngine, tmp_path: Path, seconds: float, expected: int
) -> None:
    source = clip(tmp_path, seconds)
    frames = run(engine, job(tmp_path / "a.mp4", video=source))
    assert len(frames) == expected * 24
    levels = frames[:, 300:400, 500:700].mean(axis=(1, 2, 3))
    # The whole clip, start to end, spread over the output: brightness climbs steadily.
    assert levels[0] < 40 and levels[-1] > 190
    assert numpy.all(numpy.diff(levels) > -3)


def test_video_with_reference_images_shows_them(engine: PreviewEngine, tmp_path: Path) -> None:
    source = clip(tmp_path, 4.0)
    the_job = job(
        tmp_path / "a.mp4",
        video=source,
        images=[Image.new("RGB", (200, 200), GREEN)],
        generation_type="reference",
    )
    frames = run(engine, the_job)
    assert colour_share(frames[10], GREEN) > 0.01


def test_cancel_stops_and_leaves_no_file(engine: PreviewEngine, tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    checks = iter(range(1000))
    with pytest.raises(TaskCancelled):
        engine.generate(job(out), lambda _: None, lambda: next(checks) >= 10)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_estimate_grows_with_size(engine: PreviewEngine, tmp_path: Path) -> None:
    small = engine.estimate_seconds(job(tmp_path / "a", resolution="720p").spec)
    large = engine.estimate_seconds(job(tmp_path / "a", resolution="4k", duration=10).spec)
    assert 0 < small < large


def test_a_render_error_fails_the_job_and_leaves_no_file(
    engine: PreviewEngine, tmp_path: Path
) -> None:
    source = clip(tmp_path, 4.0)
    source.path.write_bytes(b"no longer a video")
    out = tmp_path / "out" / "a.mp4"
    with pytest.raises(BadInput, match=r"video_urls\[0\]"):
        engine.generate(job(out, video=source), lambda _: None, lambda: False)
    assert not out.parent.exists() or not list(out.parent.iterdir())
