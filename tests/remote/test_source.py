"""``HttpTaskSource``: against the app in process, and against scripted answers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from omniflash.contract import parse_generation_request
from omniflash.store import TaskStatus
from omniflash.worker import Lease, SourceUnavailable
from omniflash.worker.http_source import HttpTaskSource, ProtocolError, WorkerRejected
from tests.remote.conftest import Api, png_data_uri
from tests.remote.videos import mp4_bytes

RESULT = {"frames": 96, "width": 1280, "height": 720, "fps": 24, "duration": 4, "info": {}}


def source_for(api: Api, token: str | None = None) -> HttpTaskSource:
    return HttpTaskSource("http://testserver", token or api.token, client=api.client)


def test_a_task_through_the_source(api: Api, tmp_path: Path) -> None:
    image = png_data_uri((0, 0, 250))
    task_id = api.submit(image_urls=[image])
    source = source_for(api)
    assert source.config().worker == "gpu-1"
    lease = source.claim("w-0", 1.0)
    assert lease is not None and lease.task_id == task_id and source.held() == 1
    assert source.heartbeat(lease, 30) and api.task(task_id).progress == 30
    inputs = source.fetch_inputs(lease, tmp_path / "inputs")
    assert list(inputs) == ["image_urls[0]"]
    assert inputs["image_urls[0]"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    output = tmp_path / "out.mp4"
    # Several chunks: the video, then a `free` box of padding.
    padding = 3 * 1024 * 1024
    output.write_bytes(mp4_bytes() + (padding + 8).to_bytes(4, "big") + b"free" + bytes(padding))
    assert source.complete(lease, output, RESULT)
    assert source.held() == 0
    task = api.task(task_id)
    assert task.status is TaskStatus.COMPLETED and task.info == RESULT
    storage = api.client.app.state.services.storage  # type: ignore[attr-defined]
    assert storage.size(task.result_key) == output.stat().st_size
    assert source.claim("w-0", 0.0) is None


def test_a_lost_lease_is_false_everywhere(api: Api, tmp_path: Path) -> None:
    task_id = api.submit()
    source = source_for(api)
    lease = source.claim("w-0", 1.0)
    assert lease is not None
    api.client.post(f"/v1/tasks/{task_id}/cancel", headers={"Authorization": f"Bearer {api.key}"})
    assert source.heartbeat(lease, 50) is False and source.held() == 0
    output = tmp_path / "out.mp4"
    output.write_bytes(b"late")
    assert source.complete(lease, output, RESULT) is False
    assert source.fail(lease, "x", retry=True) is False and source.release(lease) is False
    with pytest.raises(SourceUnavailable, match="409"):
        source.fetch_inputs(
            Lease(lease.task_id, _spec_with_blob(), lease.seed, lease.attempt, lease.epoch),
            tmp_path,
        )


def _spec_with_blob() -> Any:
    spec = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "x", "duration": 4})
    import dataclasses

    return dataclasses.replace(spec, image_urls=("blob:inputs/x/0.png",))


def test_a_revoked_token_stops_the_worker_once(api: Api, tmp_path: Path) -> None:
    task_id = api.submit()
    calls: list[str] = []
    source = source_for(api)
    source.on_rejected = calls.append
    lease = source.claim("w-0", 1.0)
    assert lease is not None
    api.store.workers.revoke("gpu-1")
    assert source.heartbeat(lease, 10) is False
    assert source.release(lease) is False
    assert source.claim("w-0", 0.0) is None
    assert len(calls) == 1 and "HTTP 401" in calls[0] and "revoked" in calls[0]
    assert source.rejected == calls[0] and api.token not in calls[0]
    with pytest.raises(WorkerRejected):
        source.config()
    # The revoke handed its lease back at once, untried.
    task = api.task(task_id)
    assert (task.status, task.attempts) == (TaskStatus.PENDING, 0)


def test_unknown_token_is_rejected_at_config(api: Api) -> None:
    with pytest.raises(WorkerRejected, match="401"):
        source_for(api, "ofw_not-a-token").config()


def _scripted(handler: Any) -> HttpTaskSource:
    client = httpx.Client(base_url="http://server", transport=httpx.MockTransport(handler))
    return HttpTaskSource("http://server", "ofw_t", client=client)


LEASE = {
    "task_id": "task_1",
    "spec": parse_generation_request(
        {"model": "Omni-Flash-Ext", "prompt": "x", "duration": 4}
    ).to_dict(),
    "seed": 7,
    "attempt": 1,
    "epoch": 3,
}


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
        503,
        500,
    ],
)
def test_unreachable_server_is_source_unavailable(failure: Any, tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer ofw_t"
        if isinstance(failure, Exception):
            raise failure
        return httpx.Response(failure, json={"error": {"message": "database is down"}})

    source = _scripted(handler)
    lease = Lease.from_dict(LEASE)
    with pytest.raises(SourceUnavailable):
        source.claim("w-0", 0.0)
    with pytest.raises(SourceUnavailable):
        source.heartbeat(lease, 1)
    output = tmp_path / "out.mp4"
    output.write_bytes(b"v")
    with pytest.raises(SourceUnavailable):
        source.complete(lease, output, RESULT)
    with pytest.raises(SourceUnavailable):
        source.release(lease)


def test_a_lease_that_arrives_while_stopping_goes_straight_back() -> None:
    seen: list[tuple[str, Any]] = []
    source: HttpTaskSource

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.url.path, body))
        if request.url.path == "/worker/v1/claim":
            source.close()  # the stop comes while the long poll is out
            return httpx.Response(200, json={"lease": LEASE, "input_urls": {}, "upload_url": None})
        return httpx.Response(200, json={"held": True})

    source = _scripted(handler)
    assert source.claim("w-0", 5.0) is None
    assert seen[-1] == ("/worker/v1/tasks/task_1/release", {"epoch": 3})
    assert source.held() == 0
    assert source.claim("w-0", 5.0) is None and len(seen) == 2  # no more claims


def test_presigned_urls_bypass_the_server(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        if request.url.host == "bucket":
            assert "authorization" not in request.headers  # the token stays with the server
            if request.method == "GET":
                return httpx.Response(200, content=b"image-bytes")
            assert request.headers["content-length"] == "5" and request.read() == b"video"
            return httpx.Response(200)
        if request.url.path == "/worker/v1/claim":
            lease = dict(LEASE, spec=_spec_with_blob().to_dict())
            return httpx.Response(
                200,
                json={
                    "lease": lease,
                    "input_urls": {"image_urls[0]": "http://bucket/in?sig=1"},
                    "upload_url": "http://bucket/out?sig=2",
                },
            )
        return httpx.Response(200, json={"held": True})

    transport = httpx.MockTransport(handler)
    source = _scripted(handler)
    source._bare = httpx.Client(transport=transport)
    lease = source.claim("w-0", 0.0)
    assert lease is not None
    paths = source.fetch_inputs(lease, tmp_path / "in")
    assert paths["image_urls[0]"].read_bytes() == b"image-bytes"
    output = tmp_path / "out.mp4"
    output.write_bytes(b"video")
    assert source.complete(lease, output, RESULT)
    assert seen == [
        "POST http://server/worker/v1/claim",
        "GET http://bucket/in?sig=1",
        "PUT http://bucket/out?sig=2",
        "POST http://server/worker/v1/tasks/task_1/complete",
    ]


def test_the_source_is_shared_by_threads(api: Api) -> None:
    ids = {api.submit() for _ in range(4)}
    source = source_for(api)
    got: list[str] = []

    def run() -> None:
        lease = source.claim(threading.current_thread().name, 1.0)
        if lease is not None:
            got.append(lease.task_id)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(got) == sorted(ids) and source.held() == 4


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>hello</html>"),
        httpx.Response(404, json={"error": {"message": "No such endpoint"}}),
    ],
)
def test_a_server_that_is_not_omniflash_is_named(answer: httpx.Response) -> None:
    source = _scripted(lambda _request: answer)
    with pytest.raises(ProtocolError, match=r"http://server: GET /worker/v1/config"):
        source.config()
