"""Checking a worker's result file against its task, from the MP4 boxes at its head.

The API process checks every result before a task is ``completed``: it must be an
MP4 whose ``moov`` box comes before ``mdat`` (faststart), with exactly one video
track, H.264 (``avc1``/``avc3``), of the requested width and height, at the requested
frame rate, holding the expected number of frames.  Only the box headers and the
``moov`` box are read (a few kilobytes for the videos omniflash makes), through a
``read(offset, size)`` callable, so a file in a bucket is checked with a few ranged
reads and without importing PyAV into the API process::

    info = read_mp4(reader_for_file(path), path.stat().st_size)
    check_result(info, spec)          # ResultRejected when it is not the asked video

Every size in the file is checked before anything is read or allocated: a hostile
file gets ``ResultRejected``, never another exception or a large allocation.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

from omniflash.contract import VIDEO_SECONDS_RANGE, GenerationSpec

__all__ = [
    "FRAME_TOLERANCE",
    "MAX_MOOV_BYTES",
    "Mp4Summary",
    "ResultRejected",
    "check_result",
    "read_mp4",
    "reader_for_file",
    "result_seconds",
]

FRAME_TOLERANCE = 1
"""Frames a result may have more or fewer than ``duration × fps`` (an encoder's rounding)."""
FPS_TOLERANCE = 0.01
"""The relative difference allowed between the file's frame rate and the requested one."""
MAX_MOOV_BYTES = 4 * 1024 * 1024
"""The largest ``moov`` read; omniflash's own are a few kilobytes (10 s at 24 fps)."""
MAX_TOP_BOXES = 64
"""Top-level boxes looked at before ``moov``; a real file has two or three."""
VIDEO_CODECS = (b"avc1", b"avc3")
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
_LEAVES = {b"mdhd", b"hdlr", b"stsd", b"stts", b"stsz"}
MAX_DEPTH = 6
"""trak › mdia › minf › stbl is four levels deep."""

Reader = Callable[[int, int], bytes]
"""``read(offset, size)``: up to ``size`` bytes of the file from ``offset``."""


class ResultRejected(Exception):
    """The file is not the video the task asked for; the message says why."""


@dataclasses.dataclass(frozen=True)
class Mp4Summary:
    """What the boxes say about the one video track."""

    codec: str
    width: int
    height: int
    frames: int
    fps: Fraction
    video_tracks: int


def reader_for_file(path: Path) -> Reader:
    """A ``Reader`` over a local file (opened for each read: checks are a few reads)."""

    def read(offset: int, size: int) -> bytes:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    return read


def read_mp4(read: Reader, size: int) -> Mp4Summary:
    """The video track's summary, from the file's top-level boxes and its ``moov``.

    Raises ``ResultRejected`` when the file is not a faststart MP4 with one video track.
    """
    moov: bytes | None = None
    seen_mdat = False
    offset = 0
    for _n in range(MAX_TOP_BOXES):
        if offset >= size:
            break
        kind, start, end = _top_box(read, offset, size)
        if offset == 0 and kind != b"ftyp":
            raise ResultRejected("not an MP4 file: it does not begin with an `ftyp` box")
        if kind == b"mdat":
            if moov is None:
                raise ResultRejected("not faststart: the `mdat` box comes before `moov`")
            seen_mdat = True
            break
        if kind == b"moov":
            if end - start > MAX_MOOV_BYTES:
                raise ResultRejected(f"the `moov` box is larger than {MAX_MOOV_BYTES} bytes")
            moov = read(start, end - start)
            if len(moov) != end - start:
                raise ResultRejected("the file ended inside its `moov` box")
        offset = end
    if moov is None:
        raise ResultRejected("no `moov` box at the head of the file")
    if not seen_mdat:
        raise ResultRejected("no `mdat` box after `moov`: the file holds no media data")
    return _summary(moov)


def check_result(info: Mp4Summary, spec: GenerationSpec) -> None:
    """``ResultRejected`` unless ``info`` is the video ``spec`` asks for.

    A spec without a duration (a reference video's length decides) allows any whole
    number of seconds in ``VIDEO_SECONDS_RANGE``.
    """
    if info.video_tracks != 1:
        raise ResultRejected(f"the file has {info.video_tracks} video tracks, not one")
    if info.codec.encode() not in VIDEO_CODECS:
        raise ResultRejected(f"the video is {info.codec!r}, not H.264 (avc1)")
    if (info.width, info.height) != (spec.width, spec.height):
        raise ResultRejected(
            f"the video is {info.width}×{info.height}, the task asked for "
            f"{spec.width}×{spec.height}"
        )
    if abs(info.fps - spec.fps) > spec.fps * FPS_TOLERANCE:
        raise ResultRejected(f"the video runs at {float(info.fps):.3f} fps, not {spec.fps}")
    if spec.duration is not None:
        expected = spec.duration * spec.fps
        if abs(info.frames - expected) > FRAME_TOLERANCE:
            raise ResultRejected(
                f"the video has {info.frames} frames, the task asked for {expected} "
                f"({spec.duration} s at {spec.fps} fps)"
            )
        return
    low, high = VIDEO_SECONDS_RANGE
    seconds = round(info.frames / spec.fps)
    if not low <= seconds <= high or abs(info.frames - seconds * spec.fps) > FRAME_TOLERANCE:
        raise ResultRejected(
            f"the video has {info.frames} frames: not a whole number of seconds "
            f"from {low} to {high} at {spec.fps} fps"
        )


def result_seconds(info: Mp4Summary, spec: GenerationSpec) -> int:
    """The seconds a checked result is billed for: its frames at the requested rate."""
    return round(info.frames / spec.fps)


# -- boxes ---------------------------------------------------------------------------------


def _top_box(read: Reader, offset: int, size: int) -> tuple[bytes, int, int]:
    """The type, payload start and end of the top-level box at ``offset``."""
    head = read(offset, 16)
    if len(head) < 8:
        raise ResultRejected(f"the file ends inside a box header at byte {offset}")
    length, kind = struct.unpack(">I4s", head[:8])
    start = offset + 8
    if length == 1:
        if len(head) < 16:
            raise ResultRejected(f"the file ends inside a box header at byte {offset}")
        (length,) = struct.unpack(">Q", head[8:16])
        start = offset + 16
    elif length == 0:
        length = size - offset
    if length < start - offset or offset + length > size:
        raise ResultRejected(
            f"the box {_name(kind)} at byte {offset} claims {length} bytes; "
            f"the file has {size - offset} from there"
        )
    return kind, start, offset + length


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The boxes inside ``data[start:end]``: (type, payload start, payload end)."""
    offset = start
    while offset + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if length == 1:
            if offset + 16 > end:
                raise ResultRejected("a box header runs past its parent")
            (length,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif length == 0:
            length = end - offset
        if length < header or offset + length > end:
            raise ResultRejected(f"the box {_name(kind)} runs past its parent")
        yield kind, offset + header, offset + length
        offset += length


@dataclasses.dataclass
class _Track:
    handler: bytes = b""
    timescale: int = 0
    codec: bytes = b""
    width: int = 0
    height: int = 0
    samples: int | None = None
    timed: int = 0
    """Samples the ``stts`` runs add up to."""
    run: tuple[int, int] = (0, 0)
    """The ``stts`` run (count, delta) that holds the most samples."""


def _summary(moov: bytes) -> Mp4Summary:
    traks = [_track(moov, s, e) for kind, s, e in _children(moov, 0, len(moov)) if kind == b"trak"]
    videos = [t for t in traks if t.handler == b"vide"]
    if not videos:
        raise ResultRejected("the file has no video track")
    video = videos[0]
    if video.samples is None or not video.timed or video.timescale <= 0:
        raise ResultRejected("the video track has no sample table (`stsz`, `stts`, `mdhd`)")
    if video.timed != video.samples:
        raise ResultRejected("the video track's `stts` and `stsz` disagree on its frames")
    # The rate of the run that holds most frames: an encoder may end on a shorter one.
    _count, delta = video.run
    if delta <= 0:
        raise ResultRejected("the video track has a zero frame duration")
    return Mp4Summary(
        codec=video.codec.decode("latin-1"),
        width=video.width,
        height=video.height,
        frames=video.samples,
        fps=Fraction(video.timescale, delta),
        video_tracks=len(videos),
    )


def _track(data: bytes, start: int, end: int) -> _Track:
    track = _Track()
    _walk(data, start, end, track, depth=0)
    return track


def _walk(data: bytes, start: int, end: int, track: _Track, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ResultRejected(f"boxes nested deeper than {MAX_DEPTH} levels")
    for kind, s, e in _children(data, start, end):
        if kind in _CONTAINERS:
            _walk(data, s, e, track, depth + 1)
            continue
        body = data[s:e] if kind in _LEAVES else b""
        if kind == b"mdhd":
            _mdhd(body, track)
        elif kind == b"hdlr":
            _need(body, 12, kind)
            track.handler = body[8:12]
        elif kind == b"stsd":
            _stsd(body, track)
        elif kind == b"stts":
            _stts(body, track)
        elif kind == b"stsz":
            _need(body, 12, kind)
            (track.samples,) = struct.unpack_from(">I", body, 8)


def _mdhd(body: bytes, track: _Track) -> None:
    _need(body, 4, b"mdhd")
    at = 20 if body[0] == 1 else 12  # version 1 has 64-bit creation and modification times
    _need(body, at + 4, b"mdhd")
    (track.timescale,) = struct.unpack_from(">I", body, at)


def _stsd(body: bytes, track: _Track) -> None:
    # Full box header, entry count, then the first sample entry: size, type, 6 reserved
    # bytes, the data reference index, 16 bytes of the visual entry, width and height.
    _need(body, 8 + 8 + 8 + 16 + 4, b"stsd")
    (entries,) = struct.unpack_from(">I", body, 4)
    if entries != 1:
        raise ResultRejected(f"the track has {entries} sample descriptions, not one")
    track.codec = body[12:16]
    track.width, track.height = struct.unpack_from(">HH", body, 8 + 8 + 8 + 16)


def _stts(body: bytes, track: _Track) -> None:
    _need(body, 8, b"stts")
    (entries,) = struct.unpack_from(">I", body, 4)
    if 8 + 8 * entries > len(body):
        raise ResultRejected("the `stts` box is shorter than its entry count")
    track.timed, track.run = 0, (0, 0)
    for count, delta in struct.iter_unpack(">II", body[8 : 8 + 8 * entries]):
        track.timed += count
        track.run = max(track.run, (count, delta))


def _need(body: bytes, size: int, kind: bytes) -> None:
    if len(body) < size:
        raise ResultRejected(f"the {_name(kind)} box is too short")


def _name(kind: bytes) -> str:
    return "`" + kind.decode("latin-1").encode("unicode_escape").decode("ascii") + "`"
