"""Outages a server rides out: PostgreSQL dropping every connection while it stays up.

``pg_terminate_backend`` kills each of the server's pooled connections; the next
statement on each finds it dead.  Reads, and writes that had not committed, run once
more on a fresh connection, so clients and workers see answers, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from omniflash.store import Store
from tests.conftest import running_server
from tests.store.test_races import assert_money

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

ROUNDS = 4
BODY = {"model": "Omni-Flash-Ext", "prompt": "an outage", "duration": 4}


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    with store.db.write() as conn:
        conn.exec_driver_sql(
            "TRUNCATE idempotency, tasks, ledger, api_keys, worker_tokens, meta "
            "RESTART IDENTITY CASCADE"
        )
    try:
        yield store
    finally:
        store.close()


def _terminate_others(store: Store) -> int:
    """Kill every connection to the database but this one; how many there were."""
    with store.db.read() as conn:
        return len(
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
        )


def test_dropped_connections_are_retried_on_fresh_ones(
    pg: Store, postgres_url: str, tmp_path: Path
) -> None:
    with running_server(tmp_path, "--workers", "0", OMNIFLASH_DATABASE_URL=postgres_url) as server:
        token = server.cli("workers", "create", "--name", "w1").stdout.strip().splitlines()[-1]
        client = server.client()
        worker = httpx.Client(
            base_url=server.url + "/worker/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

        def after_a_drop(method: str, path: str, http: httpx.Client = worker, **kw: Any) -> Any:
            assert _terminate_others(pg) > 0
            response = http.request(method, path, **kw)
            assert response.status_code < 500, (method, path, response.text, server.log())
            return response

        with client, worker:
            for n in range(ROUNDS):
                made = after_a_drop("POST", "/v1/videos/generations", client, json=BODY)
                assert made.status_code == 200
                replayed = after_a_drop(
                    "POST",
                    "/v1/videos/generations",
                    client,
                    json=BODY,
                    headers={"Idempotency-Key": f"round-{n}"},
                )
                assert replayed.status_code == 200
                task_id = made.json()["data"][0]["task_id"]
                listed = after_a_drop("GET", f"/v1/tasks/{task_id}", client)
                assert listed.json()["data"]["status"] in ("submitted", "pending")

                claimed = after_a_drop("POST", "/claim", json={"owner": "loop", "wait_s": 0})
                assert claimed.status_code == 200
                lease = claimed.json()["lease"]
                path = f"/tasks/{lease['task_id']}"
                beat = after_a_drop("POST", path + "/heartbeat", json={"epoch": lease["epoch"]})
                assert beat.json() == {"held": True}
                back = after_a_drop("POST", path + "/release", json={"epoch": lease["epoch"]})
                assert back.json() == {"held": True}
                claimed = after_a_drop("POST", "/claim", json={"owner": "loop", "wait_s": 0})
                lease = claimed.json()["lease"]
                path = f"/tasks/{lease['task_id']}"
                failed = after_a_drop(
                    "POST", path + "/fail", json={"epoch": lease["epoch"], "message": "x"}
                )
                assert failed.json() == {"held": True}
                cancelled = after_a_drop("POST", f"/v1/tasks/{task_id}/cancel", client)
                assert cancelled.status_code in (200, 409)
    assert len(pg.tasks.list_for_key(1, limit=100)) == 2 * ROUNDS
    assert_money(pg)
