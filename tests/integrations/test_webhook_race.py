"""Two replicas' webhook senders on one PostgreSQL database: each attempt sent once, none lost.

Tasks end with a ``callback_url`` (their outbox rows written by the end hook); then two
processes, each with its own connection pool, run ``WebhookSender`` passes at the same
time until the outbox is drained.  The receiver fails the first attempt of every third
webhook, so retries race too.  Every webhook must arrive exactly as often as it was
answered with a failure plus one, with one ``webhook-id``, and end ``delivered``.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.settings import Settings
from omniflash.storage import UrlSigner
from omniflash.store import Store
from omniflash.store.schema import webhook_outbox
from omniflash.webhooks import WebhookSender, install
from tests.integrations.conftest import Receiver, start_receiver

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

TASKS = 120


def _settings(url: str, tmp: str) -> Settings:
    return Settings(
        data_dir=Path(tmp),
        database_url_override=url,
        allow_private_urls=True,
        webhook_retry_delays="0",
        webhook_poll_s=0.02,
        webhook_timeout_s=5,
    )


def _sender(url: str, tmp: str, barrier: Any, results: Any) -> None:
    store = Store(url, migrate=False)
    sender = WebhookSender(_settings(url, tmp), store, concurrency=4)
    barrier.wait()
    idle_since = None
    while idle_since is None or time.monotonic() - idle_since < 1.0:
        if sender.run_once():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        else:
            time.sleep(0.02)
    results.put(sender.sent)
    store.close()


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    with store.db.write() as conn:
        conn.exec_driver_sql(
            "TRUNCATE rate_windows, idempotency, tasks, ledger, "
            "api_keys, worker_tokens, meta RESTART IDENTITY CASCADE"
        )
    try:
        yield store
    finally:
        store.close()


def test_two_senders_deliver_each_attempt_once(
    pg: Store, postgres_url: str, tmp_path: Path
) -> None:
    receiver: Receiver
    receiver, http_server = start_receiver()
    failing: set[str] = set()

    def status_for(msg_id: str, attempt: int) -> int:
        time.sleep(0.01)  # long enough for the two senders' batches to overlap
        return 500 if msg_id in failing and attempt == 1 else 200

    receiver.status_for = status_for
    try:
        settings = _settings(postgres_url, str(tmp_path))
        install(pg, settings, UrlSigner(b"secret"))
        _key, info = pg.keys.create("race", 10**9, 10**6, 10**6)
        spec = parse_generation_request(
            {
                "model": "Omni-Flash-Ext",
                "prompt": "race",
                "duration": 4,
                "callback_url": receiver.url,
            }
        )
        for _ in range(TASKS):
            task = pg.tasks.submit(info, spec, millicredits=1000, estimated_time=1, seed=1).task
            pg.tasks.cancel(task.id, info.id)
        with pg.db.read() as conn:
            ids = list(conn.execute(sa.select(webhook_outbox.c.id)).scalars())
        assert len(ids) == TASKS
        failing.update(ids[::3])

        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_sender, args=(postgres_url, str(tmp_path), barrier, results))
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        sent = [results.get(timeout=150) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        http_server.shutdown()
        http_server.server_close()

    arrivals = Counter(r.headers["webhook-id"] for r in receiver.received)
    expected = {i: 2 if i in failing else 1 for i in ids}
    assert arrivals == expected, "an attempt was sent twice, or a webhook was lost"
    assert sum(sent) == sum(expected.values())
    assert all(s > 0 for s in sent), f"one sender did all the work: {sent}"
    with pg.db.read() as conn:
        states = Counter(conn.execute(sa.select(webhook_outbox.c.state)).scalars())
        attempts = Counter(conn.execute(sa.select(webhook_outbox.c.attempts)).scalars())
    assert states == {"delivered": TASKS}
    assert attempts == {1: TASKS - len(failing), 2: len(failing)}
