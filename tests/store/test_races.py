"""Write paths raced by several processes on one PostgreSQL database, as a fleet runs them.

Each test starts real processes (spawned, each with its own connection pool), lets them
collide on the same rows for many rounds, then checks the money: every key's balance
equals its ledger, every task was charged once and refunded at most once, a task shows
``credits == 0`` exactly when it was refunded in full, and every key's in-flight counter
equals the count of its pending and processing tasks.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.errors import Conflict, NotFound, PaymentRequired, RateLimited
from omniflash.pricing import Pricing
from omniflash.store import IdempotencyRequest, Store, TaskStatus
from omniflash.store.schema import MIGRATIONS, api_keys
from tests.money import assert_money
from tests.plain_reads import key_of, tasks_of

pytestmark = pytest.mark.timeout(240)

P = Pricing()
ROUNDS = 40
SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a race", "duration": 4})


def _run(target: Any, *args: Any) -> list[Any]:
    """Run ``target(*args, i)`` in processes i = 0..n-1 at once; their results, in order."""
    ctx = mp.get_context("spawn")
    n = args[-1]
    with ctx.Pool(n) as pool:
        return pool.starmap(target, [(*args[:-1], i) for i in range(n)])


# -- cancel against the worker's complete / fail / release, and the reaper --------------------


def _cancel_side(url: str, key_id: int, ids: list[str], _i: int) -> dict[str, int]:
    store = Store(url, migrate=False)
    out = Counter[str]()
    try:
        for task_id in ids:
            try:
                store.tasks.cancel(task_id, key_id)
                out["cancelled"] += 1
            except Conflict:
                out["conflict"] += 1
    finally:
        store.close()
    return dict(out)


def _worker_side(url: str, leases: list[tuple[str, int]], i: int) -> dict[str, int]:
    store = Store(url, migrate=False)
    out = Counter[str]()
    try:
        for n, (task_id, epoch) in enumerate(leases):
            match (n + i) % 4:
                case 0 | 1:
                    ok = store.tasks.complete(
                        task_id, epoch, result_key=f"results/{task_id}.mp4", ttl_s=60
                    )
                    out["completed" if ok else "lost"] += 1
                case 2:
                    ok = store.tasks.fail(task_id, epoch, "boom", retry=False, max_attempts=3)
                    out["failed" if ok else "lost"] += 1
                case _:
                    ok = store.tasks.release(task_id, epoch)
                    out["released" if ok else "lost"] += 1
    finally:
        store.close()
    return dict(out)


def _reap_side(url: str, _rounds: int, _i: int) -> int:
    store = Store(url, migrate=False)
    try:
        return sum(store.tasks.reap(max_attempts=1) for _ in range(_rounds))
    finally:
        store.close()


@pytest.mark.postgres
def test_cancel_races_complete_fail_release_and_reap(pg: Store, postgres_url: str) -> None:
    _, key = pg.keys.create("racer", 10**9, 10**6, 10**6)
    ids = [
        pg.tasks.submit(key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1).task.id
        for _ in range(ROUNDS)
    ]
    leases = []
    for _ in ids:
        claim = pg.tasks.claim("w", lease_s=0.05 if len(leases) % 5 == 0 else 60)
        assert claim is not None
        leases.append((claim.task.id, claim.epoch))
    time.sleep(0.1)  # every fifth lease has run out: the reaper races for those
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        jobs = [
            pool.apply_async(_cancel_side, (postgres_url, key.id, ids, 0)),
            pool.apply_async(_cancel_side, (postgres_url, key.id, ids[::-1], 1)),
            pool.apply_async(_worker_side, (postgres_url, leases, 0)),
            pool.apply_async(_reap_side, (postgres_url, 5, 0)),
        ]
        results = [job.get(timeout=180) for job in jobs]  # a deadlock or a 500 raises here
    cancels = results[0].get("cancelled", 0) + results[1].get("cancelled", 0)
    statuses = Counter(pg.tasks.get(t).status for t in ids)
    assert statuses[TaskStatus.CANCELLED] == cancels
    assert statuses[TaskStatus.COMPLETED] == results[2].get("completed", 0)
    assert_money(pg)


# -- claims, heartbeats and priced completes (one statement each) against cancels --------------


def _claimer(url: str, _i: int) -> dict[str, Any]:
    """Claim until the queue is empty; beat once, then complete priced at half the hold."""
    store = Store(url, migrate=False)
    out: dict[str, Any] = {"claimed": [], "completed": 0, "lost": 0}
    try:
        while (claim := store.tasks.claim(f"w{_i}", lease_s=60)) is not None:
            task_id = claim.task.id
            out["claimed"].append(task_id)
            store.tasks.heartbeat(task_id, claim.epoch, progress=50, lease_s=60)
            done = store.tasks.complete(
                task_id,
                claim.epoch,
                result_key=f"results/{task_id}.mp4",
                ttl_s=60,
                seconds=2,
                pricing=P,
            )
            out["completed" if done else "lost"] += 1
    finally:
        store.close()
    return out


@pytest.mark.postgres
def test_claims_and_priced_completes_race_cancels(pg: Store, postgres_url: str) -> None:
    """Two workers drain one queue while its owner cancels: each task is claimed once, and
    ends once, settled to its price or refunded in full, never both."""
    _, key = pg.keys.create("racer", 10**9, 10**6, 10**6)
    ids = [
        pg.tasks.submit(key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1).task.id
        for _ in range(ROUNDS)
    ]
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        jobs = [pool.apply_async(_claimer, (postgres_url, i)) for i in (0, 1)]
        jobs.append(pool.apply_async(_cancel_side, (postgres_url, key.id, ids[::-1], 2)))
        results = [job.get(timeout=180) for job in jobs]
    claimed = results[0]["claimed"] + results[1]["claimed"]
    assert len(claimed) == len(set(claimed)), "a task was claimed twice"
    statuses = Counter(pg.tasks.get(t).status for t in ids)
    assert statuses[TaskStatus.COMPLETED] == results[0]["completed"] + results[1]["completed"]
    assert statuses[TaskStatus.CANCELLED] == results[2].get("cancelled", 0)
    assert statuses[TaskStatus.COMPLETED] + statuses[TaskStatus.CANCELLED] == ROUNDS
    price = P.millicredits(SPEC.resolution, 2)
    for task_id in ids:
        task = pg.tasks.get(task_id)
        if task.status is TaskStatus.COMPLETED:
            assert task.credits == price < P.hold(SPEC)
        ends = [e for e in pg.events.since(key.id, 0, task_id) if e.kind == "end"]
        assert [e.data["status"] for e in ends] == [task.status.value], task_id
    assert_money(pg)


# -- idempotent submits from several processes -------------------------------------------------


def _idem_submits(url: str, key_id: int, idem_keys: list[str], _i: int) -> list[str]:
    store = Store(url, migrate=False)
    try:
        key = store.keys.get(key_id)
        out = []
        for idem in idem_keys:
            submitted = store.tasks.submit(
                key,
                SPEC,
                millicredits=P.hold(SPEC),
                estimated_time=1,
                seed=1,
                idempotency_key=IdempotencyRequest(idem, "same-body"),
            )
            out.append(submitted.task.id)
        return out
    finally:
        store.close()


@pytest.mark.postgres
def test_one_idempotency_key_makes_one_task_across_processes(pg: Store, postgres_url: str) -> None:
    _, key = pg.keys.create("idem", 10**9, 10**6, 10**6)
    idem_keys = [f"k-{n}" for n in range(ROUNDS)]
    answers = _run(_idem_submits, postgres_url, key.id, idem_keys, 4)
    for n in range(ROUNDS):
        assert len({answer[n] for answer in answers}) == 1, "each key made one task"
    assert len(tasks_of(pg, key.id, limit=100)) == ROUNDS
    assert pg.keys.get(key.id).balance == 10**9 - ROUNDS * P.hold(SPEC)
    assert_money(pg)


# -- submits against the key's limits, while a worker ends tasks ------------------------------

MINUTE = 1_000_020.0  # every submit below counts in this one minute


def _limited_submits(url: str, key_id: int, rounds: int, _i: int) -> dict[str, int]:
    store = Store(url, migrate=False)
    out = Counter[str]()
    try:
        key = store.keys.get(key_id)
        for _ in range(rounds):
            try:
                store.tasks.submit(
                    key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1, now=MINUTE
                )
                out["accepted"] += 1
            except PaymentRequired:
                out["payment"] += 1
            except RateLimited as exc:
                out["in_flight" if "in flight" in str(exc) else "rpm"] += 1
    finally:
        store.close()
    return dict(out)


def _ending_worker(url: str, rounds: int, _i: int) -> int:
    store = Store(url, migrate=False)
    ended = 0
    try:
        for n in range(rounds):
            claim = store.tasks.claim("w", lease_s=60)
            if claim is None:
                time.sleep(0.005)
                continue
            if n % 2:
                store.tasks.complete(claim.task.id, claim.epoch, result_key="r.mp4", ttl_s=60)
            else:
                store.tasks.fail(claim.task.id, claim.epoch, "x", retry=False, max_attempts=1)
            ended += 1
    finally:
        store.close()
    return ended


@pytest.mark.postgres
def test_submits_from_many_processes_keep_rpm_in_flight_and_balance(
    pg: Store, postgres_url: str
) -> None:
    """120 submits from 4 processes against rpm 60, 6 in flight and 30 tasks' worth of
    credits, while a worker completes and fails tasks: exactly 60 get past the rate limit,
    the counters agree with the tasks, and the money adds up."""
    rpm, in_flight, submits = 60, 6, 30
    _, key = pg.keys.create("limits", 30 * P.hold(SPEC), rpm, in_flight)
    ctx = mp.get_context("spawn")
    with ctx.Pool(5) as pool:
        jobs = [
            pool.apply_async(_limited_submits, (postgres_url, key.id, submits, i)) for i in range(4)
        ]
        worker = pool.apply_async(_ending_worker, (postgres_url, 400, 0))
        results = [job.get(timeout=180) for job in jobs]
        worker.get(timeout=180)
    total = Counter[str]()
    for result in results:
        total.update(result)
    assert sum(total.values()) == 4 * submits
    assert total["rpm"] == 4 * submits - rpm, total
    with pg.db.read() as conn:
        hits = conn.execute(
            sa.select(api_keys.c.rate_hits).where(api_keys.c.id == key.id)
        ).scalar_one()
    assert hits == rpm
    assert total["accepted"] == len(tasks_of(pg, key.id, limit=100)) >= in_flight
    assert pg.keys.get(key.id).balance >= 0
    assert_money(pg)


def _hits(url: str, key_id: int, rounds: int, _i: int) -> int:
    """Count ``rounds`` uploads' worth of requests; how many got past the rate limit."""
    store = Store(url, migrate=False)
    passed = 0
    try:
        key = store.keys.get(key_id)
        for _ in range(rounds):
            try:
                store.keys.hit(key, now=MINUTE)
                passed += 1
            except RateLimited:
                pass
    finally:
        store.close()
    return passed


