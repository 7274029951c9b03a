"""``HttpTaskSource.preview`` against the app in process: a frame becomes the task's next
``preview`` event and blob; a frame the server refuses, or one for a lost lease, stores
nothing and never fails the task."""

from __future__ import annotations

import pytest

from omniflash.store import TaskStatus, preview_key
from omniflash.worker.http_source import HttpTaskSource, ProtocolError
from tests.events.sse import webp
from tests.remote.conftest import Api


def source_for(api: Api) -> HttpTaskSource:
    return HttpTaskSource("http://testserver", api.token, client=api.client)


def test_previews_through_the_source(api: Api) -> None:
    task_id = api.submit()
    source = source_for(api)
    lease = source.claim("w-0", 1.0)
    assert lease is not None and lease.task_id == task_id
    assert source.heartbeat(lease, 40)
    frames = [webp((320, 180), (n * 40, 0, 0)) for n in range(3)]
    for frame in frames:
        source.preview(lease, frame, 320, 180)
    storage = api.client.app.state.services.storage  # type: ignore[attr-defined]
    events = [e for e in api.store.events.since(1, 0, task_id=task_id) if e.kind == "preview"]
    assert [e.data["index"] for e in events] == [0, 1, 2]
    assert [e.data["progress"] for e in events] == [40, 40, 40]
    for n, (event, frame) in enumerate(zip(events, frames, strict=True)):
        assert event.data["blob"] == preview_key(task_id, n)
        assert b"".join(storage.iter_bytes(event.data["blob"])) == frame
    # A frame the server refuses is the worker's error to log, not the task's end.
    with pytest.raises(ProtocolError):
        source.preview(lease, b"not an image", 320, 180)
    assert api.task(task_id).status is TaskStatus.PROCESSING
    # Once the task is cancelled, a preview stores nothing (and raises nothing).
    api.client.post(f"/v1/tasks/{task_id}/cancel", headers={"Authorization": f"Bearer {api.key}"})
    source.preview(lease, frames[0], 320, 180)
    kinds = [e.kind for e in api.store.events.since(1, 0, task_id=task_id)]
    assert kinds.count("preview") == 3 and kinds[-1] == "end"
    assert not storage.exists(preview_key(task_id, 3))
