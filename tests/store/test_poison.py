"""One poisoned row cannot stop the machinery.

A task whose webhook cannot be queued (a ``callback_url`` with a NUL, which PostgreSQL's
text columns refuse) still ends, is refunded once, and frees its slot; the reaper reaps
the other expired tasks around it; each skipped step is counted.  The row is written
straight to the store, as an older server (or any bug) may have left it: the API refuses
such text at its door now.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from omniflash import webhooks
from omniflash.blobs import UrlSigner
from omniflash.contract import parse_generation_request
from omniflash.metrics import Metrics
from omniflash.pricing import Pricing
from omniflash.settings import Settings
from omniflash.store import KeyInfo, Store, TaskRow, TaskStatus
from omniflash.store.schema import ledger, webhook_outbox
from tests.store.test_races import assert_money

pytestmark = pytest.mark.timeout(240)

P = Pricing()
GOOD = parse_generation_request(
    {"model": "Omni-Flash-Ext", "prompt": "a fox", "duration": 4, "callback_url": "https://e.com/h"}
)
POISONED = dataclasses.replace(GOOD, callback_url="https://e.com/h\x00")


def _hooked(store: Store, tmp_path: Path) -> Metrics:
    """The end hooks a server installs: the webhook outbox and the metrics."""
    settings = Settings(data_dir=tmp_path)
    metrics = Metrics(store, settings)
    metrics.install(store)
    webhooks.install(store, settings, UrlSigner(b"s" * 32))
    return metrics


def _submit(store: Store, key: KeyInfo, poisoned: bool) -> str:
    spec = POISONED if poisoned else GOOD
    return store.tasks.submit(
        key, spec, millicredits=P.hold(spec), estimated_time=1, seed=1
    ).task.id


def _errors(metrics: Metrics, job: str) -> float:
    value = metrics.registry.get_sample_value("omniflash_maintenance_errors_total", {"job": job})
    assert value is not None
    return value


def _refunds(store: Store, task_id: str) -> int:
    with store.db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    ledger.c.task_id == task_id, ledger.c.reason == "refund"
                )
            ).scalar_one()
        )


def _outbox(store: Store) -> Counter[str]:
    with store.db.read() as conn:
        return Counter(conn.execute(sa.select(webhook_outbox.c.task_id)).scalars())


@pytest.mark.postgres
def test_a_poisoned_webhook_does_not_stop_the_reaper(pg: Store, tmp_path: Path) -> None:
    """The issue's scenario: before, ``reap`` raised on the poisoned task every pass, so
    the others were never reaped and it stayed processing, charged, for ever."""
    metrics = _hooked(pg, tmp_path)
    _, key = pg.keys.create("k", 10**9, 10**6, 10**6)
    poisoned = _submit(pg, key, poisoned=True)
    others = [_submit(pg, key, poisoned=False) for _ in range(4)]
    for _ in range(5):
        assert pg.tasks.claim("w", lease_s=-1) is not None  # every lease ran out already
    assert pg.tasks.reap(max_attempts=1) == 5
    for task_id in [poisoned, *others]:
        assert pg.tasks.get(task_id).status is TaskStatus.FAILED
        assert _refunds(pg, task_id) == 1
    assert _outbox(pg) == Counter(others), "the others' webhooks are queued, the poisoned one's not"
    assert _errors(metrics, "end_hook") == 1
    assert pg.keys.get(key.id).balance == 10**9
    assert_money(pg)


@pytest.mark.postgres
def test_a_poisoned_task_can_be_cancelled_and_completed(pg: Store, tmp_path: Path) -> None:
    """Before, cancel raised (a 500) and complete raised (the worker's result was lost)."""
    metrics = _hooked(pg, tmp_path)
    _, key = pg.keys.create("k", 10**9, 10**6, 1)
    cancelled = _submit(pg, key, poisoned=True)
    assert pg.tasks.cancel(cancelled, key.id).status is TaskStatus.CANCELLED
    completed = _submit(pg, key, poisoned=True)  # the slot was freed by the cancel
    claim = pg.tasks.claim("w", lease_s=60)
    assert claim is not None and claim.task.id == completed
    assert pg.tasks.complete(completed, claim.epoch, result_key="results/x.mp4", ttl_s=60)
    assert pg.tasks.get(completed).status is TaskStatus.COMPLETED
    assert _errors(metrics, "end_hook") == 2
    assert not _outbox(pg)
    assert _refunds(pg, cancelled) == 1 and _refunds(pg, completed) == 0
    assert pg.keys.get(key.id).balance == 10**9 - P.hold(GOOD)
    assert_money(pg)


def test_a_failing_end_hook_is_undone_alone(store: Store) -> None:
    """On SQLite and PostgreSQL: what a failing hook wrote is rolled back, the end is not."""
    seen: list[tuple[str, str]] = []
    store.tasks.error_hooks.append(lambda job, item: seen.append((job, item)))

    def broken(conn: sa.Connection, task: TaskRow, status: TaskStatus) -> None:
        conn.execute(
            ledger.insert().values(key_id=key.id, task_id=task.id, delta=10**6, reason="bonus")
        )
        raise RuntimeError("this hook is broken")

    store.tasks.end_hooks.append(broken)
    _, key = store.keys.create("k", 10**9, 10**6, 10**6)
    task_id = _submit(store, key, poisoned=False)
    assert store.tasks.cancel(task_id, key.id).status is TaskStatus.CANCELLED
    assert seen == [("end_hook", task_id)]
    assert store.keys.get(key.id).balance == 10**9 == store.keys.ledger_sum(key.id)


def test_a_task_ending_again_after_a_failing_hook_is_counted_once(
    store: Store, tmp_path: Path
) -> None:
    """The metrics' end hook runs before a hook that fails; the end then runs again
    without the failing one, and the finished task is still counted once."""
    metrics = Metrics(store, Settings(data_dir=tmp_path))
    metrics.install(store)

    def broken(conn: sa.Connection, task: TaskRow, status: TaskStatus) -> None:
        raise RuntimeError("this hook is broken")

    store.tasks.end_hooks.append(broken)
    _, key = store.keys.create("k", 10**9, 10**6, 10**6)
    task_id = _submit(store, key, poisoned=False)
    assert store.tasks.cancel(task_id, key.id).status is TaskStatus.CANCELLED
    labels = {"status": "cancelled", "mode": "text", "resolution": GOOD.resolution}
    assert metrics.registry.get_sample_value("omniflash_tasks_finished_total", labels) == 1
    assert _errors(metrics, "end_hook") == 1


def test_a_task_whose_reap_raises_is_skipped(store: Store) -> None:
    """Not only hooks: whatever one task's reap raises, the others are still reaped."""
    seen: list[tuple[str, str]] = []
    store.tasks.error_hooks.append(lambda job, item: seen.append((job, item)))
    _, key = store.keys.create("k", 10**9, 10**6, 10**6)
    ids = [_submit(store, key, poisoned=False) for _ in range(3)]
    for _ in ids:
        assert store.tasks.claim("w", lease_s=-1) is not None
    real = store.tasks._reap_one

    def flaky(task_id: str, *args: object) -> int:
        if task_id == ids[1]:
            raise RuntimeError("poisoned")
        return real(task_id, *args)  # type: ignore[arg-type]

    store.tasks._reap_one = flaky  # type: ignore[method-assign]
    assert store.tasks.reap(max_attempts=1) == 2
    assert seen == [("reap", ids[1])]
    statuses = [store.tasks.get(t).status for t in ids]
    assert statuses == [TaskStatus.FAILED, TaskStatus.PROCESSING, TaskStatus.FAILED]
    store.tasks._reap_one = real  # type: ignore[method-assign]
    assert store.tasks.reap(max_attempts=1) == 1
    assert_money(store)


# -- two reapers over poisoned and healthy expired tasks, many rounds --------------------------

ROUNDS = 30


def _reaper(url: str, data_dir: str, rounds: int, _i: int) -> tuple[int, float]:
    store = Store(url, migrate=False)
    metrics = _hooked(store, Path(data_dir))
    try:
        reaped = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            reaped += store.tasks.reap(max_attempts=2)
            with store.db.read() as conn:
                left = conn.execute(
                    sa.text("SELECT count(*) FROM tasks WHERE status IN ('pending', 'processing')")
                ).scalar_one()
            if not left:
                break
            # Requeued ones are claimed again, by either reaper, and expire at once.
            while store.tasks.claim("w", lease_s=-1) is not None:
                pass
        return reaped, _errors(metrics, "end_hook")
    finally:
        store.close()


@pytest.mark.postgres
def test_two_reapers_race_over_poisoned_tasks(pg: Store, postgres_url: str, tmp_path: Path) -> None:
    _, key = pg.keys.create("k", 10**9, 10**6, 10**6)
    ids = {_submit(pg, key, poisoned=n % 3 == 0): n % 3 == 0 for n in range(ROUNDS)}
    while pg.tasks.claim("w", lease_s=-1) is not None:
        pass
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_reaper, [(postgres_url, str(tmp_path), ROUNDS, i) for i in (0, 1)])
    # Every task was reaped twice (requeued, then failed), each time by one reaper only.
    assert sum(reaped for reaped, _ in results) == 2 * ROUNDS
    assert sum(errors for _, errors in results) == sum(ids.values())
    for task_id in ids:
        assert pg.tasks.get(task_id).status is TaskStatus.FAILED
        assert _refunds(pg, task_id) == 1
    assert _outbox(pg) == Counter(t for t, poisoned in ids.items() if not poisoned)
    assert pg.keys.get(key.id).balance == 10**9
    assert_money(pg)
