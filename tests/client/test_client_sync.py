"""``omniflash.client.Client`` against a real ``omniflash serve`` process, and against stubs
for the failures a real server cannot produce on demand."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

import omniflash.client
from omniflash.client import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    Client,
    ConflictError,
    IdempotencyError,
    InputError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    RetryPolicy,
    Task,
    TaskCancelledError,
    TaskFailedError,
    WaitPolicy,
)
from omniflash.media.encode import probe_mp4
from tests.client.stubs import (
    ImageHost,
    Reply,
    ScriptedServer,
    error_body,
    png_bytes,
    submitted_body,
    task_body,
)
from tests.client.test_core import MIF1_HEIC_HEAD, avif_bytes
from tests.conftest import LiveServer, free_port

FAST_RETRY = RetryPolicy(max_retries=3, backoff=0.01)
# A preview task takes about a second: look often.
FAST_WAIT = WaitPolicy(first_delay=0.2, interval=0.2, timeout=60)


def client_for(
    server: LiveServer, key: str | None = None, retry: RetryPolicy | None = None
) -> Client:
    return Client(server.url, key or server.api_key, retry=retry, wait=FAST_WAIT)


def wait_for_status(client: Client, task_id: str, status: str, timeout: float = 30) -> Task:
    deadline = time.monotonic() + timeout
    while True:
        task = client.tasks.get(task_id)
        if task.status == status:
            return task
        assert time.monotonic() < deadline, f"{task_id} still {task.status}"
        time.sleep(0.1)


def test_public_names_are_exported() -> None:
    assert sorted(omniflash.client.__all__) == sorted(
        name for name in dir(omniflash.client) if not name.startswith("_") and name[0].isupper()
    )


# -- a real server ---------------------------------------------------------------------------


def test_generate_wait_and_download(server: LiveServer, tmp_path: Path) -> None:
    with client_for(server) as client:
        task = client.videos.generate(
            prompt="a red kite over the sea", duration=4, resolution="720p", seed=7
        )
        assert task.id.startswith("task_") and task.status == "submitted"
        assert not task.replayed
        seen: list[tuple[str, int]] = []
        done = client.tasks.wait(task.id, on_progress=lambda t: seen.append((t.status, t.progress)))
        path = done.download(tmp_path / "kite.mp4")
    assert done.status == "completed" and done.progress == 100
    assert seen[-1] == ("completed", 100)
    progress = [p for _, p in seen]
    assert progress == sorted(progress), "progress never goes back"
    assert done.prompt == "a red kite over the sea"
    assert done.credits_cost == 1 and done.cost is not None and done.cost > 0
    assert done.video_url is not None and done.video_url.startswith(server.url)
    assert done.expires_at is not None and done.expires_at > time.time()
    info = probe_mp4(path)
    assert (info.width, info.height, info.frames) == (1280, 720, 96)
    assert not list(tmp_path.glob(".*.part")), "the temp file is renamed, not left behind"


def test_a_download_to_a_pipe_writes_into_it_and_leaves_it_a_pipe(
    server: LiveServer, tmp_path: Path
) -> None:
    """``-o /dev/null`` and pipes: a target that is not a file is written in place, never
    renamed over (that would replace ``/dev/null`` with a file). A FIFO stands in for the
    device here, so that a failure cannot touch the machine's ``/dev/null``."""
    import os
    import stat
    import threading

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = bytearray()

    def drain() -> None:
        with open(pipe, "rb") as reader:
            while chunk := reader.read(65536):
                received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with client_for(server) as client:
        done = client.videos.generate_and_wait(prompt="a kite into a pipe", duration=4)
        done.download(pipe)
    reader.join(30)
    assert stat.S_ISFIFO(pipe.stat().st_mode), "the pipe is still a pipe"
    assert received[4:8] == b"ftyp" and len(received) > 1000
    assert not list(tmp_path.glob(".*.part"))


def test_image_bytes_are_sent_as_a_data_uri(server: LiveServer, tmp_path: Path) -> None:
    with client_for(server) as client:
        done = client.videos.generate_and_wait(
            "the kite takes off",
            duration=4,
            aspect_ratio="9:16",
            images=[png_bytes()],
            generation_type="frame",
        )
        done.download(tmp_path / "frame.mp4")
    assert done.raw["request"]["mode"] == "frame"
    assert done.raw["request"]["image_count"] == 1
    info = probe_mp4(tmp_path / "frame.mp4")
    assert (info.width, info.height) == (720, 1280)


