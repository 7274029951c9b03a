"""omniflash end to end: a real ``omniflash serve`` process, real HTTP, real mp4 files."""

from __future__ import annotations

import http.server
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer, make_live_server, wait_for_task


def decode(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate),
            "frames": frames,
        }


def submit(server: LiveServer, key: str | None = None, **fields: Any) -> str:
    body = {"model": "Omni-Flash-Ext", "prompt": "a lighthouse at dusk", "duration": 4}
    body.update(fields)
    with server.client(key) as client:
        response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["task_id"])


def balance(server: LiveServer, key: str | None = None) -> float:
    with server.client(key) as client:
        return float(client.get("/v1/account").json()["data"]["balance"])


def download(url: str) -> bytes:
    import httpx

    response = httpx.get(url, timeout=30)  # no Authorization header: the URL is the permission
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture(scope="module")
def media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Images and a clip served over HTTP on 127.0.0.1, as inputs for tasks."""
    root = tmp_path_factory.mktemp("media")
    colours = {"red.png": (220, 30, 30), "green.png": (30, 200, 60), "blue.png": (30, 60, 220)}
    for name, colour in colours.items():
        Image.new("RGB", (320, 240), colour).save(root / name)
    with av.open(str(root / "clip.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(5 * 24):  # 5 s
            frame = np.full((240, 320, 3), (i * 2) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_submit_poll_download(live_server: LiveServer) -> None:
    started = time.monotonic()
    task_id = submit(live_server, resolution="720p", duration=4)
    seen: list[int] = []
    with live_server.client() as client:
        while True:
            data = client.get(f"/v1/tasks/{task_id}").json()["data"]
            seen.append(data["progress"])
            if data["status"] in ("completed", "failed"):
                break
            time.sleep(0.05)
    elapsed = time.monotonic() - started
    print(f"\n4 s 720p task: submit to completed in {elapsed:.2f} s")
    assert data["status"] == "completed", data
    assert seen == sorted(seen) and seen[-1] == 100
    assert data["cost"] == 0.1 and data["credits_cost"] == 1.0
    assert data["actual_time"] == data["completed"] - data["created"]
    video = data["result"]["videos"][0]
    assert video["expires_at"] > time.time() + 71 * 3600
    info = decode(download(video["url"][0]))
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert (info["width"], info["height"], info["fps"]) == (1280, 720, 24.0)
    assert len(info["frames"]) == 96
    assert balance(live_server) == 99.0
    assert "preview engine: synthetic video" in live_server.log(), "the log says what it runs"


@pytest.mark.parametrize(
    ("fields", "size", "frames"),
    [
        ({"aspect_ratio": "9:16", "duration": 4}, (720, 1280), 96),
        ({"size": "1:1", "duration": 6}, (720, 720), 144),
        ({"aspect_ratio": "21:9", "duration": 4}, (1680, 720), 96),
    ],
)
def test_geometry_end_to_end(
    live_server: LiveServer, fields: dict[str, Any], size: tuple[int, int], frames: int
) -> None:
    task_id = submit(live_server, **fields)
    with live_server.client() as client:
        data = wait_for_task(client, task_id)
    info = decode(download(data["result"]["videos"][0]["url"][0]))  # type: ignore[index]
    assert (info["width"], info["height"]) == size and len(info["frames"]) == frames


def test_inputs_end_to_end(live_server: LiveServer, media_server: str) -> None:
    frame_task = submit(live_server, image_urls=[f"{media_server}/red.png"])
    refs = [f"{media_server}/{c}.png" for c in ("red", "green", "blue")]
    ref_task = submit(live_server, image_urls=refs)
    video_task = submit(
        live_server,
        duration=None,
        video_urls=[f"{media_server}/clip.mp4"],
        image_urls=[f"{media_server}/green.png"],
    )
    with live_server.client() as client:
        results = {t: wait_for_task(client, t) for t in (frame_task, ref_task, video_task)}
    first = decode(download(results[frame_task]["result"]["videos"][0]["url"][0]))  # type: ignore[index]
    pixel = first["frames"][0][360, 640]
    assert pixel[0] > 180 and pixel[1] < 80 and pixel[2] < 80  # starts on the red image
    ref = decode(download(results[ref_task]["result"]["videos"][0]["url"][0]))  # type: ignore[index]
    assert len(ref["frames"]) == 96
    clip = results[video_task]
    assert clip["status"] == "completed"
    # The 5 s reference clip decides the length, and the price settles to it.
    assert clip["credits_cost"] == 1.25
    assert len(decode(download(clip["result"]["videos"][0]["url"][0]))["frames"]) == 120  # type: ignore[index]


def test_bad_input_fails_with_its_name_and_refunds(
    live_server: LiveServer, media_server: str
) -> None:
    before = balance(live_server)
    task_id = submit(live_server, image_urls=[f"{media_server}/missing.png"])
    with live_server.client() as client:
        data = wait_for_task(client, task_id)
    assert data["status"] == "failed" and data["cost"] == 0
    assert data["error"]["code"] == "task_failed"  # type: ignore[index]
    assert data["error"]["message"].startswith("image_urls[0]")  # type: ignore[index]
    assert balance(live_server) == before


def test_private_addresses_are_refused_by_default(tmp_path: Path, media_server: str) -> None:
    server = make_live_server(tmp_path, "--workers", "1", OMNIFLASH_ALLOW_PRIVATE_URLS="0")
    server.start()
    try:
        task_id = submit(server, image_urls=[f"{media_server}/red.png"])
        with server.client() as client:
            data = wait_for_task(client, task_id)
        assert data["status"] == "failed"
        message = data["error"]["message"]  # type: ignore[index]
        assert message.startswith("image_urls[0]") and "127.0.0.1" in message
    finally:
        server.stop()


def test_cancel_running_task_kills_it_and_worker_recovers(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, "--workers", "1")
    server.start()
    try:
        before = balance(server)
        long_task = submit(server, resolution="4k", duration=10)
        with server.client() as client:
            wait_for_task(client, long_task, until=("processing",))
            response = client.post(f"/v1/tasks/{long_task}/cancel")
            assert response.json()["data"]["status"] == "cancelled"
            assert client.post(f"/v1/tasks/{long_task}/cancel").status_code == 409
            assert balance(server) == before
            next_task = submit(server)
            assert wait_for_task(client, next_task)["status"] == "completed"
            assert client.get(f"/v1/tasks/{long_task}").json()["data"]["status"] == "cancelled"
    finally:
        server.stop()


def test_timeout_fails_and_refunds(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, "--workers", "1", OMNIFLASH_TASK_TIMEOUT="1")
    server.start()
    try:
        before = balance(server)
        task_id = submit(server, resolution="4k", duration=10)
        with server.client() as client:
            data = wait_for_task(client, task_id)
        assert data["status"] == "failed"
        assert "timed out" in data["error"]["message"]  # type: ignore[index]
        assert balance(server) == before
    finally:
        server.stop()


def test_sigkill_and_restart_lose_nothing(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, "--workers", "1")
    server.start()
    try:
        done = submit(server)
        with server.client() as client:
            finished = wait_for_task(client, done)
        url = finished["result"]["videos"][0]["url"][0]  # type: ignore[index]
        tasks = [submit(server, resolution="1080p", duration=4) for _ in range(3)]
        with server.client() as client:
            wait_for_task(client, tasks[0], until=("processing", "completed"))
        server.kill()
        server.start()
        with server.client() as client:
            ended = [wait_for_task(client, t, timeout=120) for t in tasks]
            assert [t["status"] for t in ended] == ["completed"] * 3
            assert client.get(f"/v1/tasks/{done}").json()["data"]["status"] == "completed"
        assert len(decode(download(url))["frames"]) == 96
        # 1 credit for the 720p task, 1.6 for each 4 s 1080p one: charged once each.
        assert balance(server) == pytest.approx(100 - 1 - 3 * 1.6)
        out = server.cli("keys", "list").stdout
        assert "94.2" in out
    finally:
        server.stop()


def test_expired_results_are_swept(tmp_path: Path) -> None:
    server = make_live_server(
        tmp_path, "--workers", "1", OMNIFLASH_RESULT_TTL="3", OMNIFLASH_SWEEP_INTERVAL="1"
    )
    server.start()
    try:
        task_id = submit(server)
        with server.client() as client:
            data = wait_for_task(client, task_id)
        url = data["result"]["videos"][0]["url"][0]  # type: ignore[index]
        assert len(download(url)) > 0
        blobs = server.data_dir / "blobs" / "results"
        assert len(list(blobs.glob("*.mp4"))) == 1
        deadline = time.monotonic() + 20
        while list(blobs.glob("*.mp4")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(blobs.glob("*.mp4")) == []
        import httpx

        assert httpx.get(url).status_code == 403
    finally:
        server.stop()


def test_first_start_prints_a_key_and_keys_cli(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, "--workers", "0")
    server.cli("keys", "revoke", server.api_key)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while "shown only once" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = server.log().splitlines()
        index = next(i for i, line in enumerate(lines) if "shown only once" in line)
        first_key = lines[index + 1].strip()
        assert balance(server, first_key) == 100.0
    finally:
        server.stop()
    listing = server.cli("keys", "list").stdout
    assert "revoked" in listing and "default" in listing and first_key not in listing
    topped = server.cli("keys", "topup", first_key, "--credits", "5").stdout
    assert "105.0" in topped
    bad = server.cli("keys", "topup", "of_unknown", "--credits", "5", check=False)
    assert bad.returncode != 0 and "no API key" in bad.stderr


def test_rate_limits_on_live_server(tmp_path: Path) -> None:
    """Submits: ``rpm``, exact.  Reads: ``OMNIFLASH_READ_RPM`` a key, apart from submits."""
    server = make_live_server(tmp_path, "--workers", "0", OMNIFLASH_READ_RPM="60")
    key = server.create_key(10, "--rpm", "3")
    server.start()
    try:
        with server.client(key) as client:
            for _ in range(30):  # polls do not use up the submit limit
                assert client.get("/v1/tasks").status_code == 200
            body = {"model": "Omni-Flash-Ext", "prompt": "x", "duration": 4}
            codes = [client.post("/v1/videos/generations", json=body).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            # 60 reads a minute: the bucket has about 30 left, refilling one a second.
            answers = []
            while len(answers) < 80 and (not answers or answers[-1].status_code == 200):
                answers.append(client.get("/v1/tasks"))
            response = answers[-1]
            assert response.status_code == 429 and len(answers) > 25, len(answers)
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["type"] == "rate_limit_error"
    finally:
        server.stop()


def test_a_revoked_key_stops_working_within_seconds(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, "--workers", "0")
    server.start()
    try:
        with server.client() as client:
            assert client.get("/v1/tasks").status_code == 200  # now in the key cache
            server.cli("keys", "revoke", server.api_key)
            deadline = time.monotonic() + 10
            while client.get("/v1/tasks").status_code != 401:
                assert time.monotonic() < deadline, "a revoked key still works after 10 s"
                time.sleep(0.2)
    finally:
        server.stop()
