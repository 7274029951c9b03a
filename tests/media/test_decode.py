"""Decoding input images and videos from their bytes, with limits."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy
import pytest
from PIL import Image

from omniflash.errors import BadInput
from omniflash.media.decode import VideoClip, decode_image, probe_video

LIMIT = 40_000_000
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def halves(
    size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]
) -> Image.Image:
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decodes_common_formats_to_rgb(fmt: str) -> None:
    data = encoded(halves((40, 20), RED, BLUE), fmt)
    image = decode_image(data, label="image_urls[0]", max_pixels=LIMIT)
    assert image.mode == "RGB"
    assert image.size == (40, 20)
    left, right = image.getpixel((5, 10)), image.getpixel((35, 10))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[0] > 200 and left[2] < 60
    assert right[2] > 200 and right[0] < 60


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: show it turned 90° clockwise
    data = encoded(halves((40, 20), RED, BLUE), "JPEG", exif=exif.tobytes())
    image = decode_image(data, label="image_urls[0]", max_pixels=LIMIT)
    assert image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and bottom[2] > 200


def test_transparency_becomes_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 5, 10))
    decoded = decode_image(encoded(image, "PNG"), label="image_urls[0]", max_pixels=LIMIT)
    assert decoded.getpixel((8, 5)) == (255, 255, 255)
    assert decoded.getpixel((2, 5)) == (0, 0, 255)


def test_pixel_limit_is_inclusive() -> None:
    data = encoded(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, label="image_urls[0]", max_pixels=10_000).size == (100, 100)
    with pytest.raises(BadInput, match=r"^image_urls\[2\]: 100×100 is more than the limit"):
        decode_image(data, label="image_urls[2]", max_pixels=9_999)


@pytest.mark.parametrize(
    "size",
    [
        (8000, 6000),  # 48 MP: over our limit, under Pillow's
        (10_000, 10_000),  # 100 MP: where Pillow would warn
        (100_000, 100_000),  # 10 GP: where Pillow would raise
    ],
)
def test_decompression_bombs_are_refused_from_the_header(size: tuple[int, int]) -> None:
    data = png_declaring(*size)
    assert len(data) < 200
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: .*more than the limit of 40 megapixels"):
        decode_image(data, label="image_urls[0]", max_pixels=LIMIT)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not an image, whatever its Content-Type said\n",
        bytes(range(256)) * 8,
        encoded(Image.new("RGB", (64, 64), RED), "PNG")[:80],
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
    ],
    ids=["empty", "text", "noise", "truncated-png", "eps", "svg"],
)
def test_undecodable_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(BadInput, match=r"^image_urls\[1\]: not a decodable image$"):
        decode_image(data, label="image_urls[1]", max_pixels=LIMIT)


# --- video -------------------------------------------------------------------------------


def band_frame(width: int, height: int, brightness: int = 255) -> numpy.ndarray:
    """Three vertical bands, red | green | blue."""
    frame = numpy.zeros((height, width, 3), numpy.uint8)
    third = width // 3
    frame[:, :third, 0] = brightness
    frame[:, third : 2 * third, 1] = brightness
    frame[:, 2 * third :, 2] = brightness
    return frame


def write_video(
    path: Path,
    *,
    frames: int = 12,
    fps: int = 12,
    size: tuple[int, int] = (96, 48),
    codec: str = "libx264",
    rotation: int = 0,
) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for index in range(frames):
            brightness = 80 + (175 * index) // max(1, frames - 1)
            image = band_frame(size[0], size[1], brightness)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def probe(path: Path, **limits: float) -> VideoClip:
    return probe_video(
        path,
        label="video_urls[0]",
        max_seconds=limits.get("max_seconds", 60.0),
        max_pixels=int(limits.get("max_pixels", LIMIT)),
    )


def test_probe_reads_geometry_rate_and_length(mp4: Path) -> None:
    clip = probe(mp4)
    assert (clip.width, clip.height) == (96, 48)
    assert clip.fps == pytest.approx(12.0)
    assert clip.duration == pytest.approx(1.0, abs=0.05)
    assert clip.frame_count == 12
    assert clip.path == mp4


def test_probe_counts_frames_when_the_container_does_not_say(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mkv", frames=17, fps=10)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    clip = probe(path)
    assert clip.frame_count == 17
    assert clip.duration == pytest.approx(1.7, abs=0.05)
    assert len(list(clip.iter_frames())) == 17


def test_probe_refuses_long_videos(mp4: Path) -> None:
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: longer than the limit of 0.5 s$"):
        probe(mp4, max_seconds=0.5)


def test_probe_refuses_long_videos_without_declared_length(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mkv", frames=30, fps=10)
    with pytest.raises(BadInput, match="longer than the limit of 2 s"):
        probe(path, max_seconds=2)


def test_probe_refuses_large_frames(mp4: Path) -> None:
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: 96×48 is more than the limit"):
        probe(mp4, max_pixels=96 * 48 - 1)


def test_probe_refuses_files_without_video(tmp_path: Path) -> None:
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(numpy.zeros((1, 800), numpy.int16), layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: has no video stream$"):
        probe(path)


@pytest.mark.parametrize("cut", ["garbage", "truncated"])
def test_probe_refuses_corrupt_files(mp4: Path, tmp_path: Path, cut: str) -> None:
    path = tmp_path / "bad.mp4"
    data = mp4.read_bytes()
    path.write_bytes(b"\0garbage" * 500 if cut == "garbage" else data[: len(data) // 2])
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: not a decodable video$"):
        probe(path)


def test_iter_frames_yields_every_frame_in_order(mp4: Path) -> None:
    clip = probe(mp4)
    frames = list(clip.iter_frames())
    assert len(frames) == clip.frame_count
    assert all(f.shape == (48, 96, 3) and f.dtype == numpy.uint8 for f in frames)
    brightness = [float(f[:, 40:56, 1].mean()) for f in frames]
    assert brightness == sorted(brightness)
    assert brightness[-1] - brightness[0] > 100


@pytest.mark.parametrize(
    ("size", "bands"),
    [
        ((16, 48), "G"),  # crops the sides: only the middle band is left
        ((32, 96), "G"),  # scales up 2x, then crops the sides
        ((96, 24), "RGB"),  # crops top and bottom: every band stays
        ((192, 32), "RGB"),  # scales up 2x, then crops top and bottom
    ],
)
def test_iter_frames_covers_and_centre_crops(mp4: Path, size: tuple[int, int], bands: str) -> None:
    clip = probe(mp4)
    last = list(clip.iter_frames(size))[-1]
    width, height = size
    assert last.shape == (height, width, 3)
    assert last.flags["C_CONTIGUOUS"]
    if bands == "G":
        mean = last.reshape(-1, 3).mean(axis=0)
        assert mean[1] > 200 and mean[0] < 40 and mean[2] < 40
    else:
        edge = width // 12
        assert last[:, :edge, 0].mean() > 200
        assert last[:, width // 2 - edge : width // 2 + edge, 1].mean() > 200
        assert last[:, -edge:, 2].mean() > 200


def test_iter_frames_can_stop_early(mp4: Path) -> None:
    frames = probe(mp4).iter_frames((32, 32))
    first = next(frames)
    del frames  # the generator closes its container when dropped mid-way
    assert first.shape == (32, 32, 3)


def test_rotated_video_is_shown_upright(tmp_path: Path) -> None:
    # Display matrix: turn 90° counter-clockwise, so the stored left band ends at the bottom.
    path = write_video(tmp_path / "phone.mp4", frames=4, size=(96, 48), rotation=90)
    clip = probe(path)
    assert (clip.width, clip.height) == (48, 96)
    full = list(clip.iter_frames())[-1]
    assert full.shape == (96, 48, 3)
    assert full[-20:, :, 0].mean() > 200 and full[:20, :, 2].mean() > 200
    fitted = list(clip.iter_frames((24, 48)))[-1]
    assert fitted.shape == (48, 24, 3)
    assert fitted[-8:, :, 0].mean() > 200


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_decodes_without_warnings(fmt: str) -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 5, 10))
    decoded = decode_image(
        encoded(image, fmt, transparency=0), label="image_urls[0]", max_pixels=LIMIT
    )
    assert decoded.getpixel((2, 5)) == (0, 0, 255)
    assert decoded.getpixel((8, 5)) == (255, 255, 255)


def test_corrupt_exif_decodes_without_warnings() -> None:
    data = encoded(Image.new("RGB", (16, 8), RED), "JPEG", exif=b"Exif\0\0II*\0\xff\xff\xff\x7f")
    assert decode_image(data, label="image_urls[0]", max_pixels=LIMIT).size == (16, 8)
