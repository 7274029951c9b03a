"""Polls that arrive together, read by one statement (``Polls``).

Under load many polls wait at once, and a round trip to the database costs the event
loop more than the rows it brings: ``store/reads.py``'s PostgreSQL reads gather the
polls of one turn of the loop into one ``WHERE id = ANY(...)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from omniflash.store.db import StoreUnavailable

__all__ = ["Polls"]

Params = dict[str, Any]
Run = Callable[[str, Params], Awaitable[list[Any]]]
"""Runs a statement (its SQL text and parameters) and answers its rows."""
Batch = dict[str, list[asyncio.Future[Any]]]
"""A batch of polls: the futures waiting for each task id."""


class Polls:
    """The polls of one event loop that arrive together, read by one statement.

    ``sql`` takes the batch's ids as ``task_ids`` and answers rows whose first column is
    the id.  The first poll opens a batch and starts its read as a task, which runs on the
    loop's next turn: the polls that reach the store before then (those whose requests
    arrived with the first) join the batch; a poll that comes later opens the next one.
    A failure reaches every poll of the batch, except one the driver refuses (a NUL in an
    id): then each id is read again alone, and only the poll that sent it fails.
    """

    def __init__(self, run: Callable[[], Run], sql: tuple[str, Params]) -> None:
        self.run = run
        self.sql = sql
        self.batch: Batch | None = None
        self.reading: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    async def row(self, task_id: str) -> Any:
        """The row of ``task_id``, or ``None``."""
        loop = asyncio.get_running_loop()
        batch = self.batch
        if batch is None:
            batch = self.batch = {}
            reading = loop.create_task(self._read(batch))
            self.reading.add(reading)
            reading.add_done_callback(self.reading.discard)
        # A future per poll: a cancelled poll cancels its own, not those of the others.
        waiter = loop.create_future()
        batch.setdefault(task_id, []).append(waiter)
        return await waiter

    async def _read(self, batch: Batch) -> None:
        self.batch = None
        try:
            await self._settle(batch)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable) or len(batch) == 1:
                _fail(batch, exc)
                return
            for task_id, waiters in batch.items():  # whose id did the driver refuse?
                try:
                    await self._settle({task_id: waiters})
                except Exception as alone:
                    _fail({task_id: waiters}, alone)
        except BaseException as exc:  # cancelled with the loop: no poll waits for ever
            _fail(batch, exc)
            raise

    async def _settle(self, batch: Batch) -> None:
        sql, fixed = self.sql
        rows = await self.run()(sql, {**fixed, "task_ids": list(batch)})
        found = {row[0]: row for row in rows}
        for task_id, waiters in batch.items():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(found.get(task_id))


def _fail(batch: Batch, exc: BaseException) -> None:
    for waiters in batch.values():
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
