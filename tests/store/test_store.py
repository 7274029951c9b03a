"""The store suite: runs on SQLite and, with OMNIFLASH_TEST_POSTGRES_URL, on PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.errors import (
    Conflict,
    IdempotencyMismatch,
    NotFound,
    PaymentRequired,
    RateLimited,
)
from omniflash.pricing import Pricing
from omniflash.store import IdempotencyRequest, KeyInfo, Store, TaskStatus
from tests.plain_reads import key_of, tasks_of

P = Pricing()


def spec(**fields: Any) -> Any:
    body = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}
    body.update(fields)
    return parse_generation_request(body)


def submit(store: Store, key: KeyInfo, **fields: Any) -> Any:
    s = spec(**fields)
    return store.tasks.submit(key, s, millicredits=P.hold(s), estimated_time=5, seed=7).task


def held(claim: Any) -> tuple[str, int]:
    return claim.task.id, claim.epoch


def balanced(store: Store, key: KeyInfo) -> int:
    balance = store.keys.get(key.id).balance
    assert balance == store.keys.ledger_sum(key.id)
    return balance


def test_keys_are_hashed_and_authenticate(store: Store) -> None:
    plain, info = store.keys.create("k", 5000, 60, 4)
    assert key_of(store, plain) == info
    assert key_of(store, plain + "x") is None
    with store.db.read() as conn:
        stored = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM api_keys").all()]
    assert all(plain not in str(row) for row in stored)
    store.keys.revoke(info.prefix)
    assert key_of(store, plain) is None


def test_topup_and_unknown_key(store: Store) -> None:
    plain, info = store.keys.create("k", 0, 60, 4)
    assert store.keys.topup(plain, 2500).balance == 2500
    assert balanced(store, info) == 2500
    with pytest.raises(NotFound):
        store.keys.topup("of_nonexistent_key", 1)


def test_submit_charges_and_failure_refunds(store: Store) -> None:
    _, key = store.keys.create("k", 5000, 60, 4)
    task = submit(store, key, resolution="1080p", duration=10)
    assert task.status is TaskStatus.PENDING and task.credits == 4000
    assert balanced(store, key) == 1000
    claim = store.tasks.claim("w1", 30)
    assert claim is not None and claim.task.id == task.id
    assert store.tasks.fail(*held(claim), "boom", retry=False, max_attempts=3)
    done = store.tasks.get(task.id, key.id)
    assert (done.status, done.credits, done.error, done.progress) == (
        TaskStatus.FAILED,
        0,
        "boom",
        100,
    )
    assert balanced(store, key) == 5000


def test_payment_required_charges_nothing(store: Store) -> None:
    _, key = store.keys.create("k", 999, 60, 4)
    with pytest.raises(PaymentRequired):
        submit(store, key)  # 4 s of 720p is 1 credit
    assert balanced(store, key) == 999
    assert tasks_of(store, key.id) == []


def test_concurrency_cap(store: Store) -> None:
    _, key = store.keys.create("k", 100_000, 60, 2)
    submit(store, key)
    submit(store, key)
    with pytest.raises(RateLimited) as info:
        submit(store, key)
    assert info.value.retry_after >= 1
    assert balanced(store, key) == 100_000 - 2000


def test_rate_limit_window(store: Store) -> None:
    _, key = store.keys.create("k", 0, 3, 4)
    now = 1_000_020.0
    for _ in range(3):
        store.keys.hit(key, now=now)
    with pytest.raises(RateLimited) as info:
        store.keys.hit(key, now=now + 1)
    assert 1 <= info.value.retry_after <= 60
    store.keys.hit(key, now=now + 60)  # next minute


def test_claim_lease_heartbeat_complete_and_settle(store: Store) -> None:
    _, key = store.keys.create("k", 10_000, 60, 4)
    task = submit(store, key, video_urls=["https://example.com/v.mp4"], duration=None)
    assert task.credits == P.millicredits("720p", 10)
    claim = store.tasks.claim("w1", 30)
    assert claim is not None
    assert store.tasks.heartbeat(*held(claim), progress=40, lease_s=30)
    assert store.tasks.heartbeat(*held(claim), progress=20, lease_s=30)  # progress never goes back
    assert store.tasks.get(task.id).progress == 40
    ok = store.tasks.complete(
        *held(claim),
        result_key="r.mp4",
        ttl_s=60,
        seconds=6,
        pricing=P,
    )
    assert ok
    done = store.tasks.get(task.id)
    assert (done.status, done.progress, done.credits) == (TaskStatus.COMPLETED, 100, 1500)
    assert balanced(store, key) == 10_000 - 1500


def test_stale_epoch_cannot_finish(store: Store) -> None:
    _, key = store.keys.create("k", 10_000, 60, 4)
    task = submit(store, key)
    first = store.tasks.claim("w1", 0.01, now=100.0)
    assert first is not None
    assert store.tasks.reap(max_attempts=3, now=200.0) == 1
    second = store.tasks.claim("w2", 30)
    assert second is not None and second.epoch == first.epoch + 1
    assert not store.tasks.heartbeat(*held(first), progress=50, lease_s=30)
    assert not store.tasks.complete(*held(first), result_key="old.mp4", ttl_s=60)
    assert not store.tasks.fail(*held(first), "late", retry=False, max_attempts=3)
    assert not store.tasks.release(*held(first))
    assert store.tasks.complete(*held(second), result_key="new.mp4", ttl_s=60)
    assert store.tasks.get(task.id).result_key == "new.mp4"


def test_reaper_gives_up_after_max_attempts_and_refunds(store: Store) -> None:
    _, key = store.keys.create("k", 10_000, 60, 4)
    task = submit(store, key)
    for attempt in range(2):
        claim = store.tasks.claim(f"w{attempt}", 1, now=100.0 * (attempt + 1))
        assert claim is not None
        store.tasks.reap(max_attempts=2, now=100.0 * (attempt + 1) + 10)
    ended = store.tasks.get(task.id)
    assert ended.status is TaskStatus.FAILED and ended.attempts == 2
    assert "stopped responding" in (ended.error or "")
    assert balanced(store, key) == 10_000


def test_retryable_failure_requeues(store: Store) -> None:
    _, key = store.keys.create("k", 10_000, 60, 4)
    task = submit(store, key)
    claim = store.tasks.claim("w1", 30)
    assert claim is not None
    store.tasks.fail(*held(claim), "crash", retry=True, max_attempts=3)
    assert store.tasks.get(task.id).status is TaskStatus.PENDING
    assert balanced(store, key) == 9000


def test_cancel(store: Store) -> None:
    _, key = store.keys.create("k", 10_000, 60, 4)
    _, other = store.keys.create("o", 10_000, 60, 4)
    pending = submit(store, key)
    running = submit(store, key)
    claim = store.tasks.claim("w1", 30)
    assert claim is not None and claim.task.id == pending.id
    with pytest.raises(NotFound):
        store.tasks.cancel(running.id, other.id)
    cancelled = store.tasks.cancel(pending.id, key.id)
    assert (cancelled.status, cancelled.credits) == (TaskStatus.CANCELLED, 0)
    assert not store.tasks.heartbeat(*held(claim), progress=10, lease_s=30)
    assert store.tasks.cancel(running.id, key.id).status is TaskStatus.CANCELLED
    with pytest.raises(Conflict):
        store.tasks.cancel(running.id, key.id)
    assert balanced(store, key) == 10_000


def test_list_pages_newest_first_and_isolated(store: Store) -> None:
    _, key = store.keys.create("k", 100_000, 60, 50)
    _, other = store.keys.create("o", 100_000, 60, 50)
    ids = [submit(store, key).id for _ in range(5)]
    submit(store, other)
    page1 = tasks_of(store, key.id, limit=3)
    page2 = tasks_of(store, key.id, limit=3, after=page1[-1].id)
    assert [t.id for t in page1 + page2] == ids[::-1]
    with pytest.raises(NotFound):
        store.tasks.get(ids[0], other.id)


def test_each_task_is_claimed_once_under_contention(store: Store) -> None:
    _, key = store.keys.create("k", 1_000_000, 60, 100)
    ids = {submit(store, key).id for _ in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (claim := store.tasks.claim(name, 30)) is not None:
            with lock:
                claimed.append(claim.task.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)


def test_concurrent_submits_respect_balance(store: Store) -> None:
    _, key = store.keys.create("k", 5000, 10_000, 100)  # five 1-credit tasks
    errors: list[Exception] = []

    def go() -> None:
        try:
            submit(store, key)
        except PaymentRequired as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3
    assert balanced(store, key) == 0


def idem_submit(store: Store, key: KeyInfo, idem: str, body_hash: str, **kw: Any) -> Any:
    s = spec()
    return store.tasks.submit(
        key,
        s,
        millicredits=P.hold(s),
        estimated_time=5,
        seed=7,
        idempotency_key=IdempotencyRequest(idem, body_hash),
        **kw,
    )


def test_idempotency_replays_in_the_submit_transaction(store: Store) -> None:
    _, key = store.keys.create("k", 10_000, 60, 4)
    first = idem_submit(store, key, "a", "h1")
    assert not first.replayed
    again = idem_submit(store, key, "a", "h1")
    assert again.replayed and again.task.id == first.task.id
    with pytest.raises(IdempotencyMismatch):
        idem_submit(store, key, "a", "h2")
    assert balanced(store, key) == 9000  # one charge
    # After 24 h the key is free again: a new task.
    later = idem_submit(store, key, "a", "h1", now=time.time() + 25 * 3600)
    assert not later.replayed and later.task.id != first.task.id


def test_a_failed_submit_leaves_its_idempotency_key_unused(store: Store) -> None:
    _, key = store.keys.create("k", 500, 60, 4)  # less than one 1-credit task
    with pytest.raises(PaymentRequired):
        idem_submit(store, key, "b", "h1")
    store.keys.topup(key.prefix, 1000)
    assert not idem_submit(store, key, "b", "h2").replayed


def test_expired_files(store: Store) -> None:
    _, key = store.keys.create("k", 10_000, 60, 4)
    done = submit(store, key)
    failed = submit(store, key)
    running = submit(store, key)
    claim = store.tasks.claim("w", 30)
    assert claim is not None
    store.tasks.complete(*held(claim), result_key="r.mp4", ttl_s=-1)
    claim = store.tasks.claim("w", 30)
    assert claim is not None
    store.tasks.fail(*held(claim), "x", retry=False, max_attempts=1)
    assert store.tasks.claim("w", 30) is not None
    # A completed task's files go with its result URL; a failed one's a TTL after it ended.
    assert [t.id for t in store.tasks.expired(ttl_s=3600)] == [done.id]
    assert {t.id for t in store.tasks.expired(ttl_s=-1)} == {done.id, failed.id}
    assert running.id not in {t.id for t in store.tasks.expired(ttl_s=-1)}
    store.tasks.mark_result_deleted(done.id)
    assert [t.id for t in store.tasks.expired(ttl_s=-1)] == [failed.id]


def test_migrations_are_idempotent(store: Store) -> None:
    assert store.db.migrate() == store.db.migrate()


@pytest.mark.postgres
def test_postgres_notifies_workers_of_new_tasks(postgres_url: str) -> None:
    from omniflash.store.task_rows import NOTIFY_CHANNEL

    store = Store(postgres_url)
    stop = threading.Event()
    woken = threading.Event()
    listener = threading.Thread(
        target=store.db.listen, args=(NOTIFY_CHANNEL, woken.set, stop), daemon=True
    )
    listener.start()
    try:
        assert woken.wait(5.0)  # one look as soon as it listens
        woken.clear()
        _, key = store.keys.create("n", 10_000, 60, 4)
        submit(store, key)
        assert woken.wait(5.0)
    finally:
        stop.set()
        listener.join(5)
        store.close()


def in_flight_agrees(store: Store, key_id: int) -> int:
    """The key row's counter, checked against a count of the key's tasks."""
    from omniflash.store.schema import api_keys
    from omniflash.store.tasks import TaskStore

    with store.db.read() as conn:
        kept = conn.execute(
            sa.select(api_keys.c.in_flight).where(api_keys.c.id == key_id)
        ).scalar_one()
        counted = conn.execute(TaskStore.in_flight(key_id)).scalar_one()
    assert kept == counted
    return int(kept)


def test_in_flight_count_follows_every_way_a_task_ends(store: Store) -> None:
    _, key = store.keys.create("k", 100_000, 60, 3)
    tasks = [submit(store, key) for _ in range(3)]
    assert in_flight_agrees(store, key.id) == 3
    with pytest.raises(RateLimited):
        submit(store, key)
    store.tasks.cancel(tasks[0].id, key.id)  # cancel frees a slot
    assert in_flight_agrees(store, key.id) == 2
    tasks.append(submit(store, key))
    claim = store.tasks.claim("w", 30)
    assert claim is not None
    assert in_flight_agrees(store, key.id) == 3  # a claimed task is still in flight
    store.tasks.complete(*held(claim), result_key="r.mp4", ttl_s=60)  # completing frees one
    assert in_flight_agrees(store, key.id) == 2
    tasks.append(submit(store, key))
    claim = store.tasks.claim("w", 30)
    assert claim is not None
    store.tasks.fail(*held(claim), "x", retry=True, max_attempts=3)  # a retry stays
    assert in_flight_agrees(store, key.id) == 3
    claim = store.tasks.claim("w", 30)
    assert claim is not None
    store.tasks.release(*held(claim))  # and so does a release
    assert in_flight_agrees(store, key.id) == 3
    claim = store.tasks.claim("w", 30)
    assert claim is not None
    store.tasks.fail(*held(claim), "x", retry=False, max_attempts=1)  # failing frees one
    assert in_flight_agrees(store, key.id) == 2
    assert not store.tasks.fail(*held(claim), "x", retry=False, max_attempts=1)  # once
    assert in_flight_agrees(store, key.id) == 2
    tasks.append(submit(store, key))
    claim = store.tasks.claim("w", 0.01, now=100.0)
    assert claim is not None
    store.tasks.reap(max_attempts=1, now=200.0)  # and so does a reap that gives up
    assert in_flight_agrees(store, key.id) == 2
    submit(store, key)
    with pytest.raises(RateLimited):
        submit(store, key)
    assert in_flight_agrees(store, key.id) == 3
