"""Dropped connections: what is retried on a fresh one, and that money stays exact.

A drop before a write's commit means the transaction did not happen, so it runs again;
a drop during the commit is ``OutcomeUnknown``, retried only by writes that are harmless
to repeat or that find their own earlier success.  A PostgreSQL submit is one statement
that commits by itself: after a drop it looks for its task by id before submitting again.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.pricing import Pricing
from omniflash.store import Store
from omniflash.store.db import OutcomeUnknown, retry_disconnect, retry_repeatable
from tests.plain_reads import tasks_of
from tests.store.test_races import assert_money

pytestmark = pytest.mark.timeout(240)

P = Pricing()
SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a drop", "duration": 4})


def _dropped() -> sa.exc.DBAPIError:
    return sa.exc.OperationalError("SELECT 1", {}, OSError("gone"), connection_invalidated=True)


def test_which_failures_are_retried() -> None:
    calls: Counter[str] = Counter()

    def failing(name: str, error: Exception) -> Any:
        def call() -> str:
            calls[name] += 1
            if calls[name] == 1:
                raise error
            return name

        return call

    assert retry_disconnect(failing("a", _dropped()))() == "a"
    unknown = OutcomeUnknown("COMMIT", {}, OSError("gone"))
    with pytest.raises(OutcomeUnknown):
        retry_disconnect(failing("b", unknown))()
    assert retry_repeatable(failing("c", unknown))() == "c"
    other = sa.exc.OperationalError("SELECT 1", {}, OSError("deadlock"))
    with pytest.raises(sa.exc.OperationalError):
        retry_repeatable(failing("d", other))()
    assert calls == {"a": 2, "b": 1, "c": 2, "d": 1}


def test_psycopg_errors_of_a_lost_connection_count_as_drops() -> None:
    """A lost session can surface as a client-side error on a connection psycopg still
    calls open ("connection socket closed", then "another command is already in
    progress" from the rollback after it); those, and SQLSTATE classes 08 and 57P, are
    drops.  A deadlock, a lock timeout or a cancelled statement leaves the connection
    usable and is not."""
    psycopg = pytest.importorskip("psycopg")
    from types import SimpleNamespace

    from omniflash.store.db import _psycopg_drop

    def judged(error: BaseException) -> bool:
        context = SimpleNamespace(original_exception=error, is_disconnect=False)
        _psycopg_drop(context)  # type: ignore[arg-type]
        return bool(context.is_disconnect)

    assert judged(psycopg.OperationalError("connection socket closed"))
    assert judged(psycopg.OperationalError("another command is already in progress"))
    assert judged(psycopg.errors.AdminShutdown("terminating connection"))
    assert judged(psycopg.errors.ConnectionFailure("connection failure"))
    assert not judged(psycopg.errors.DeadlockDetected("deadlock detected"))
    assert not judged(psycopg.errors.LockNotAvailable("lock timeout"))
    assert not judged(psycopg.errors.QueryCanceled("canceling statement"))
    assert not judged(psycopg.errors.UniqueViolation("duplicate key"))
    assert not judged(ValueError("not the driver's"))


@pytest.mark.postgres
def test_a_drop_during_the_commit_is_outcome_unknown(pg: Store) -> None:
    """The transaction's own connection killed just before COMMIT: the write raises
    ``OutcomeUnknown`` (here it did not commit), and the next call gets a fresh one."""
    _, key = pg.keys.create("k", 10**9, 10**6, 10**6)
    with pytest.raises(OutcomeUnknown), pg.db.write() as conn:
        conn.execute(sa.text("UPDATE api_keys SET balance = 0 WHERE id = :id"), {"id": key.id})
        with pg.db.read() as other:
            other.execute(
                sa.text("SELECT pg_terminate_backend(:pid)"),
                {"pid": conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()},
            )
    assert pg.keys.get(key.id).balance == 10**9


@pytest.mark.postgres
def test_a_submit_whose_answer_was_lost_finds_its_task(pg: Store) -> None:
    """The statement committed and the connection dropped before its answer came back:
    the submit finds its task by id instead of charging again."""
    _, key = pg.keys.create("k", 10**9, 10**6, 10**6)
    real = pg.db.statement
    calls = Counter[str]()

    @contextlib.contextmanager
    def answer_lost() -> Iterator[sa.Connection]:
        calls["statement"] += 1
        with real() as conn:
            yield conn
        if calls["statement"] == 1:
            raise _dropped()

    pg.db.statement = answer_lost  # type: ignore[method-assign]
    made = pg.tasks.submit(key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1)
    assert not made.replayed and calls["statement"] == 1, "found, not submitted again"
    assert [t.id for t in tasks_of(pg, key.id)] == [made.task.id]
    assert pg.keys.get(key.id).balance == 10**9 - P.hold(SPEC)
    assert_money(pg)


@pytest.mark.parametrize("committed", [True, False])
def test_a_claim_whose_commit_was_lost_leaks_no_lease(store: Store, committed: bool) -> None:
    """Committed or not, the worker gets the task, under one lease, one attempt used."""
    _, key = store.keys.create("k", 10**9, 10**6, 10**6)
    task_id = store.tasks.submit(key, SPEC, millicredits=1, estimated_time=1, seed=1).task.id
    # SQLite claims in a transaction; PostgreSQL in one statement that commits by itself,
    # whose lost answer is the driver's error of a dropped connection.
    name = "write" if store.db.is_sqlite else "statement"
    real = getattr(store.db, name)
    calls = Counter[str]()

    def lost() -> sa.exc.DBAPIError:
        return OutcomeUnknown("COMMIT", {}, OSError("gone")) if name == "write" else _dropped()

    @contextlib.contextmanager
    def commit_lost(**kw: Any) -> Iterator[sa.Connection]:
        calls["write"] += 1
        if calls["write"] == 1 and not committed:
            with real(**kw):
                pass
            raise lost()
        with real(**kw) as conn:
            yield conn
        if calls["write"] == 1:
            raise lost()

    setattr(store.db, name, commit_lost)
    claim = store.tasks.claim("loop-1", lease_s=60)
    setattr(store.db, name, real)
    # Found when it committed; made again (once) when it did not.
    assert calls["write"] == (1 if committed else 2)
    assert claim is not None and claim.task.id == task_id
    task = store.tasks.get(task_id)
    assert (task.lease_epoch, task.attempts) == (claim.epoch, 1) == (1, 1)
    assert store.tasks.heartbeat(task_id, claim.epoch, progress=5, lease_s=60)
    assert store.tasks.claim("loop-2", lease_s=60) is None
    assert_money(store)


def _killer(url: str, seconds: float, _i: int) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    killed = 0
    try:
        deadline = time.monotonic() + seconds
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            while time.monotonic() < deadline:
                killed += len(
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                            "AND backend_type = 'client backend'"
                        )
                    ).all()
                )
                time.sleep(0.03)
    finally:
        engine.dispose()
    return killed


def _busy(url: str, key_id: int, seconds: float, i: int) -> dict[str, int]:
    store = Store(url, migrate=False)
    out: Counter[str] = Counter()
    try:
        key = None
        while key is None:  # the killer is at work already
            try:
                key = store.keys.get(key_id)
            except sa.exc.DBAPIError:
                out["dropped"] += 1
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                task = store.tasks.submit(
                    key, SPEC, millicredits=P.hold(SPEC), estimated_time=1, seed=1
                ).task
                out["submitted"] += 1
                claim = store.tasks.claim(f"w{i}", lease_s=60)
                if claim is None:
                    continue
                epoch = claim.epoch
                store.tasks.heartbeat(claim.task.id, epoch, progress=10, lease_s=60)
                match n % 4:
                    case 0:
                        store.tasks.complete(
                            claim.task.id, epoch, result_key=f"results/{task.id}.mp4", ttl_s=60
                        )
                    case 1:
                        store.tasks.fail(claim.task.id, epoch, "x", retry=False, max_attempts=1)
                    case 2:
                        store.tasks.release(claim.task.id, epoch)
                    case _:
                        store.tasks.cancel(claim.task.id, key_id)
            except sa.exc.DBAPIError as exc:
                # Two drops in a row, or a drop during a commit no retry may repeat.
                out["unknown" if isinstance(exc, OutcomeUnknown) else "dropped"] += 1
            except Exception as exc:  # the store's own refusals (a cancel that lost a race)
                out[type(exc).__name__] += 1
    finally:
        store.close()
    return dict(out)


@pytest.mark.postgres
def test_money_stays_exact_while_connections_keep_dropping(pg: Store, postgres_url: str) -> None:
    _, key = pg.keys.create("k", 10**12, 10**7, 10**7)
    seconds = 8.0
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        killer = pool.apply_async(_killer, (postgres_url, seconds + 2, 0))
        busy = [pool.apply_async(_busy, (postgres_url, key.id, seconds, i)) for i in range(3)]
        outcomes = [job.get(timeout=120) for job in busy]
        killed = killer.get(timeout=120)
    total = sum((Counter(o) for o in outcomes), Counter())
    print(f"killed {killed} connections; {dict(total)}")
    assert killed > 20, killed
    assert total["submitted"] > 20, total
    # Most calls rode out the drops; whatever failed left the money exact.
    assert total["dropped"] + total["unknown"] < total["submitted"], total
    pg.db.engine.dispose()  # this process's own pooled connections were killed too
    assert_money(pg)