def test_list_pages_newest_first(server: LiveServer, fresh_key: str) -> None:
    with client_for(server, fresh_key) as client:
        assert len(client.tasks.list()) == 0
        first = client.videos.generate("one", duration=4)
        second = client.videos.generate("two", duration=4)
        page = client.tasks.list(limit=1)
        assert [t.id for t in page] == [second.id]
        assert page.has_more and page.next_after == second.id
        rest = client.tasks.list(limit=1, after=page.next_after)
        assert [t.id for t in rest] == [first.id] and not rest.has_more
        assert [t.id for t in client.tasks.iter_all(page_size=1)] == [second.id, first.id]
        assert client.tasks.get(first.id).prompt == "one"
        for task in (first, second):
            client.tasks.wait(task.id)


def test_cancel_a_processing_task(server: LiveServer, images: ImageHost) -> None:
    url = images.held_url()
    try:
        with client_for(server) as client:
            task = client.videos.generate("held back", duration=4, images=[url])
            wait_for_status(client, task.id, "processing")
            cancelled = client.tasks.cancel(task.id)
            assert cancelled.status == "cancelled" and cancelled.cost == 0
            assert cancelled.error is not None and cancelled.error.code == "task_cancelled"
            # A retried cancel whose first try went through is harmless.
            assert client.tasks.cancel(task.id).status == "cancelled"
            with pytest.raises(TaskCancelledError) as caught:
                client.tasks.wait(task.id, first_delay=0, timeout=10)
            assert caught.value.task_id == task.id
    finally:
        images.release(url)


def test_cancel_a_completed_task_is_a_conflict(server: LiveServer) -> None:
    with client_for(server) as client:
        done = client.videos.generate_and_wait("done already", duration=4)
        with pytest.raises(ConflictError) as caught:
            client.tasks.cancel(done.id)
    assert caught.value.status_code == 409 and "already completed" in caught.value.message


def test_failed_task_raises_with_the_server_message(server: LiveServer) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/missing.png"
    with client_for(server) as client:
        with pytest.raises(TaskFailedError) as caught:
            client.videos.generate_and_wait("no input", duration=4, images=[unreachable])
        error = caught.value
        assert not isinstance(error, TaskCancelledError)
        assert error.task.status == "failed" and error.task.cost == 0
        assert "image_urls[0]" in error.reason
        # The same task, without raising:
        task = client.tasks.wait(error.task_id, first_delay=0, raise_on_failure=False)
        assert task.status == "failed" and task.error is not None


def test_errors_map_to_exception_classes(server: LiveServer, tmp_path: Path) -> None:
    bad = Client(server.url, "of_not_a_key", retry=FAST_RETRY)
    with bad, pytest.raises(AuthenticationError) as auth:
        bad.tasks.list()
    assert auth.value.status_code == 401 and auth.value.type == "authentication_error"
    assert str(auth.value) == "Authentication failed. Please check your API key"

    with client_for(server) as client:
        with pytest.raises(InvalidRequestError) as duration:
            client.videos.generate("x", duration=5)
        assert duration.value.type == "invalid_duration"
        assert str(duration.value) == "invalid duration 5, must be one of 4/6/8/10"
        with pytest.raises(InvalidRequestError) as count:
            client.videos.generate("x", images=[png_bytes(), png_bytes()])
        assert count.value.type == "unsupported_image_count"
        with pytest.raises(NotFoundError):
            client.tasks.get("task_00000000000000000000000000")
        with pytest.raises(InputError, match="cannot read image"):
            client.videos.generate("x", images=[tmp_path / "nowhere.png"])
        (tmp_path / "notes.txt").write_text("not an image")
        with pytest.raises(InputError, match="is not a PNG"):
            client.videos.generate("x", images=[tmp_path / "notes.txt"])

    broke = client_for(server, server.create_key(0))
    with broke, pytest.raises(PaymentRequiredError) as payment:
        broke.videos.generate("x", duration=4)
    assert payment.value.type == "payment_required"

    with Client(server.url, server.create_key(100, "--rpm", "1"), max_retries=0) as slow:
        slow.videos.generate("x", duration=4)
        with pytest.raises(RateLimitError) as limited:
            slow.videos.generate("x", duration=4)
    assert limited.value.retry_after is not None and limited.value.retry_after > 0

    nowhere = Client(f"http://127.0.0.1:{free_port()}", "of_x", retry=FAST_RETRY)
    with nowhere, pytest.raises(APIConnectionError, match=r"GET http://127\.0\.0\.1:\d+/v1/tasks"):
        nowhere.tasks.list()


