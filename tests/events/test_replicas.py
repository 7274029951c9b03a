"""Across replicas on PostgreSQL: two ``omniflash serve --workers 0`` processes and one
remote ``omniflash worker``; a task submitted on A and run by the worker through A is
streamed by clients on B, and a client that drops and comes back (on A) misses nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from omniflash.store import Store
from tests.conftest import LiveServer, _truncate, make_live_server
from tests.events.sse import Event, events_of, read_until
from tests.remote.conftest import WorkerProcess, start_worker, worker_token

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

# Long enough for the worker to report its progress several times.
BODY = {"model": "Omni-Flash-Ext", "prompt": "kites", "duration": 10, "resolution": "1080p"}


@pytest.fixture
def replicas(
    postgres_url: str, tmp_path: Path
) -> Iterator[tuple[LiveServer, LiveServer, WorkerProcess]]:
    store = Store(postgres_url)
    _truncate(store)
    store.close()
    first = make_live_server(
        tmp_path,
        "--workers",
        "0",
        OMNIFLASH_DATABASE_URL=postgres_url,
        OMNIFLASH_LEASE_SECONDS="10",
    )
    other = LiveServer(data_dir=first.data_dir, env=first.env, api_key=first.api_key)
    other.extra_args = first.extra_args
    worker = start_worker(first, worker_token(first, "events-gpu"), "events-gpu")
    try:
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(first.start), pool.submit(other.start)]:
                started.result()
        worker.wait_idle()
        yield first, other, worker
    finally:
        worker.stop()
        other.stop()
        first.stop()
    first.assert_money()


FROM_THE_START = {"Last-Event-ID": "0"}
"""Every event of the task, however soon the worker took it: nothing to race."""


def collect(server: LiveServer, path: str, out: list[Event], ready: threading.Event) -> None:
    with server.client() as client, client.stream("GET", path, headers=FROM_THE_START) as response:
        assert response.status_code == 200
        for event in events_of(response):
            if event.kind == "comment":
                continue
            out.append(event)
            ready.set()
            if event.kind == "end":
                return


def comparable(event: Event, *servers: LiveServer) -> tuple[int, str, str]:
    """An event without what is signed per send (a preview's URL and its expiry), and
    with the replicas' addresses (each signs the result URL for its own) made one."""
    data = {k: v for k, v in event.data.items() if k not in ("url", "expires_at")}
    text = json.dumps(data, sort_keys=True)
    for server in servers:
        text = text.replace(server.url, "SERVER")
    return event.id, event.kind, text


def test_a_task_run_through_a_is_streamed_on_b(
    replicas: tuple[LiveServer, LiveServer, WorkerProcess],
) -> None:
    a, b, _worker = replicas
    with a.client() as on_a, b.client() as on_b:
        response = on_a.post("/v1/videos/generations", json=BODY)
        assert response.status_code == 200, response.text
        task_id = response.json()["data"][0]["task_id"]
        path = f"/v1/tasks/{task_id}/events"
        steady: list[Event] = []
        ready = threading.Event()
        reader = threading.Thread(target=collect, args=(b, path, steady, ready), daemon=True)
        reader.start()
        assert ready.wait(30)
        # A client on B that drops after the first progress, and comes back on A.
        with on_b.stream("GET", path, headers=FROM_THE_START) as dropped:
            first = read_until(events_of(dropped), "progress")
        with on_a.stream("GET", path, headers={"Last-Event-ID": str(first[-1].id)}) as again:
            rest = read_until(events_of(again), "end")
        reader.join(120)
        assert not reader.is_alive()
        poll = on_b.get(f"/v1/tasks/{task_id}").json()["data"]
    kinds = [e.kind for e in steady]
    assert kinds[0] == "status" and steady[0].data["status"] == "processing"
    assert kinds[-1] == "end" and kinds.count("end") == 1
    assert kinds.count("progress") >= 1, kinds
    progress = [e.data["progress"] for e in steady if e.kind == "progress"]
    assert progress == sorted(progress) and len(set(progress)) == len(progress)
    ids = [e.id for e in steady]
    assert ids == sorted(set(ids))
    assert steady[-1].data == {"task_id": task_id, "task": poll}
    assert poll["status"] == "completed"
    # The client that dropped, and resumed on the other replica, got exactly the same.
    resumed = [comparable(e, a, b) for e in [*first, *rest]]
    assert resumed == [comparable(e, a, b) for e in steady]


def test_the_key_stream_on_b_sees_tasks_submitted_on_a(
    replicas: tuple[LiveServer, LiveServer, WorkerProcess],
) -> None:
    a, b, _worker = replicas
    seen: list[Event] = []
    with b.client() as on_b, on_b.stream("GET", "/v1/events") as response:
        events = events_of(response)
        with a.client() as on_a:
            ids = []
            for prompt in ("one", "two"):
                body = {"model": "Omni-Flash-Ext", "prompt": prompt, "duration": 4}
                ids.append(
                    on_a.post("/v1/videos/generations", json=body).json()["data"][0]["task_id"]
                )
        ended: set[str] = set()
        for event in events:
            if event.kind == "comment":
                continue
            seen.append(event)
            if event.kind == "end":
                ended.add(event.data["task_id"])
                if ended == set(ids):
                    break
    for task_id in ids:
        mine = [e.kind for e in seen if e.data["task_id"] == task_id]
        assert mine[0] == "status" and mine[-1] == "end" and mine.count("end") == 1
    assert [e.id for e in seen] == sorted(e.id for e in seen)
    with httpx.Client() as plain:
        assert plain.get(b.url + "/v1/events").status_code == 401
