"""A task's inputs fetched and decoded under the settings' limits."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy
import pytest
from PIL import Image

from omniflash.contract import GenerationSpec, parse_generation_request
from omniflash.errors import BadInput
from omniflash.media.decode import VideoClip
from omniflash.media.task_inputs import clip_seconds, fetch_inputs
from omniflash.settings import Settings


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def mp4(seconds: float, fps: int = 8, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(round(seconds * fps)):
            array = numpy.full((size[1], size[0], 3), index * 9 % 256, numpy.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


FILES = {
    "/red.png": png((30, 20), (255, 0, 0)),
    "/green.png": png((20, 30), (0, 255, 0)),
    "/text.png": b"definitely not a picture",
    "/short.mp4": mp4(1.5),
    "/long.mp4": mp4(3.0),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = FILES.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "allow_private_urls": True}
    values.update(overrides)
    return Settings(**values)


def spec(images: list[str] | None = None, video: str | None = None) -> GenerationSpec:
    body: dict[str, Any] = {"model": "Omni-Flash-Ext", "prompt": "a test"}
    if images:
        body["image_urls"] = images
    if video:
        body["video_urls"] = [video]
    return parse_generation_request(body)


def test_images_come_back_decoded_in_order(base: str, tmp_path: Path) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(png((8, 8), (0, 0, 255))).decode()
    images, clip = fetch_inputs(
        spec([f"{base}/red.png", data_uri, f"{base}/green.png"]), tmp_path, settings(tmp_path)
    )
    assert clip is None
    assert [image.size for image in images] == [(30, 20), (8, 8), (20, 30)]
    assert [image.getpixel((1, 1)) for image in images] == [(255, 0, 0), (0, 0, 255), (0, 255, 0)]


def test_reference_video_is_downloaded_and_probed(base: str, tmp_path: Path) -> None:
    images, clip = fetch_inputs(
        spec([f"{base}/red.png"], video=f"{base}/short.mp4"), tmp_path, settings(tmp_path)
    )
    assert len(images) == 1
    assert clip is not None
    assert clip.path.parent == tmp_path
    assert clip.path.read_bytes() == FILES["/short.mp4"]
    assert (clip.width, clip.height, clip.frame_count) == (64, 48, 12)
    assert clip.duration == pytest.approx(1.5, abs=0.05)
    assert len(list(clip.iter_frames((32, 32)))) == 12


def test_private_addresses_are_refused_by_default(base: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: address 127\.0\.0\.1 is not public$"):
        fetch_inputs(spec([f"{base}/red.png"]), tmp_path, Settings(data_dir=tmp_path))


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["/red.png", "/missing.png", "/green.png"], r"^image_urls\[1\]: HTTP 404$"),
        (["/red.png", "/green.png", "/text.png"], r"^image_urls\[2\]: not a decodable image$"),
    ],
)
def test_failures_name_the_input(base: str, tmp_path: Path, paths: list[str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        fetch_inputs(spec([base + path for path in paths]), tmp_path, settings(tmp_path))


def test_image_limits_come_from_settings(base: str, tmp_path: Path) -> None:
    cap = len(FILES["/red.png"]) - 1
    small_files = settings(tmp_path, max_image_bytes=cap)
    with pytest.raises(BadInput, match=rf"^image_urls\[0\]: larger than {cap} bytes$"):
        fetch_inputs(spec([f"{base}/red.png"]), tmp_path, small_files)
    small_images = settings(tmp_path, max_image_pixels=500)
    with pytest.raises(BadInput, match=r"^image_urls\[0\]: 30×20 is more than the limit"):
        fetch_inputs(spec([f"{base}/red.png"]), tmp_path, small_images)


def test_video_limits_come_from_settings(base: str, tmp_path: Path) -> None:
    short = settings(tmp_path, max_video_seconds=2.0)
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: longer than the limit of 2 s$"):
        fetch_inputs(spec(video=f"{base}/long.mp4"), tmp_path, short)
    small = settings(tmp_path, max_video_bytes=1000, max_image_bytes=10**9)
    with pytest.raises(BadInput, match=r"^video_urls\[0\]: larger than 1000 bytes$"):
        fetch_inputs(spec(video=f"{base}/long.mp4"), tmp_path, small)


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [(0.4, 4), (3.49, 4), (4.5, 5), (5.5, 6), (6.5, 7), (7.49, 7), (9.5, 10), (10.4, 10), (60, 10)],
)
def test_clip_seconds_rounds_and_clamps(duration: float, seconds: int) -> None:
    clip = VideoClip(Path("v.mp4"), 64, 48, 24.0, duration, round(duration * 24))
    assert clip_seconds(clip) == seconds
