"""The client core without I/O: flows driven by hand, plain-data tasks, images refused
before a submit, and a package that does not import itself in a circle."""

from __future__ import annotations

import ast
import base64
import dataclasses
import graphlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import omniflash.errors as server_errors
from omniflash.client import (
    APIConnectionError,
    Client,
    ConflictError,
    IdempotencyError,
    InputError,
    RetryPolicy,
    Task,
    TaskFailedError,
    WaitPolicy,
)
from omniflash.client.core import ClientCore
from omniflash.client.effects import Fetch, Fetched, Flow, Report, Send, Sleep
from omniflash.client.images import data_uri, image_reference, sniff_image_type
from tests.client.stubs import error_body, png_bytes, submitted_body, task_body

CLIENT_PACKAGE = Path(__file__).resolve().parents[2] / "src" / "omniflash" / "client"
HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40)
# Apple's HEIF stills: the generic "mif1" brand first, "heic" among the compatible ones.
MIF1_HEIC_HEAD = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1heicmiaf" + bytes(40)
AVIF_HEAD = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf" + bytes(40)


def core(**retry: Any) -> ClientCore:
    policy = RetryPolicy(backoff=0.01, **retry)
    return ClientCore("http://api.test", "of_key", retry=policy, wait=WaitPolicy(0, 0, 60))


def answer(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def step(flow: Flow[Any], outcome: Any = None) -> Any:
    return flow.send(outcome)


def finish(flow: Flow[Any], outcome: Any) -> Any:
    with pytest.raises(StopIteration) as stop:
        flow.send(outcome)
    return stop.value.value


def test_a_submit_is_planned_and_retried_without_io() -> None:
    flow = core().generate("a kite", duration=4)
    first = step(flow)
    assert isinstance(first, Send) and (first.method, first.url) == (
        "POST",
        "http://api.test/v1/videos/generations",
    )
    assert first.json == {"model": "Omni-Flash-Ext", "prompt": "a kite", "duration": 4}
    assert first.headers["Authorization"] == "Bearer of_key"
    assert isinstance(step(flow, answer(503, error_body(503, "busy", "api_error"))), Sleep)
    again = step(flow)
    assert again == first, "a retried submit carries the same Idempotency-Key"
    assert isinstance(flow.throw(httpx.ConnectError("refused")), Sleep)
    assert step(flow) == first
    task = finish(flow, answer(200, submitted_body("task_A"), **{"Idempotency-Replayed": "true"}))
    assert (task.id, task.status, task.replayed) == ("task_A", "submitted", True)


def test_retries_end_with_the_sdk_error() -> None:
    flow = core(max_retries=1).get_task("task_A")
    step(flow)
    assert isinstance(flow.throw(httpx.ConnectError("refused")), Sleep)
    step(flow)
    with pytest.raises(APIConnectionError, match=r"GET http://api\.test/v1/tasks/task_A failed"):
        flow.throw(httpx.ConnectError("refused"))


def test_wait_reports_progress_and_raises_for_a_failed_task() -> None:
    seen: list[Task] = []
    polling = core()
    polling.streams.unsupported = True  # a server without events: wait() polls
    flow = polling.wait("task_A", on_progress=seen.append)
    assert step(flow) == Sleep(0)
    assert isinstance(step(flow), Send)
    report = step(flow, answer(200, task_body("task_A", "processing", 40)))
    assert isinstance(report, Report) and report.task.progress == 40
    assert step(flow) == Sleep(0)
    assert isinstance(step(flow), Send)
    failed = task_body("task_A", "failed", 100, error={"message": "no GPU", "code": "task_failed"})
    assert isinstance(step(flow, answer(200, failed)), Report)
    with pytest.raises(TaskFailedError, match="no GPU"):
        step(flow)


def test_a_download_renews_an_expired_link_and_cleans_up(tmp_path: Path) -> None:
    old = Task.from_data(
        {"id": "task_A", "status": "completed", "result": {"videos": [{"url": ["/v1/files/old"]}]}}
    )
    flow = core().download(old, tmp_path / "out.mp4")
    fetch = step(flow)
    assert isinstance(fetch, Fetch) and fetch.url == "http://api.test/v1/files/old"
    assert fetch.headers is not None, "the key goes to the API server itself"
    expired = answer(403, error_body(403, "expired", "permission_error"))
    renew = step(flow, Fetched(expired))
    assert isinstance(renew, Send) and renew.url == "http://api.test/v1/tasks/task_A"
    fresh = {"videos": [{"url": ["https://cdn.test/new.mp4"]}]}
    fetch = step(flow, answer(200, task_body("task_A", "completed", 100, result=fresh)))
    assert isinstance(fetch, Fetch) and fetch.url == "https://cdn.test/new.mp4"
    assert fetch.headers is None, "no key for another host"
    with fetch.open() as sink:
        sink.write(b"video")
    done = finish(flow, Fetched(httpx.Response(200, headers={"content-length": "5"}), sink.size))
    assert done.read_bytes() == b"video"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_a_task_is_plain_data(tmp_path: Path) -> None:
    data = {"id": "task_A", "status": "completed", "progress": 100}
    with Client("http://api.test", "of_key") as client:
        bound = Task.from_data(data, client.tasks)
        assert bound._actions is client.tasks and bound == Task.from_data(data)
        fields = dataclasses.asdict(bound)
    assert list(fields) == [
        "id",
        "status",
        "progress",
        "created",
        "completed",
        "actual_time",
        "estimated_time",
        "cost",
        "credits_cost",
        "videos",
        "error",
        "raw",
    ]
    assert fields["raw"] == data
    with pytest.raises(RuntimeError, match=r"use client\.tasks\.download\(task, path\)"):
        Task.from_data(data).download(tmp_path / "x.mp4")


def test_an_idempotency_mismatch_is_no_conflict() -> None:
    assert not issubclass(IdempotencyError, ConflictError)
    assert not issubclass(server_errors.IdempotencyMismatch, server_errors.Conflict)
    error = IdempotencyError("another body", status_code=422)
    assert not RetryPolicy().retryable(error, submit=True)
    assert RetryPolicy().retryable(ConflictError("in flight", status_code=409), submit=True)


def test_the_client_package_imports_no_circle() -> None:
    graph: dict[str, set[str]] = {}
    for path in CLIENT_PACKAGE.glob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
                imported.update(n for n in names if n.startswith("omniflash.client."))
        graph[path.stem] = {n.split(".")[2] for n in imported} - {path.stem}
    graph.pop("__init__")
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a circle
    assert order.index("models") < order.index("core") < order.index("sync_client")


def avif_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, format="AVIF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (png_bytes(), "image/png"),
        (AVIF_HEAD, "image/avif"),
        (HEIC_HEAD, "image/heic"),
        (MIF1_HEIC_HEAD, "image/heic"),
        (b"MM\x00+" + bytes(20), "image/tiff"),
        (b"%PDF-1.7", None),
    ],
)
def test_sniffing(head: bytes, mime: str | None) -> None:
    assert sniff_image_type(head[:64]) == mime