def test_heic_is_refused_before_a_charge_and_avif_is_generated(
    server: LiveServer, fresh_key: str, tmp_path: Path
) -> None:
    """The server decodes AVIF but not HEIC; the SDK refuses HEIC before submitting, so
    nothing is charged (the server would charge, fail the task, and refund it)."""
    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(MIF1_HEIC_HEAD)
    with client_for(server, fresh_key) as client:
        with pytest.raises(InputError, match="HEIC/HEIF, which the server cannot decode"):
            client.videos.generate("a phone photo", duration=4, images=[photo])
        assert len(client.tasks.list()) == 0 and client.account().balance == 100
        done = client.videos.generate_and_wait("an avif", duration=4, images=[avif_bytes()])
    assert done.status == "completed" and done.raw["request"]["mode"] == "frame"


def test_idempotency_key_replays_and_charges_once(server: LiveServer, fresh_key: str) -> None:
    with client_for(server, fresh_key) as client:
        before = client.account().balance
        first = client.videos.generate("once", duration=4, idempotency_key="order-1")
        again = client.videos.generate("once", duration=4, idempotency_key="order-1")
        assert again.id == first.id and again.replayed and not first.replayed
        assert before is not None and client.account().balance == before - 1
        with pytest.raises(IdempotencyError) as caught:
            client.videos.generate("twice", duration=4, idempotency_key="order-1")
        assert caught.value.status_code == 422 and caught.value.type == "idempotency_error"
        client.tasks.wait(first.id)


def test_concurrent_submits_with_one_key_make_one_task(server: LiveServer, fresh_key: str) -> None:
    """Racing submits see 409 (still in flight) or a replay; the SDK retries the 409."""
    with client_for(server, fresh_key, retry=RetryPolicy(max_retries=10, backoff=0.05)) as client:
        before = client.account().balance

        def submit(_: int) -> Task:
            return client.videos.generate("raced", duration=4, idempotency_key="race-1")

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(submit, range(6)))
        assert len({t.id for t in results}) == 1
        assert sum(not t.replayed for t in results) == 1
        assert before is not None and client.account().balance == before - 1
        assert len(client.tasks.list()) == 1
        client.tasks.wait(results[0].id)


# -- stubs: what a real server does not do on demand ------------------------------------------


def test_submit_is_retried_under_the_same_idempotency_key(stub: ScriptedServer) -> None:
    stub.on(
        "POST",
        "/v1/videos/generations",
        Reply(503, error_body(503, "busy", "api_error")),
        Reply(drop=True),
        Reply(409, error_body(409, "still being handled", "conflict_error")),
        Reply(200, submitted_body("task_A")),
    )
    with Client(stub.url, "k", retry=FAST_RETRY) as client:
        task = client.videos.generate("retried", duration=4)
    assert task.id == "task_A"
    calls = stub.calls("POST", "/v1/videos/generations")
    keys = {c.headers["idempotency-key"] for c in calls}
    assert len(calls) == 4 and len(keys) == 1
    assert calls[0].headers["authorization"] == "Bearer k"


def test_a_submit_without_idempotency_key_is_never_retried(stub: ScriptedServer) -> None:
    stub.on("POST", "/v1/videos/generations", Reply(503, error_body(503, "busy", "api_error")))
    body = {"model": "Omni-Flash-Ext", "prompt": "x"}
    client = Client(stub.url, "k", retry=FAST_RETRY)
    with client, pytest.raises(InternalServerError) as caught:
        client.request("POST", "/v1/videos/generations", json=body, mode="submit")
    assert caught.value.status_code == 503 and str(caught.value) == "busy"
    assert len(stub.calls("POST", "/v1/videos/generations")) == 1


