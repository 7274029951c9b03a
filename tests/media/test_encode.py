"""Mp4Writer and probe_mp4: real files, checked by decoding them."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy
import pytest

from omniflash.media.encode import Mp4Writer, YuvFrame, probe_mp4


def gradient(width: int, height: int, shift: int) -> numpy.ndarray:
    xs = numpy.linspace(0, 255, width, dtype=numpy.float32)
    row = ((xs + shift) % 256).astype(numpy.uint8)
    rgb = numpy.empty((height, width, 3), numpy.uint8)
    rgb[..., 0] = row
    rgb[..., 1] = 128
    rgb[..., 2] = row[::-1]
    return rgb


def test_rgb_frames_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    with Mp4Writer(out, 320, 240, preset="ultrafast", crf=12) as writer:
        for index in range(30):
            writer.write_rgb(gradient(320, 240, index * 4))
    info = probe_mp4(out)
    assert (info.width, info.height, info.frames, info.fps) == (320, 240, 30, Fraction(24))
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert info.duration == pytest.approx(30 / 24, abs=0.05)
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        context = container.streams.video[0].codec_context
        # Tagged as the BT.601 limited range that swscale converted with.
        assert context.color_range == 1 and context.colorspace == 6
    error = numpy.abs(decoded[7].astype(int) - gradient(320, 240, 28).astype(int)).mean()
    assert error < 4, error
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def test_yuv_planes_are_written_as_given(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    with Mp4Writer(out, 64, 48, preset="ultrafast", crf=0) as writer:
        for level in (16, 128, 235):
            frame = YuvFrame.blank(64, 48)
            frame.y[...], frame.u[...], frame.v[...] = level, 128, 128
            writer.write_frame(frame)
        writer.write_yuv(
            numpy.full((48, 64), 90, numpy.uint8),
            numpy.full((24, 32), 128, numpy.uint8),
            numpy.full((24, 32), 128, numpy.uint8),
        )
    with av.open(str(out)) as container:
        lumas = [int(f.to_ndarray()[:48].mean()) for f in container.decode(video=0)]
    assert lumas == [16, 128, 235, 90]


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "a.mp4", 321, 240)
    with Mp4Writer(tmp_path / "b.mp4", 64, 48, preset="ultrafast") as writer:
        with pytest.raises(ValueError, match="shape"):
            writer.write_rgb(numpy.zeros((48, 62, 3), numpy.uint8))
        with pytest.raises(ValueError, match="64×48"):
            writer.write_frame(YuvFrame.blank(32, 48))
        writer.write_rgb(numpy.zeros((48, 64, 3), numpy.uint8))
    assert probe_mp4(tmp_path / "b.mp4").frames == 1


def test_failure_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    with pytest.raises(RuntimeError), Mp4Writer(out, 64, 48, preset="ultrafast") as writer:
        writer.write_rgb(numpy.zeros((48, 64, 3), numpy.uint8))
        assert not out.exists()
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_file_appears_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    writer = Mp4Writer(out, 64, 48, preset="ultrafast").open()
    writer.write_rgb(numpy.zeros((48, 64, 3), numpy.uint8))
    assert not out.exists()
    writer.close()
    assert out.exists() and not writer.partial_path.exists()
    writer.close()  # a second close is harmless
