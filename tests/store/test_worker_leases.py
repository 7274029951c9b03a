"""A lease belongs to the worker token that claimed it; a revoke takes its leases back at once."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.errors import AuthenticationFailed
from omniflash.store import Store, TaskStatus
from omniflash.store.schema import tasks
from tests.store.test_races import assert_money

SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4})


def _submit(store: Store, n: int = 1) -> list[str]:
    key = store.keys.get(1) if store.keys.all() else None
    if key is None:
        store.keys.create("k", 10_000_000, 100_000, 10_000)
        key = store.keys.get(1)
    return [
        store.tasks.submit(key, SPEC, millicredits=1000, estimated_time=1, seed=n).task.id
        for n in range(n)
    ]


def test_only_the_claiming_token_can_write_to_its_lease(store: Store) -> None:
    (task_id,) = _submit(store)
    _, a = store.workers.create("a")
    _, b = store.workers.create("b")
    claim = store.tasks.claim("a/w", 30, worker_id=a.id)
    assert claim is not None and claim.task.lease_worker == a.id
    epoch = claim.epoch
    assert not store.tasks.heartbeat(task_id, epoch, progress=50, lease_s=30, worker_id=b.id)
    assert not store.tasks.complete(task_id, epoch, result_key="r.mp4", ttl_s=60, worker_id=b.id)
    assert not store.tasks.fail(task_id, epoch, "x", retry=False, max_attempts=3, worker_id=b.id)
    assert not store.tasks.release(task_id, epoch, worker_id=b.id)
    task = store.tasks.get(task_id)
    assert (task.status, task.progress, task.lease_epoch, task.attempts) == (
        TaskStatus.PROCESSING,
        0,
        epoch,
        1,
    )
    assert store.tasks.heartbeat(task_id, epoch, progress=50, lease_s=30, worker_id=a.id)
    assert store.tasks.complete(task_id, epoch, result_key="r.mp4", ttl_s=60, worker_id=a.id)
    assert_money(store)


def test_a_revoke_hands_the_tokens_leases_back_untried(store: Store) -> None:
    ids = _submit(store, 3)
    _, a = store.workers.create("a")
    _, b = store.workers.create("b")
    mine = [store.tasks.claim("a/w", 30, worker_id=a.id) for _ in range(2)]
    other = store.tasks.claim("b/w", 30, worker_id=b.id)
    assert all(mine) and other is not None
    store.workers.revoke("a")
    by_id = {t: store.tasks.get(t) for t in ids}
    for claim in mine:
        assert claim is not None
        task = by_id[claim.task.id]
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 0)
        # The old epoch is dead even for a writer without a token check.
        assert not store.tasks.heartbeat(task.id, claim.epoch, progress=1, lease_s=30)
    assert by_id[other.task.id].status is TaskStatus.PROCESSING
    with pytest.raises(AuthenticationFailed):
        store.tasks.claim("a/w", 30, worker_id=a.id)
    assert not store.workers.is_active(a.id) and store.workers.is_active(b.id)
    again = store.tasks.claim("b/w", 30, worker_id=b.id)
    assert again is not None and again.epoch == 2 and again.task.attempts == 1
    assert_money(store)


@pytest.mark.timeout(120)
def test_claims_racing_a_revoke_leave_the_token_no_lease(store: Store) -> None:
    """Claimers of one token against its revoke: whatever the order, once the revoke has
    committed the token holds no lease and gets none."""
    for round_ in range(15):
        _submit(store, 6)
        worker_id = _race(store, f"racer-{round_}", delay=0.001 * (round_ % 5))
        with store.db.read() as conn:
            held = conn.execute(
                sa.select(sa.func.count()).where(
                    tasks.c.lease_worker == worker_id, tasks.c.status == "processing"
                )
            ).scalar_one()
            active = conn.execute(
                sa.select(tasks.c.id).where(tasks.c.status.in_(("pending", "processing")))
            ).scalars()
            assert held == 0, round_
            # Clear the queue for the next round: every task ends, refunded.
            for task_id in list(active):
                store.tasks.cancel(task_id, 1)
    assert_money(store)


def _race(store: Store, name: str, delay: float) -> int:
    """Three threads claim as ``name`` while a fourth revokes it; the token's id."""
    _, worker = store.workers.create(name)
    start = threading.Barrier(4)

    def claimer() -> None:
        start.wait()
        for _ in range(3):
            try:
                store.tasks.claim(f"{name}/w", 30, worker_id=worker.id)
            except AuthenticationFailed:
                return

    def revoker() -> None:
        start.wait()
        time.sleep(delay)
        store.workers.revoke(name)

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    threads.append(threading.Thread(target=revoker))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return worker.id


def test_a_lease_is_not_renewed_past_its_time_limit(store: Store) -> None:
    (task_id,) = _submit(store)
    _, a = store.workers.create("a")
    now = time.time()
    claim = store.tasks.claim("a/w", 30, now=now, worker_id=a.id)
    assert claim is not None
    beat = store.tasks.heartbeat
    assert beat(task_id, claim.epoch, progress=5, lease_s=30, now=now + 50, max_run_s=60)
    assert not beat(task_id, claim.epoch, progress=6, lease_s=30, now=now + 61, max_run_s=60)
    # Without a limit (the in-process workers time themselves) it is renewed.
    assert beat(task_id, claim.epoch, progress=7, lease_s=30, now=now + 61)
    assert store.tasks.get(task_id).progress == 7
