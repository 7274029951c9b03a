"""``client.tasks.events`` and ``wait()`` by events through both shells, over real sockets.

The server here is ``tests.client.event_stub.EventServer``, an in-test stand-in that
speaks the events contract and can drop a connection in the middle of an event;
``tests/client/test_events_live.py`` runs the same calls against ``omniflash serve``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from omniflash.client import (
    AsyncClient,
    Client,
    NotFoundError,
    RetryPolicy,
    TaskCancelledError,
    TaskEvent,
    WaitPolicy,
)
from tests.client.event_stub import EventServer, event_server
from tests.client.stubs import Reply, ScriptedServer, error_body, task_body

FAST = RetryPolicy(max_retries=3, backoff=0.01)


@pytest.fixture
def events() -> Iterator[EventServer]:
    with event_server() as server:
        yield server


def script(server: EventServer) -> None:
    """The task's life, told while a client listens: progress, a drop, a preview, the end."""
    # The client has its opening event: what follows happens while it listens.
    assert server.listening.wait(30)
    server.add("status", status="processing", progress=0)
    server.add("progress", progress=25, eta_s=6.0)
    server.drop_next(1)
    server.add("progress", progress=50, eta_s=4.0)
    server.add("preview", index=0, url="http://x/p0.webp", width=320, height=180, progress=50)
    server.add("progress", progress=75, eta_s=2.0)
    task = {"id": server.task_id, "status": "completed", "progress": 100}
    server.add("end", task=task)


def played(server: EventServer) -> threading.Thread:
    thread = threading.Thread(target=script, args=(server,), daemon=True)
    thread.start()
    return thread


def test_sync_events_resume_after_a_drop_without_a_gap(events: EventServer) -> None:
    events.drop_next(2)  # the first connection breaks after its status event and one more
    with Client(events.url, "k", retry=FAST) as client:
        thread = played(events)
        seen = list(client.tasks.events(events.task_id))
    thread.join()
    ids = [e.id for e in seen]
    assert ids == ["0", "1", "2", "3", "4", "5", "6"], "every event once, in order"
    assert [e.kind for e in seen] == [
        "status",
        "status",
        "progress",
        "progress",
        "preview",
        "progress",
        "end",
    ]
    assert seen[4].preview_url == "http://x/p0.webp"
    end = seen[-1].task
    assert end is not None and end.status == "completed"
    assert len(events.last_event_ids) >= 3 and events.last_event_ids[0] is None
    assert all(i is not None for i in events.last_event_ids[1:]), "each resume names its last id"


def test_async_events_resume_after_a_drop_without_a_gap(events: EventServer) -> None:
    events.drop_next(1)

    async def follow() -> list[TaskEvent]:
        async with AsyncClient(events.url, "k", retry=FAST) as client:
            return [e async for e in client.tasks.events(events.task_id)]

    thread = played(events)
    seen = asyncio.run(follow())
    thread.join()
    assert [e.id for e in seen] == ["0", "1", "2", "3", "4", "5", "6"]
    assert seen[-1].kind == "end"


def test_a_finished_task_sends_its_end_and_a_resume_replays(events: EventServer) -> None:
    events.listening.set()  # no client yet: the task ends before one connects
    script(events)
    with Client(events.url, "k", retry=FAST) as client:
        seen = list(client.tasks.events(events.task_id))
        assert [e.kind for e in seen] == ["end"] and seen[0].id == "6"
        resumed = list(client.tasks.events(events.task_id, last_event_id="3"))
        assert [e.id for e in resumed] == ["4", "5", "6"]


def test_stopping_the_iteration_closes_the_stream(events: EventServer) -> None:
    with Client(events.url, "k", retry=FAST) as client:
        for event in client.tasks.events(events.task_id):
            assert event.kind == "status"
            break
        # The server writes a keep-alive into a closed connection within a few tries.
        assert events.disconnected.wait(timeout=10)


def test_wait_follows_events_in_both_shells(events: EventServer) -> None:
    seen: list[int] = []
    with Client(events.url, "k", retry=FAST) as client:
        thread = played(events)
        done = client.tasks.wait(events.task_id, on_progress=lambda t: seen.append(t.progress))
    thread.join()
    assert done.status == "completed" and seen[-1] == 100
    assert seen == sorted(seen) and 25 in seen and 75 in seen

    async def wait_async() -> str:
        async with AsyncClient(events.url, "k", retry=FAST) as client:
            return (await client.tasks.wait(events.task_id)).status

    assert asyncio.run(wait_async()) == "completed"


def test_wait_by_events_keeps_the_deadline(events: EventServer) -> None:
    with Client(events.url, "k", retry=FAST) as client:
        start = time.monotonic()
        with pytest.raises(Exception, match="did not finish in time") as caught:
            client.tasks.wait(events.task_id, timeout=0.6)
        assert time.monotonic() - start < 10, "the deadline bounds a silent stream"
    assert getattr(caught.value, "task_id", None) == events.task_id


def test_wait_on_an_older_server_polls_and_remembers(stub: ScriptedServer) -> None:
    stub.on("GET", "/v1/tasks/task_A", Reply(200, task_body("task_A", "cancelled", 40)))
    stub.on(
        "GET",
        "/v1/tasks/task_A/events",
        Reply(405, error_body(405, "Method not allowed", "invalid_request_error")),
    )
    with Client(stub.url, "k", retry=FAST, wait=WaitPolicy(0, 0.01, 10)) as client:
        with pytest.raises(TaskCancelledError):
            client.tasks.wait("task_A")
        assert client.tasks.wait("task_A", raise_on_failure=False).status == "cancelled"
    assert len(stub.calls("GET", "/v1/tasks/task_A/events")) == 1, "asked once per client"
    with Client(stub.url, "k", retry=FAST) as client, pytest.raises(NotFoundError):
        list(client.tasks.events("task_missing"))
