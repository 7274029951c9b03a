"""PostgreSQL: two tasks' events that commit out of id order (the later id first) both
reach the key's stream; ids are drawn at insert, not at commit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from omniflash.store import Store
from omniflash.store.events import record
from tests.conftest import _truncate, running_server
from tests.events.sse import Event, events_of, submit

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def next_event(events: Iterator[Event], keep_alives: int = 20) -> Event:
    """The next event, within ``keep_alives`` comments (10 s): a missed one fails."""
    for _ in range(keep_alives):
        event = next(events)
        if event.kind != "comment":
            return event
    raise AssertionError("no event came")


def test_a_late_commit_of_an_earlier_id_is_still_sent(postgres_url: str, tmp_path: Path) -> None:
    store = Store(postgres_url)
    _truncate(store)
    env = {"OMNIFLASH_DATABASE_URL": postgres_url, "OMNIFLASH_EVENTS_KEEPALIVE_S": "0.5"}
    try:
        with (
            running_server(tmp_path, "--workers", "0", **env) as server,
            server.client() as client,
        ):
            first, second = submit(client, "first"), submit(client, "second")
            key_id = store.tasks.get(first).key_id
            with client.stream("GET", "/v1/events") as response:
                events = events_of(response)
                assert next(events).kind == "comment"  # connected, nothing yet
                with store.db.write() as slow:
                    # The earlier id, not committed until the later one was sent.
                    record(slow, task_id=first, key_id=key_id, kind="progress", data={"n": 1})
                    with store.db.write() as fast:
                        record(fast, task_id=second, key_id=key_id, kind="progress", data={"n": 2})
                    got = next_event(events)
                    assert got.data["task_id"] == second
                late = next_event(events)
            assert late.data["task_id"] == first and late.id < got.id
            for task_id in (first, second):
                assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
    finally:
        store.close()
