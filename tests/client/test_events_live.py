"""``client.tasks.events`` and ``wait()`` by events against ``omniflash serve`` (real
processes: the server and its preview-engine workers)."""

from __future__ import annotations

import asyncio

import pytest

from omniflash.client import AsyncClient, Client, NotFoundError, TaskCancelledError, TaskEvent
from tests.client.stubs import ImageHost
from tests.conftest import LiveServer


def test_events_of_a_task_from_submit_to_end(server: LiveServer, images: ImageHost) -> None:
    url = images.held_url()
    with Client(server.url, server.api_key) as client:
        task = client.videos.generate("followed", duration=4, images=[url])
        seen: list[TaskEvent] = []
        for event in client.tasks.events(task.id):
            seen.append(event)
            if len(seen) == 1:
                images.release(url)  # the task runs only once the client listens
        polled = client.tasks.get(task.id)
    kinds = [e.kind for e in seen]
    assert kinds[0] == "status" and kinds[-1] == "end" and kinds.count("end") == 1
    assert {e.task_id for e in seen} == {task.id}
    ids = [int(e.id) for e in seen]
    assert ids[1:] == sorted(set(ids[1:])) and ids[0] <= ids[1], "in order, never twice"
    progress = [e.progress for e in seen if e.kind == "progress" and e.progress is not None]
    assert progress == sorted(progress)
    end = seen[-1].task
    assert end is not None and end.status == "completed" and end.video_urls
    assert end.raw == polled.raw, "the end's task is GET /v1/tasks/{id}'s data"


def test_a_resume_replays_after_the_last_event_id(server: LiveServer) -> None:
    async def follow() -> tuple[list[TaskEvent], list[TaskEvent]]:
        async with AsyncClient(server.url, server.api_key) as client:
            task = await client.videos.generate_and_wait("done", duration=4)
            first = [e async for e in client.tasks.events(task.id, last_event_id="0")]
            again = [e async for e in client.tasks.events(task.id, last_event_id=first[0].id)]
            return first, again

    first, again = asyncio.run(follow())
    assert len(first) >= 2 and first[0].kind == "status" and first[-1].kind == "end"
    assert [e.id for e in again] == [e.id for e in first[1:]], "after the id, none twice"


def test_wait_by_events_reports_progress_and_a_cancel_ends_it(
    server: LiveServer, images: ImageHost
) -> None:
    url = images.held_url()
    statuses: list[str] = []
    with Client(server.url, server.api_key) as client:
        task = client.videos.generate("cancelled while followed", duration=4, images=[url])

        def cancel_once_processing(seen: object) -> None:
            status = getattr(seen, "status", "")
            statuses.append(status)
            if status == "processing" and statuses.count("processing") == 1:
                client.tasks.cancel(task.id)

        with pytest.raises(TaskCancelledError):
            client.tasks.wait(task.id, timeout=60, on_progress=cancel_once_processing)
        assert not client._core.streams.unsupported, "omniflash serve has events"
        with pytest.raises(NotFoundError):
            list(client.tasks.events("task_not_there"))
    images.release(url)
    assert statuses[-1] == "cancelled"