def test_heic_is_refused_before_a_submit(tmp_path: Path) -> None:
    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(MIF1_HEIC_HEAD)
    with pytest.raises(InputError) as caught:
        image_reference(photo)
    assert str(caught.value) == (
        "image '" + str(photo) + "' is HEIC/HEIF, which the server cannot decode; "
        "convert it to JPEG or PNG (it takes PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF)"
    )
    uri = "data:image/jpeg;base64," + base64.b64encode(HEIC_HEAD).decode()
    with pytest.raises(InputError, match=r"image 2 \(data URI\) is HEIC/HEIF"):
        image_reference(uri, index=2)
    with pytest.raises(InputError, match="is not a PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF"):
        data_uri(b"%PDF-1.7 not an image")
    assert data_uri(avif_bytes()).startswith("data:image/avif;base64,")


class _CutShort(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield b"the first part"
        raise KeyboardInterrupt


def test_a_download_stopped_by_ctrl_c_leaves_no_partial_file(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=_CutShort()))
    with Client("http://api.test", "of_key", transport=transport) as client:
        with pytest.raises(KeyboardInterrupt) as caught:
            client.tasks.download("http://api.test/v1/files/a.mp4", tmp_path / "a.mp4")
        # Not left to the garbage collector: the traceback still holds the flow.
        assert caught.traceback and list(tmp_path.iterdir()) == []