@pytest.mark.postgres
def test_requests_counted_from_many_processes_pass_rpm_exactly(
    pg: Store, postgres_url: str
) -> None:
    """120 counted requests (uploads, refused bodies) from 4 processes against rpm 50:
    exactly 50 pass, and every one of the 120 is on the key's counter."""
    _, key = pg.keys.create("hits", 0, 50, 1)
    passed = _run(_hits, postgres_url, key.id, 30, 4)
    assert sum(passed) == 50
    with pg.db.read() as conn:
        hits = conn.execute(
            sa.select(api_keys.c.rate_hits).where(api_keys.c.id == key.id)
        ).scalar_one()
    assert hits == 120
    assert pg.keys.get(key.id).balance == pg.keys.ledger_sum(key.id) == 0  # counting is free


@pytest.mark.postgres
def test_one_idempotency_key_raced_by_threads_makes_one_task_and_counts_each_request(
    pg: Store,
) -> None:
    """Six submits with one key start together behind a barrier, 30 times: those that
    waited for the key's row find the record the first one made, and every request is
    counted once against the rate, whichever way it went."""
    _, key = pg.keys.create("idem-threads", 10**9, 10**6, 10**6)
    made: dict[int, set[str]] = {}
    errors: list[BaseException] = []

    def submit(n: int, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            submitted = pg.tasks.submit(
                key,
                SPEC,
                millicredits=P.hold(SPEC),
                estimated_time=1,
                seed=1,
                idempotency_key=IdempotencyRequest(f"t-{n}", "same-body"),
                now=MINUTE,
            )
            made.setdefault(n, set()).add(submitted.task.id)
        except BaseException as exc:
            errors.append(exc)

    for n in range(30):
        barrier = threading.Barrier(6)
        threads = [threading.Thread(target=submit, args=(n, barrier)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    assert all(len(ids) == 1 for ids in made.values()) and len(made) == 30
    with pg.db.read() as conn:
        hits = conn.execute(
            sa.select(api_keys.c.rate_hits).where(api_keys.c.id == key.id)
        ).scalar_one()
    assert hits == 30 * 6
    assert len(tasks_of(pg, key.id, limit=100)) == 30
    assert_money(pg)


# -- concurrent first starts ----------------------------------------------------------------


def _first_start(url: str, _i: int) -> tuple[bytes, bool]:
    store = Store(url)  # migrates, as `serve` does
    try:
        first = store.keys.create_first("default", 100_000, 60, 4)
        return store.meta.url_secret(), first is not None
    finally:
        store.close()


@pytest.mark.postgres
def test_concurrent_first_starts_on_an_empty_database(postgres_url: str) -> None:
    """Migrations, the signing secret and the first key, raced by processes starting at once."""
    admin_url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"omniflash_empty_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    try:
        results = _run(_first_start, url, 6)
        assert len({secret for secret, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        store = Store(url, migrate=False)
        try:
            assert store.keys.count_active() == 1
            with store.db.read() as conn:
                versions = conn.exec_driver_sql("SELECT version FROM schema_version").all()
            assert sorted(v for (v,) in versions) == [v for v, _, _ in MIGRATIONS]
        finally:
            store.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# -- leases use the database's clock ----------------------------------------------------------


def test_a_fast_process_clock_does_not_reap_live_leases(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = store.keys.create("clock", 10_000, 60, 4)
    store.tasks.submit(key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1)
    claim = store.tasks.claim("w", lease_s=30)
    assert claim is not None
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this machine runs an hour ahead
    assert store.tasks.reap(max_attempts=3) == 0
    assert store.tasks.heartbeat(claim.task.id, claim.epoch, progress=10, lease_s=30)
    monkeypatch.undo()
    assert store.tasks.get(claim.task.id).status is TaskStatus.PROCESSING


def test_release_hands_a_task_back_without_using_an_attempt(store: Store) -> None:
    _, key = store.keys.create("rel", 10_000, 60, 4)
    task = store.tasks.submit(key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1).task
    first = store.tasks.claim("w1", lease_s=30)
    assert first is not None and first.task.attempts == 1
    assert store.tasks.release(task.id, first.epoch)
    again = store.tasks.claim("w2", lease_s=30)
    assert again is not None and again.task.attempts == 1 and again.epoch == first.epoch + 1
    assert not store.tasks.release(task.id, first.epoch)
    with pytest.raises(NotFound):
        store.tasks.cancel(task.id, key.id + 999)


@pytest.mark.postgres
def test_reads_survive_a_database_restart(pg: Store) -> None:
    """Every pooled connection killed (as a server restart does): the next read still answers."""
    _, key = pg.keys.create("restart", 10_000, 60, 4)
    task = pg.tasks.submit(key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1).task
    for _ in range(3):  # several pooled connections
        pg.tasks.get(task.id)
    admin = sa.create_engine(pg.db.engine.url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
        conn.commit()
    admin.dispose()
    assert killed >= 1
    assert pg.tasks.get(task.id).id == task.id
    assert key_of(pg, "of_not_a_key") is None
    assert len(tasks_of(pg, key.id)) == 1
