"""The MP4 box reader: omniflash's own files pass, other files are named, hostile ones refused."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniflash.contract import GenerationSpec, parse_generation_request
from omniflash.media.encode import Mp4Writer
from omniflash.media.mp4check import (
    MAX_MOOV_BYTES,
    Mp4Summary,
    ResultRejected,
    check_result,
    read_mp4,
    reader_for_file,
    result_seconds,
)
from tests.remote.videos import mp4_bytes, png_bytes


def spec(width: int = 128, height: int = 72, duration: int | None = 4) -> GenerationSpec:
    base = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4})
    return dataclasses.replace(base, width=width, height=height, duration=duration)


def summary(data: bytes) -> Mp4Summary:
    """The summary, reading only through ``read`` (which counts the bytes it hands out)."""
    return read_mp4(lambda offset, size: data[offset : offset + size], len(data))


def test_the_encoders_own_file_passes_reading_only_its_head(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with Mp4Writer(path, 128, 72, fps=24, preset="ultrafast") as writer:
        for n in range(96):
            writer.write_rgb(numpy.full((72, 128, 3), n, numpy.uint8))
    reads: list[int] = []
    read = reader_for_file(path)

    def counted(offset: int, size: int) -> bytes:
        data = read(offset, size)
        reads.append(len(data))
        return data

    info = read_mp4(counted, path.stat().st_size)
    assert (info.codec, info.width, info.height, info.frames, info.fps) == (
        "avc1",
        128,
        72,
        96,
        24,
    )
    check_result(info, spec())
    assert result_seconds(info, spec()) == 4
    assert len(reads) <= 6 and sum(reads) < 16 * 1024, reads


def test_the_preview_geometry_passes_and_a_frame_either_way_is_tolerated() -> None:
    check_result(summary(mp4_bytes(1280, 720, 96)), spec(1280, 720))
    check_result(summary(mp4_bytes(1280, 720, 95)), spec(1280, 720))
    check_result(summary(mp4_bytes(1280, 720, 97)), spec(1280, 720))
    with pytest.raises(ResultRejected, match="94 frames, the task asked for 96"):
        check_result(summary(mp4_bytes(1280, 720, 94)), spec(1280, 720))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda: mp4_bytes(64, 64, 4), "64×64, the task asked for 1280×720"),
        (lambda: mp4_bytes(1280, 720, 96, faststart=False), "not faststart"),
        (lambda: mp4_bytes(1280, 720, 96, codec="mpeg4"), "not H.264"),
        (lambda: mp4_bytes(1280, 720, 120, 30), "30.000 fps, not 24"),
        (lambda: mp4_bytes(1280, 720, 48), "48 frames"),
        (lambda: bytes(4096), "does not begin with an `ftyp` box"),
        (png_bytes, "claims"),
        (lambda: b"", "no `moov`"),
    ],
)
def test_files_that_are_not_the_asked_video_are_named(data: object, message: str) -> None:
    assert callable(data)
    with pytest.raises(ResultRejected, match=message):
        check_result(summary(data()), spec(1280, 720))


def test_a_reference_video_task_takes_whole_seconds_from_4_to_10() -> None:
    free = spec(128, 72, duration=None)
    info = summary(mp4_bytes(128, 72, 7 * 24))
    check_result(info, free)
    assert result_seconds(info, free) == 7
    for frames in (3 * 24, 11 * 24, 7 * 24 + 12):
        with pytest.raises(ResultRejected, match="whole number of seconds from 4 to 10"):
            check_result(summary(mp4_bytes(128, 72, frames)), free)


def test_every_truncation_of_a_good_file_is_refused_or_read_whole() -> None:
    data = mp4_bytes(128, 72, 24)
    whole = summary(data)
    moov_end = data.index(b"mdat") + 4
    for cut in range(0, moov_end + 16):
        try:
            got = summary(data[:cut])
        except ResultRejected:
            continue
        assert got == whole and cut >= moov_end  # only a cut inside the media data


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


FTYP = _box(b"ftyp", b"isom\x00\x00\x02\x00isomavc1")
MDAT = _box(b"mdat", b"x")


def _nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = _box(b"stbl", inner)
    return _box(b"moov", _box(b"trak", inner))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # A box that claims more than the file holds, as a 32-bit and a 64-bit size.
        (FTYP + struct.pack(">I4s", 0xFFFFFFFF, b"moov"), "claims 4294967295 bytes"),
        (FTYP + struct.pack(">I4sQ", 1, b"moov", 2**64 - 1), "claims"),
        (FTYP + struct.pack(">I4s", 3, b"moov"), "claims 3 bytes"),
        # A moov over the limit is refused before it is read.
        (
            FTYP + struct.pack(">I4s", MAX_MOOV_BYTES + 9, b"moov") + bytes(MAX_MOOV_BYTES + 1),
            "larger than",
        ),
        # Containers nested without end.
        (FTYP + _nested(200) + MDAT, "nested deeper"),
        # An stts whose entry count is far beyond its bytes.
        (
            FTYP + _box(b"moov", _box(b"trak", _box(b"stts", bytes(4) + b"\xff" * 4))) + MDAT,
            "shorter",
        ),
        (FTYP + _box(b"moov", b"") + _box(b"mdat", b""), "no video track"),
        (FTYP + _box(b"mdat", b"x") + _box(b"moov", b""), "not faststart"),
    ],
)
def test_hostile_boxes_are_refused_without_large_reads(data: bytes, message: str) -> None:
    asked: list[int] = []

    def read(offset: int, size: int) -> bytes:
        asked.append(size)
        return data[offset : offset + size]

    with pytest.raises(ResultRejected, match=message):
        read_mp4(read, len(data))
    assert max(asked) <= MAX_MOOV_BYTES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_by_name(data: bytes) -> None:
    try:
        info = summary(FTYP + data)
    except ResultRejected:
        return
    assert isinstance(info, Mp4Summary)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_good_file_with_bytes_changed_never_raises_anything_else(data: st.DataObject) -> None:
    good = bytearray(mp4_bytes(128, 72, 24))
    head = good.index(b"mdat") + 4
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, head - 1))
        good[at] = data.draw(st.integers(0, 255))
    try:
        info = summary(bytes(good))
        check_result(info, spec(128, 72, 1))
    except ResultRejected:
        pass


@pytest.mark.parametrize(("seconds", "expected"), [(5.0, 5), (12.5, 10)])
def test_the_preview_engines_reference_video_output_passes(
    tmp_path: Path, seconds: float, expected: int
) -> None:
    from omniflash.engines import create_engine
    from omniflash.settings import Settings
    from tests.engines.test_preview import clip, job

    engine = create_engine("preview", Settings(data_dir=tmp_path / "d", x264_preset="ultrafast"))
    engine.load()
    the_job = job(tmp_path / "out.mp4", video=clip(tmp_path, seconds))
    engine.generate(the_job, lambda _: None, lambda: False)
    asked = dataclasses.replace(the_job.spec, duration=None)  # as the task row holds it
    info = read_mp4(reader_for_file(the_job.output_path), the_job.output_path.stat().st_size)
    check_result(info, asked)
    assert result_seconds(info, asked) == expected
