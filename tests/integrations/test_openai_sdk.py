"""The OpenAI videos dialect, driven by the official ``openai`` SDK against a live server."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import av
import httpx
import openai
import pytest
from PIL import Image

from omniflash.client import Client
from tests.conftest import LiveServer, wait_for_task

# The SDK marks its video methods deprecated (a notice about OpenAI's own hosted service);
# that notice is all this filter lets through.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The Sora API is scheduled to permanently shut down:DeprecationWarning"
    ),
    pytest.mark.timeout(120),
]


@pytest.fixture
def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 360), (230, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0) as c:
        yield c


def test_create_and_poll_then_download(client: openai.OpenAI, server: LiveServer) -> None:
    video = client.videos.create_and_poll(
        prompt="a paper boat on a pond", seconds="4", size="720x1280", poll_interval_ms=200
    )
    assert video.status == "completed", video.error
    assert video.object == "video" and video.model == "Omni-Flash-Ext"
    assert (video.seconds, video.size, video.progress) == ("4", "720x1280", 100)
    assert video.id.startswith("task_") and video.completed_at and video.expires_at

    content = client.videos.download_content(video.id)
    with av.open(io.BytesIO(content.read())) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (720, 1280)
        assert sum(1 for _ in container.decode(stream)) == 4 * 24

    thumb = client.videos.download_content(video.id, variant="thumbnail")
    image = Image.open(io.BytesIO(thumb.read()))
    assert image.format == "WEBP" and image.size == (720, 1280)

    # The same task in the Omni-Flash-Ext dialect: same id, same charge.
    with server.client() as ext:
        data = ext.get(f"/v1/tasks/{video.id}").json()["data"]
    assert data["status"] == "completed" and data["credits_cost"] == 1.0
    assert (data["request"]["width"], data["request"]["height"]) == (720, 1280)


def test_retrieve_says_when_to_poll_again(server: LiveServer, client: openai.OpenAI) -> None:
    video = client.videos.create(prompt="a slow sunrise", seconds="4")
    assert video.status == "queued" and video.size == "1280x720"
    raw = client.videos.with_raw_response.retrieve(video.id)
    assert 250 <= int(raw.headers["openai-poll-after-ms"]) <= 5000
    with server.client() as ext:
        wait_for_task(ext, video.id)


def test_input_reference_is_the_first_frame(client: openai.OpenAI, png_bytes: bytes) -> None:
    video = client.videos.create_and_poll(
        prompt="zoom into the red",
        input_reference=("red.png", png_bytes, "image/png"),
        poll_interval_ms=200,
    )
    assert video.status == "completed", video.error
    first = client.videos.download_content(video.id, variant="thumbnail").read()
    r, g, b = Image.open(io.BytesIO(first)).convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert r > 150 and g < 90 and b < 90, (r, g, b)


def test_list_pages_in_both_orders(client: openai.OpenAI) -> None:
    ids = [client.videos.create(prompt=f"page {i}", seconds="4").id for i in range(3)]
    newest = client.videos.list(limit=2)
    assert [v.id for v in newest.data] == ids[::-1][:2] and newest.has_more
    assert newest.last_id == ids[1]
    everything = [v.id for v in client.videos.list(limit=2)]  # the SDK pages with after=
    assert everything[:3] == ids[::-1] and len(everything) == len(set(everything))
    oldest_first = [v.id for v in client.videos.list(order="asc", limit=100).data]
    assert oldest_first == sorted(oldest_first) and set(ids) <= set(oldest_first)


def test_remix_keeps_the_settings(client: openai.OpenAI, server: LiveServer) -> None:
    source = client.videos.create_and_poll(
        prompt="a fox in snow", seconds="6", size="1280x720", poll_interval_ms=200
    )
    remix = client.videos.remix(source.id, prompt="a fox in rain")
    assert remix.remixed_from_video_id == source.id and remix.id != source.id
    assert (remix.seconds, remix.size, remix.prompt) == ("6", "1280x720", "a fox in rain")
    done = client.videos.poll(remix.id, poll_interval_ms=200)
    assert done.status == "completed"
    with server.client() as ext:
        seeds = {
            ext.get(f"/v1/tasks/{i}").json()["data"]["request"]["seed"]
            for i in (source.id, remix.id)
        }
    assert len(seeds) == 1


def test_delete_removes_the_video(client: openai.OpenAI, server: LiveServer) -> None:
    video = client.videos.create_and_poll(prompt="to be deleted", poll_interval_ms=200)
    with server.client() as ext:
        url = ext.get(f"/v1/tasks/{video.id}").json()["data"]["result"]["videos"][0]["url"][0]
    assert httpx.get(url).status_code == 200
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(video.id)
    assert video.id not in [v.id for v in client.videos.list(limit=100).data]
    assert httpx.get(url).status_code == 404  # the file is gone


def test_errors_name_the_field(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.create(prompt="x", seconds="12")  # type: ignore[arg-type]
    assert bad.value.param == "seconds" and "seconds" in bad.value.message
    assert bad.value.code == "invalid_value"
    body = bad.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}

    with pytest.raises(openai.BadRequestError) as size:
        client.videos.create(prompt="x", size="1792x1024")
    assert size.value.param == "size"

    with pytest.raises(openai.BadRequestError) as model:
        client.videos.create(prompt="x", model="sora-2")
    assert model.value.param == "model"

    with pytest.raises(openai.BadRequestError) as not_image:
        client.videos.create(prompt="x", input_reference=("a.txt", b"hello", "text/plain"))
    assert not_image.value.param == "input_reference"

    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="of_wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as auth:
        wrong.videos.list()
    assert auth.value.code == "invalid_api_key"


def test_json_create_and_callback_validation(server: LiveServer) -> None:
    with server.client() as http:
        ok = http.post(
            "/v1/videos", json={"prompt": "json body", "seconds": 4, "size": "1920x1080"}
        )
        assert ok.status_code == 200, ok.text
        assert (ok.json()["size"], ok.json()["seconds"]) == ("1920x1080", "4")
        bad = http.post("/v1/videos", json={"prompt": "x", "callback_url": "ftp://example.com/"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "callback_url"
        wait_for_task(http, ok.json()["id"])


def test_json_input_reference_forms(server: LiveServer, png_bytes: bytes) -> None:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes).decode()
    with server.client() as http:
        made = http.post("/v1/videos", json={"prompt": "x", "input_reference": {"image_url": uri}})
        assert made.status_code == 200, made.text
        by_file = http.post("/v1/videos", json={"prompt": "x", "input_reference": {"file_id": "f"}})
        assert by_file.status_code == 400
        assert by_file.json()["error"]["param"] == "input_reference"
        done = wait_for_task(http, made.json()["id"])
    assert done["status"] == "completed" and done["request"]["mode"] == "frame"  # type: ignore[index]


def test_malformed_multipart_gets_the_openai_envelope(server: LiveServer) -> None:
    with server.client() as http:
        response = http.post(
            "/v1/videos",
            content=b"--xyz\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--xyz--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def _follow_checked(client: openai.OpenAI, sdk: Client) -> list[tuple[int, int]]:
    """One video followed by its events: (event progress, polled progress) per event."""
    video = client.videos.create(prompt="a kite, followed", seconds="8", size="1920x1080")
    checked: list[tuple[int, int]] = []
    for event in sdk.tasks.events(video.id):
        if event.kind not in ("status", "progress") or event.progress is None:
            continue
        seen = client.videos.retrieve(video.id)
        assert seen.progress >= event.progress, (seen.progress, event.progress)
        assert seen.status in ("queued", "in_progress", "completed")
        checked.append((event.progress, seen.progress))
    assert event.kind == "end" and event.task is not None
    done = client.videos.retrieve(video.id)
    assert (done.status, done.progress) == ("completed", 100)
    assert [p for p, _ in checked] == sorted(p for p, _ in checked)
    return checked


def test_progress_moves_with_the_task_events(client: openai.OpenAI, server: LiveServer) -> None:
    """Each event is written with the change it reports: when a progress event arrives,
    the OpenAI video already shows that progress (or more), in the mapped status."""
    with Client(server.url, server.api_key) as sdk:
        # Progress is written at most every half second: a machine that renders the
        # video quicker than that reports none, so a few videos are tried.
        tries = [_follow_checked(client, sdk)]
        while not any(p > 0 for p, _ in tries[-1]) and len(tries) < 4:
            tries.append(_follow_checked(client, sdk))
    assert any(p > 0 for p, _ in tries[-1]), ("a progress event came before the end", tries)
