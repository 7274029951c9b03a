"""Tasks are the queue: ``TaskStore`` is the one object the rest of omniflash asks.

It composes the task store's two jobs, each in a module of its own:

- ``store.submit``: the API side (count the request, charge the key, record the
  idempotency key, queue the task; cancel), with its statements in
  ``store.submit_statements``;
- ``store.queue``: the lease queue (claim, heartbeat, complete, fail, release, reap,
  and the sweep's reads of ended tasks), with ``store.previews`` (a lease holder's
  preview frames);

over what both share: the rows (``store.task_rows``) and the steps that requeue or end a
task under its lock, refund it and run the end hooks (``store.task_ends``).

Locks, on PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` serialises every writer anyway):
a transaction that ends a task locks the task row first (``FOR UPDATE``, re-checking
its status and epoch once it holds the lock), then touches the key row (refund, settle,
one task fewer in flight).  A submit locks the key row and inserts a new task row.  No
transaction locks a key row and then an existing task row, and no transaction refunds
two keys, so the locks are always taken in the same order and two replicas can neither
deadlock nor double-refund.
"""

from __future__ import annotations

from omniflash.store.previews import LeasePreviews
from omniflash.store.submit import Submissions

__all__ = ["TaskStore"]


class TaskStore(Submissions, LeasePreviews):
    """Submit, cancel and read tasks; lease them to workers (and take their preview frames);
    reap the leases that ran out."""
