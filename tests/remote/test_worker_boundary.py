"""The worker boundary, black-box: a real ``omniflash serve`` on SQLite and on PostgreSQL,
two worker tokens, and a worker that does what an attacker holding a token would do.

After every test the money adds up (``assert_money``): balance = start − charges + refunds,
one charge a task, no refund twice.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from omniflash.store import Store, TaskStatus
from tests.conftest import LiveServer, _truncate, make_live_server
from tests.events.sse import webp
from tests.remote.conftest import png_data_uri, worker_token
from tests.remote.videos import mp4_bytes, png_bytes
from tests.store.test_races import assert_money

GOOD = {"frames": 96, "width": 1280, "height": 720, "fps": 24, "duration": 4}


@dataclasses.dataclass
class Door:
    """The server, its store, and clients for two worker tokens (``a``, ``b``) and the key."""

    server: LiveServer
    store: Store
    a: httpx.Client
    b: httpx.Client
    key: httpx.Client

    def submit(self, **fields: Any) -> str:
        body = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4, **fields}
        response = self.key.post("/v1/videos/generations", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["data"][0]["task_id"])

    def claim(self, who: httpx.Client, task_id: str) -> int:
        response = who.post("/worker/v1/claim", json={"owner": "w", "wait_s": 5})
        assert response.status_code == 200, response.text
        lease = response.json()["lease"]
        assert lease["task_id"] == task_id
        return int(lease["epoch"])

    def balance(self) -> float:
        return float(self.key.get("/v1/account").json()["data"]["balance"])

    def task(self, task_id: str) -> Any:
        return self.store.tasks.get(task_id)

    def result_files(self, task_id: str) -> list[str]:
        return sorted(p.name for p in (self.server.data_dir / "blobs").rglob(f"{task_id}.*"))


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def door(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Door]:
    env: dict[str, str] = {"OMNIFLASH_LEASE_SECONDS": "20", "OMNIFLASH_MAX_ATTEMPTS": "3"}
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        store = Store(url)
        _truncate(store)
        store.close()
        env["OMNIFLASH_DATABASE_URL"] = url
    server = make_live_server(tmp_path_factory.mktemp("door"), "--workers", "0", **env)
    tokens = [worker_token(server, name) for name in ("gpu-a", "gpu-b")]
    server.start()
    store = Store(
        env.get("OMNIFLASH_DATABASE_URL") or f"sqlite:///{server.data_dir / 'omniflash.db'}",
        migrate=False,
    )
    clients = [
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {t}"}, timeout=30)
        for t in tokens
    ]
    try:
        with server.client() as key:
            yield Door(server, store, clients[0], clients[1], key)
    finally:
        for client in clients:
            client.close()
        store.close()
        server.stop()


@pytest.fixture(autouse=True)
def money(door: Door) -> Iterator[None]:
    """Every test leaves no task in flight, and the books balanced."""
    yield
    for task in door.key.get("/v1/tasks", params={"limit": 100}).json()["data"]:
        if task["status"] in ("pending", "processing"):
            door.key.post(f"/v1/tasks/{task['id']}/cancel")
    assert_money(door.store)


def _post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    """A JSON body as Python writes it (escaped), so lone surrogates travel as sent."""
    headers = {"Content-Type": "application/json"}
    return client.post(path, content=json.dumps(body), headers=headers)


def _not_found(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["type"]


def test_another_token_cannot_touch_a_lease(door: Door) -> None:
    task_id = door.submit(image_urls=[png_data_uri()])
    epoch = door.claim(door.a, task_id)
    tasks = f"/worker/v1/tasks/{task_id}"
    unknown = "/worker/v1/tasks/task_01ARZ3NDEKTSV4RRFFQ69G5FAV"
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/inputs/0", {"params": {"epoch": epoch}}),
        ("POST", "/heartbeat", {"json": {"epoch": epoch, "progress": 90}}),
        ("PUT", "/result", {"params": {"epoch": epoch}, "content": mp4_bytes()}),
        ("POST", "/complete", {"json": {"epoch": epoch, "result": GOOD}}),
        ("POST", "/fail", {"json": {"epoch": epoch, "message": "no", "retry": False}}),
        ("POST", "/release", {"json": {"epoch": epoch}}),
        ("POST", "/previews", {"params": {"epoch": epoch}, "content": webp()}),
    ]
    for method, path, kwargs in calls:
        # B, with A's epoch and with guesses around it: as if the task did not exist.
        for guess in (epoch, 0, 1, 2, 3):
            if "json" in kwargs:
                kwargs = {**kwargs, "json": {**kwargs["json"], "epoch": guess}}
            else:
                kwargs = {**kwargs, "params": {"epoch": guess}}
            theirs = door.b.request(method, tasks + path, **kwargs)
            nobody = door.b.request(method, unknown + path, **kwargs)
            assert _not_found(theirs) == _not_found(nobody) == (404, "not_found_error"), path
            assert "No task" in theirs.json()["error"]["message"]
    task = door.task(task_id)
    assert (task.status, task.lease_epoch, task.attempts, task.progress) == (
        TaskStatus.PROCESSING,
        epoch,
        1,
        0,
    )
    assert door.result_files(task_id) == []
    # A still holds it, reads its inputs and finishes it.
    assert door.a.get(tasks + "/inputs/0", params={"epoch": epoch}).status_code == 200
    beat = door.a.post(tasks + "/heartbeat", json={"epoch": epoch, "progress": 40})
    assert beat.json() == {"held": True}
    put = door.a.put(tasks + "/result", params={"epoch": epoch}, content=mp4_bytes())
    assert put.json() == {"held": True}
    done = door.a.post(tasks + "/complete", json={"epoch": epoch, "result": GOOD})
    assert done.json() == {"held": True}
    assert door.task(task_id).status is TaskStatus.COMPLETED


def test_a_revoked_token_loses_its_leases_and_its_long_poll(door: Door) -> None:
    name = f"doomed-{time.monotonic_ns()}"
    token = worker_token(door.server, name)
    doomed = httpx.Client(
        base_url=door.server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    with doomed:
        first = door.submit()
        epoch = door.claim(doomed, first)
        answers: list[httpx.Response] = []
        poll = threading.Thread(
            target=lambda: answers.append(
                doomed.post("/worker/v1/claim", json={"owner": "w", "wait_s": 15})
            )
        )
        poll.start()
        time.sleep(0.5)  # the long poll is waiting
        door.server.cli("workers", "revoke", name)
        revoked_at = time.monotonic()
        task = door.task(first)
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 0)
        second = door.submit()  # wakes the waiting poll, which must not take it
        poll.join(timeout=20)
        assert answers and answers[0].status_code == 401, answers[0].text
        assert "lease" not in answers[0].text
        assert time.monotonic() - revoked_at < 10
        beat = doomed.post(f"/worker/v1/tasks/{first}/heartbeat", json={"epoch": epoch})
        assert beat.status_code == 401
    # The tasks are there for a live token, the first one untried.
    assert door.claim(door.a, first) == epoch + 1
    assert door.task(first).attempts == 1
    assert door.task(second).status is TaskStatus.PENDING


BAD_NUMBERS = [
    '{"duration": -400}',
    '{"duration": 0}',
    '{"frames": -5, "duration": -1}',
    '{"duration": NaN}',
    '{"duration": Infinity}',
    '{"duration": -Infinity}',
    '{"duration": 1e400}',
    '{"frames": 1e400}',
    '{"width": 64, "height": 64}',
    '{"duration": 40}',
    '{"fps": 0}',
]


def test_a_workers_numbers_never_move_money(door: Door) -> None:
    before = door.balance()
    task_id = door.submit(duration=8)
    epoch = door.claim(door.a, task_id)
    tasks = f"/worker/v1/tasks/{task_id}"
    video = mp4_bytes(1280, 720, 8 * 24)
    assert door.a.put(tasks + "/result", params={"epoch": epoch}, content=video).json() == {
        "held": True
    }
    charged = door.balance()
    assert before - charged == 2.0  # 8 s of 720p
    for result in BAD_NUMBERS:
        body = f'{{"epoch": {epoch}, "result": {result}}}'
        answer = door.a.post(
            tasks + "/complete", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, (result, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"
    for epoch_text in ("2147483648", "-1", "NaN", "1e400", "1.5"):
        for path, extra in (("/complete", ', "result": {}'), ("/heartbeat", ""), ("/release", "")):
            body = f'{{"epoch": {epoch_text}{extra}}}'
            answer = door.a.post(
                tasks + path, content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 400, (path, epoch_text, answer.text)
        put = door.a.put(tasks + "/result", params={"epoch": epoch_text}, content=b"x")
        assert put.status_code == 400, (epoch_text, put.text)
    task = door.task(task_id)
    assert (task.status, task.lease_epoch, task.attempts) == (TaskStatus.PROCESSING, epoch, 1)
    assert door.balance() == charged
    # The file decides: 8 s of video, priced by the server, whatever the worker says.
    done = door.a.post(tasks + "/complete", json={"epoch": epoch, "result": {"duration": 8}})
    assert done.json() == {"held": True}
    task = door.task(task_id)
    assert task.status is TaskStatus.COMPLETED and task.credits == 2000
    assert (task.info["frames"], task.info["duration"]) == (192, 8)
    assert door.balance() == charged


def _zeros() -> bytes:
    return bytes(4096)


def _small() -> bytes:
    return mp4_bytes(64, 64, 4)


def _not_faststart() -> bytes:
    return mp4_bytes(1280, 720, 96, faststart=False)


def test_results_that_are_not_the_video_fail_each_attempt_then_the_task(door: Door) -> None:
    before = door.balance()
    task_id = door.submit()
    tasks = f"/worker/v1/tasks/{task_id}"
    bad = [_zeros, png_bytes, _small, _not_faststart]
    for attempt, make in enumerate(bad[:3], start=1):
        epoch = door.claim(door.a, task_id)
        put = door.a.put(tasks + "/result", params={"epoch": epoch}, content=make())
        assert put.json() == {"held": True}
        done = door.a.post(tasks + "/complete", json={"epoch": epoch, "result": GOOD})
        assert done.status_code == 400, done.text
        assert "refused" in done.json()["error"]["message"]
        assert door.result_files(task_id) == [], make.__name__  # the file is gone
        task = door.task(task_id)
        if attempt < 3:
            assert (task.status, task.attempts) == (TaskStatus.PENDING, attempt)
            assert door.balance() == before - 1.0
    task = door.task(task_id)
    assert task.status is TaskStatus.FAILED and "refused" in (task.error or "")
    assert door.balance() == before
    public = door.key.get(f"/v1/tasks/{task_id}").json()["data"]
    assert public["status"] == "failed"
    # The fourth kind on a task of its own: refused the same way.
    other = door.submit()
    epoch = door.claim(door.a, other)
    door.a.put(
        f"/worker/v1/tasks/{other}/result", params={"epoch": epoch}, content=_not_faststart()
    )
    done = door.a.post(f"/worker/v1/tasks/{other}/complete", json={"epoch": epoch, "result": GOOD})
    assert done.status_code == 400 and "faststart" in done.json()["error"]["message"]
    assert door.task(other).status is TaskStatus.PENDING


def test_hostile_text_and_ids_answer_4xx(door: Door) -> None:
    task_id = door.submit()
    epoch = door.claim(door.a, task_id)
    tasks = f"/worker/v1/tasks/{task_id}"
    for message in ("a\u0000b", "\ud800", "bell\u0007"):
        body = {"epoch": epoch, "message": message, "retry": False}
        assert _post(door.a, tasks + "/fail", body).status_code == 400
    for owner in ("w\u0000", "\udfff"):
        claim = _post(door.a, "/worker/v1/claim", {"owner": owner, "wait_s": 0})
        assert claim.status_code == 400
    for bad_id in (
        "task_x%00",
        "%00",
        "task_01ARZ3NDEKTSV4RRFFQ69G5FA%00",
        "x" * 5000,
        "%ED%A0%80",
    ):
        answer = door.a.post(f"/worker/v1/tasks/{bad_id}/heartbeat", json={"epoch": 1})
        assert answer.status_code == 404, (bad_id, answer.text)
        frame = door.a.post(
            f"/worker/v1/tasks/{bad_id}/previews", params={"epoch": 1}, content=webp()
        )
        assert frame.status_code == 404, (bad_id, frame.text)
    for bad_epoch in ("", "x", "\x00", "9" * 400, "-1"):
        frame = door.a.post(tasks + "/previews", params={"epoch": bad_epoch}, content=webp())
        assert frame.status_code in (200, 400), (bad_epoch, frame.text)
        assert frame.status_code == 400 or frame.json() == {"held": False}
    door.a.put(tasks + "/result", params={"epoch": epoch}, content=mp4_bytes())
    for note in ("a\u0000b", "\ud800", {"deep": ["\x1b[31m"]}):
        info = {**GOOD, "note": note}
        answer = _post(door.a, tasks + "/complete", {"epoch": epoch, "result": info})
        assert answer.status_code == 400, (note, answer.text)
    big = {**GOOD, "note": "x" * 20_000}
    assert door.a.post(tasks + "/complete", json={"epoch": epoch, "result": big}).status_code == 400
    assert door.task(task_id).status is TaskStatus.PROCESSING
    fine = door.a.post(tasks + "/fail", json={"epoch": epoch, "message": "out of\nmemory\t!"})
    assert fine.json() == {"held": True}
    assert door.task(task_id).error == "out of\nmemory\t!"


def test_the_config_names_the_protocol(door: Door, tmp_path: Path) -> None:
    from omniflash.worker.source import PROTOCOL_VERSION

    config = door.a.get("/worker/v1/config").json()
    assert config["protocol"] == PROTOCOL_VERSION and config["worker"] == "gpu-a"
