"""Task events in the store: each written in the transaction of the change it reports,
read after an id, announced after the commit (SQLite) and deleted with the task's files."""

from __future__ import annotations

import time

import pytest

from omniflash.store import Store, TaskEvent
from tests.store.test_store import submit


def kinds(events: list[TaskEvent]) -> list[tuple[str, dict[str, object]]]:
    return [(e.kind, e.data) for e in events]


def test_every_change_of_a_task_is_an_event_in_order(store: Store) -> None:
    _, key = store.keys.create("k", 10**9, 1000, 100)
    task = submit(store, key)
    assert store.events.since(key.id, 0) == []  # a submit is no event: the stream shows it
    claim = store.tasks.claim("w", 60)
    assert claim is not None
    t0 = time.time()
    assert store.tasks.heartbeat(task.id, claim.epoch, progress=40, lease_s=60)
    assert store.tasks.heartbeat(task.id, claim.epoch, progress=40, lease_s=60)
    assert store.tasks.heartbeat(task.id, claim.epoch, progress=20, lease_s=60)
    assert not store.tasks.heartbeat(task.id, claim.epoch + 1, progress=90, lease_s=60)
    assert store.tasks.add_preview(
        task.id, claim.epoch, blob="previews/a/0.webp", width=8, height=4
    )
    assert not store.tasks.add_preview(task.id, claim.epoch + 1, blob="x", width=8, height=4)
    assert store.tasks.fail(task.id, claim.epoch, "again", retry=True, max_attempts=3)
    again = store.tasks.claim("w", 60)
    assert again is not None
    assert store.tasks.add_preview(
        task.id, again.epoch, blob="previews/a/1.webp", width=8, height=4
    )
    assert store.tasks.complete(task.id, again.epoch, result_key="results/r.mp4", ttl_s=60)
    events = store.events.since(key.id, 0)
    assert kinds(events) == [
        ("status", {"status": "processing", "progress": 0}),
        ("progress", {"progress": 40, "eta_s": events[1].data["eta_s"]}),
        (
            "preview",
            {"blob": "previews/a/0.webp", "index": 0, "width": 8, "height": 4, "progress": 40},
        ),
        ("status", {"status": "pending", "progress": 40}),
        ("status", {"status": "processing", "progress": 40}),
        (
            "preview",
            {"blob": "previews/a/1.webp", "index": 1, "width": 8, "height": 4, "progress": 40},
        ),
        ("end", {"status": "completed"}),
    ]
    eta = events[1].data["eta_s"]
    assert isinstance(eta, int) and 0 <= eta <= (time.time() - t0 + 5) * 2
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))
    assert all(e.task_id == task.id for e in events)
    # Resuming after any id gives exactly what came after it.
    for n, event in enumerate(events):
        assert store.events.since(key.id, event.id) == events[n + 1 :]
    assert store.events.since(key.id, 0, limit=2) == events[:2]
    assert store.events.last_id(key.id, task.id) == ids[-1]


def test_every_end_is_one_end_event(store: Store) -> None:
    _, key = store.keys.create("k", 10**9, 1000, 100)
    cancelled_pending = submit(store, key)
    store.tasks.cancel(cancelled_pending.id, key.id)
    cancelled_running, reaped, failed = (submit(store, key) for _ in range(3))
    claims = {}
    for _ in range(3):
        c = store.tasks.claim("w", 60)
        assert c is not None
        claims[c.task.id] = c
    store.tasks.cancel(cancelled_running.id, key.id)
    assert store.tasks.fail(failed.id, claims[failed.id].epoch, "no", retry=False, max_attempts=3)
    assert store.tasks.reap(max_attempts=1, now=time.time() + 3600) == 1
    ends = {e.task_id: e.data["status"] for e in store.events.since(key.id, 0) if e.kind == "end"}
    assert ends == {
        cancelled_pending.id: "cancelled",
        cancelled_running.id: "cancelled",
        reaped.id: "failed",
        failed.id: "failed",
    }


def test_a_key_reads_only_its_own_events(store: Store) -> None:
    _, mine = store.keys.create("mine", 10**9, 1000, 100)
    _, theirs = store.keys.create("theirs", 10**9, 1000, 100)
    my_task, their_task = submit(store, mine), submit(store, theirs)
    store.tasks.cancel(my_task.id, mine.id)
    store.tasks.cancel(their_task.id, theirs.id)
    assert [e.task_id for e in store.events.since(mine.id, 0)] == [my_task.id]
    assert store.events.since(mine.id, 0, task_id=their_task.id) == []
    assert store.events.last_id(mine.id, their_task.id) == 0
    for odd in ("", "\x00", "\ud800", "x" * 5000):
        assert store.events.since(mine.id, 0, task_id=odd) == []


def test_a_revoked_workers_tasks_go_back_pending(store: Store) -> None:
    _, key = store.keys.create("k", 10**9, 1000, 100)
    task = submit(store, key)
    _, worker = store.workers.create("gpu")
    assert store.tasks.claim("w", 60, worker_id=worker.id) is not None
    store.workers.revoke("gpu")
    assert kinds(store.events.since(key.id, 0))[-1] == (
        "status",
        {"status": "pending", "progress": 0},
    )
    store.tasks.cancel(task.id, key.id)


def test_events_go_with_the_tasks_files_and_with_age(store: Store) -> None:
    _, key = store.keys.create("k", 10**9, 1000, 100)
    gone, kept = submit(store, key), submit(store, key)
    store.tasks.cancel(gone.id, key.id)
    store.tasks.cancel(kept.id, key.id)
    store.tasks.mark_result_deleted(gone.id)
    assert [e.task_id for e in store.events.since(key.id, 0)] == [kept.id]
    assert store.events.sweep(max_age_s=3600) == 0
    assert store.events.sweep(max_age_s=3600, now=time.time() + 7200) == 1
    assert store.events.since(key.id, 0) == []


def test_sqlite_announces_events_after_the_commit_only(tmp_path: pytest.TempPathFactory) -> None:
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    try:
        told: list[set[int]] = []
        seen_at_hook: list[int] = []

        def hook(keys: set[int]) -> None:
            told.append(keys)
            # Called after the commit: a reader on another connection sees the row.
            seen_at_hook.append(len(store.events.since(next(iter(keys)), 0)))

        store.db.event_hooks.append(hook)
        _, key = store.keys.create("k", 10**9, 1000, 100)
        task = submit(store, key)
        assert told == []  # no event, no news
        claim = store.tasks.claim("w", 60)
        assert claim is not None
        assert told == [{key.id}] and seen_at_hook == [1]
        with pytest.raises(RuntimeError), store.db.write() as conn:
            from omniflash.store.events import record

            record(conn, task_id=task.id, key_id=key.id, kind="progress", data={})
            raise RuntimeError("rolled back")
        assert told == [{key.id}]  # a rolled-back event is never announced
        assert store.tasks.heartbeat(task.id, claim.epoch, progress=5, lease_s=60)
        assert len(told) == 2
        store.tasks.cancel(task.id, key.id)
    finally:
        store.close()