def test_idempotency_mismatch_is_not_retried(stub: ScriptedServer) -> None:
    stub.on(
        "POST",
        "/v1/videos/generations",
        Reply(422, error_body(422, "another body", "idempotency_error")),
    )
    with Client(stub.url, "k", retry=FAST_RETRY) as client, pytest.raises(IdempotencyError):
        client.videos.generate("x", idempotency_key="mine")
    assert len(stub.calls("POST", "/v1/videos/generations")) == 1


def test_reads_retry_429_with_retry_after_then_give_up(stub: ScriptedServer) -> None:
    limited = Reply(429, error_body(429, "slow down", "rate_limit_error"), {"Retry-After": "0"})
    stub.on("GET", "/v1/tasks/task_A", limited, Reply(200, task_body("task_A", "pending")))
    stub.on("GET", "/v1/tasks/task_B", limited)
    with Client(stub.url, "k", retry=FAST_RETRY) as client:
        assert client.tasks.get("task_A").status == "pending"
        with pytest.raises(RateLimitError) as caught:
            client.tasks.get("task_B")
    assert caught.value.retry_after == 0
    assert len(stub.calls("GET", "/v1/tasks/task_A")) == 2
    assert len(stub.calls("GET", "/v1/tasks/task_B")) == 1 + FAST_RETRY.max_retries


def test_wait_survives_blips_and_has_a_deadline(stub: ScriptedServer) -> None:
    stub.on(
        "GET",
        "/v1/tasks/task_A",
        Reply(200, task_body("task_A", "processing", 10)),
        Reply(502, b"bad gateway"),
        Reply(200, task_body("task_A", "processing", 50)),
    )
    with Client(stub.url, "k", retry=RetryPolicy(max_retries=0)) as client:
        seen: list[int] = []
        with pytest.raises(APITimeoutError) as caught:
            client.tasks.wait(
                "task_A",
                first_delay=0,
                poll_interval=0.05,
                timeout=0.5,
                on_progress=lambda t: seen.append(t.progress),
            )
    assert caught.value.task_id == "task_A"
    assert "processing, 50%" in str(caught.value)
    assert seen[0] == 10 and seen[-1] == 50


def test_download_retries_and_never_submits_again(stub: ScriptedServer, tmp_path: Path) -> None:
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(2000)
    url = f"{stub.url}/v1/files/a.mp4"
    stub.on("POST", "/v1/videos/generations", Reply(200, submitted_body("task_A")))
    stub.on(
        "GET",
        "/v1/tasks/task_A",
        Reply(200, task_body("task_A", "completed", 100, result={"videos": [{"url": [url]}]})),
    )
    stub.on(
        "GET",
        "/v1/files/a.mp4",
        Reply(500, error_body(500, "disk hiccup", "api_error")),
        Reply(drop=True),
        Reply(200, video),
    )
    with Client(stub.url, "k", retry=FAST_RETRY, wait=WaitPolicy(0, 0.05)) as client:
        task = client.videos.generate_and_wait("x", timeout=5)
        path = task.download(tmp_path / "out.mp4")
    assert path.read_bytes() == video
    assert len(stub.calls("GET", "/v1/files/a.mp4")) == 3
    assert len(stub.calls("POST", "/v1/videos/generations")) == 1


def test_an_expired_link_is_renewed_once(stub: ScriptedServer, tmp_path: Path) -> None:
    old, new = f"{stub.url}/v1/files/old.mp4", f"{stub.url}/v1/files/new.mp4"
    stub.on("GET", "/v1/files/old.mp4", Reply(403, error_body(403, "expired", "permission_error")))
    stub.on("GET", "/v1/files/new.mp4", Reply(200, b"fresh"))
    stub.on(
        "GET",
        "/v1/tasks/task_A",
        Reply(200, task_body("task_A", "completed", 100, result={"videos": [{"url": [new]}]})),
    )
    with Client(stub.url, "k", retry=FAST_RETRY) as client:
        stale = Task(
            **Task.fields_from(
                {"id": "task_A", "status": "completed", "result": {"videos": [{"url": [old]}]}}
            )
        )
        path = client.download(stale, tmp_path / "out.mp4")
    assert path.read_bytes() == b"fresh"
    assert len(stub.calls("GET", "/v1/tasks/task_A")) == 1
