"""Task events under races on PostgreSQL: workers heartbeating and adding previews while
cancels, fails, completes and reaps end the same tasks, each side its own process.

Afterwards the money adds up, and each task's events tell one story: one ``end`` (the
task's own end status), nothing after it, ids rising, progress rising within a lease,
preview indexes 0, 1, 2… with no gap or repeat."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import defaultdict

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.errors import Conflict
from omniflash.pricing import Pricing
from omniflash.store import Store, TaskEvent, TaskStatus
from omniflash.store.schema import task_events
from tests.money import assert_money

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

P = Pricing()
TASKS = 40
SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a race", "duration": 4})


def _busy_worker(url: str, leases: list[tuple[str, int]], i: int) -> dict[str, int]:
    """Heartbeats and previews on every lease, then ends some (complete, fail)."""
    store = Store(url, migrate=False)
    out: dict[str, int] = defaultdict(int)
    try:
        for step in range(1, 6):
            for task_id, epoch in leases:
                out["beats"] += store.tasks.heartbeat(
                    task_id, epoch, progress=step * 15, lease_s=60
                )
                out["previews"] += store.tasks.add_preview(
                    task_id, epoch, blob=f"previews/{task_id}/{step}.webp", width=8, height=8
                )
        for n, (task_id, epoch) in enumerate(leases):
            if (n + i) % 3 == 0:
                out["completed"] += store.tasks.complete(
                    task_id, epoch, result_key=f"results/{task_id}.mp4", ttl_s=60
                )
            elif (n + i) % 3 == 1:
                out["failed"] += store.tasks.fail(task_id, epoch, "x", retry=False, max_attempts=9)
    finally:
        store.close()
    return dict(out)


def _previews_recorded(store: Store) -> bool:
    with store.db.read() as conn:
        found = conn.execute(
            sa.select(task_events.c.id).where(task_events.c.kind == "preview").limit(1)
        ).first()
    return found is not None


def _canceller(url: str, key_id: int, ids: list[str]) -> int:
    store = Store(url, migrate=False)
    cancelled = 0
    try:
        for task_id in ids:
            try:
                store.tasks.cancel(task_id, key_id)
                cancelled += 1
            except Conflict:
                pass
    finally:
        store.close()
    return cancelled


def _reaper(url: str, rounds: int) -> int:
    store = Store(url, migrate=False)
    try:
        # It starts once the workers have: a reaper whose process came up first would end
        # every task before a preview was tried, and race nothing.
        deadline = time.monotonic() + 60
        while not _previews_recorded(store) and time.monotonic() < deadline:
            time.sleep(0.005)
        # Reaped at a time past every lease: a lease the workers hold is reaped too.
        return sum(store.tasks.reap(max_attempts=1, now=time.time() + 120) for _ in range(rounds))
    finally:
        store.close()


def test_every_task_ends_once_in_its_events(pg: Store, postgres_url: str) -> None:
    _, key = pg.keys.create("racer", 10**9, 10**6, 10**6)
    ids = [
        pg.tasks.submit(key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1).task.id
        for _ in range(TASKS)
    ]
    leases = []
    for _ in ids:
        claim = pg.tasks.claim("w", 60)
        assert claim is not None
        leases.append((claim.task.id, claim.epoch))
    ctx = mp.get_context("spawn")
    with ctx.Pool(5) as pool:
        jobs = [
            pool.apply_async(_busy_worker, (postgres_url, leases[: TASKS // 2], 0)),
            pool.apply_async(_busy_worker, (postgres_url, leases[TASKS // 2 :], 1)),
            pool.apply_async(_canceller, (postgres_url, key.id, ids[::3])),
            pool.apply_async(_canceller, (postgres_url, key.id, ids[::-4])),
            pool.apply_async(_reaper, (postgres_url, 3)),
        ]
        results = [job.get(timeout=180) for job in jobs]  # a deadlock raises here
    # Whatever is left running is cancelled now: every task ends.
    for task_id in ids:
        if not pg.tasks.get(task_id).status.terminal:
            pg.tasks.cancel(task_id, key.id)
    assert_money(pg)
    assert sum(r.get("previews", 0) for r in results[:2]) > 0
    by_task: dict[str, list[TaskEvent]] = defaultdict(list)
    for event in pg.events.since(key.id, 0, limit=100_000):
        by_task[event.task_id].append(event)
    assert set(by_task) == set(ids)
    for task_id in ids:
        events = by_task[task_id]
        kinds = [e.kind for e in events]
        assert kinds.count("end") == 1, (task_id, kinds)
        assert kinds[-1] == "end", (task_id, kinds)
        assert events[-1].data["status"] == pg.tasks.get(task_id).status.value
        assert [e.id for e in events] == sorted({e.id for e in events})
        previews = [e.data["index"] for e in events if e.kind == "preview"]
        assert previews == list(range(len(previews))), (task_id, previews)
        progress = [e.data["progress"] for e in events if e.kind == "progress"]
        assert progress == sorted(set(progress)), (task_id, progress)
        assert kinds[0] == "status" and events[0].data["status"] == TaskStatus.PROCESSING.value
