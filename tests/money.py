"""The money check every test that touches a task ends with.

``assert_money(store)``: every key's balance equals its ledger (start, minus charges, plus
refunds and settlements); each task was charged exactly once, refunded at most once, and
never given back more than it was charged; a task shows ``credits == 0`` exactly when it
was refunded; each key's in-flight counter equals the count of its pending and processing
tasks.  The ``store`` fixture and ``running_server`` call it on the way out.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import sqlalchemy as sa

from omniflash.store import Store
from omniflash.store.schema import api_keys, ledger, tasks
from omniflash.store.tasks import TaskStore

__all__ = ["assert_money", "assert_money_at"]


def assert_money(store: Store) -> None:
    """Raise ``AssertionError`` naming the first key or task whose money does not add up."""
    for key in store.keys.all():
        assert key.balance == store.keys.ledger_sum(key.id), ("balance != ledger", key)
        with store.db.read() as conn:
            kept = conn.execute(
                sa.select(api_keys.c.in_flight).where(api_keys.c.id == key.id)
            ).scalar_one()
            counted = conn.execute(TaskStore.in_flight(key.id)).scalar_one()
        assert kept == counted, ("in-flight counter", key, kept, counted)
    with store.db.read() as conn:
        entries = conn.execute(sa.select(ledger.c.task_id, ledger.c.reason, ledger.c.delta)).all()
        rows = {r.id: r for r in conn.execute(sa.select(tasks)).all()}
    charges = Counter(t for t, reason, _ in entries if reason == "charge")
    refunds = Counter(t for t, reason, _ in entries if reason == "refund")
    charged: dict[str, int] = defaultdict(int)
    returned: dict[str, int] = defaultdict(int)
    for task_id, reason, delta in entries:
        if reason == "charge":
            charged[task_id] -= delta
        elif reason in ("refund", "settle"):
            returned[task_id] += delta
    assert set(charges) == set(rows), "a task without a charge, or a charge without a task"
    assert set(charges.values()) <= {1}, "a task was charged twice"
    assert not refunds or max(refunds.values()) == 1, "a task was refunded twice"
    for task_id, row in rows.items():
        assert 0 <= returned[task_id] <= charged[task_id], ("gave back more", task_id)
        refunded = task_id in refunds
        # A task that ended without a result is refunded, unless it was charged nothing.
        due = row.status in ("failed", "cancelled") and charged[task_id] > 0
        assert refunded == due, (task_id, row.status)
        if refunded:
            assert row.credits == 0, (task_id, row.credits)
        assert row.credits == charged[task_id] - returned[task_id], (task_id, row.credits)


def assert_money_at(database_url: str) -> None:
    """``assert_money`` on the database at ``database_url`` (a server process's)."""
    store = Store(database_url, migrate=False)
    try:
        assert_money(store)
    finally:
        store.close()
