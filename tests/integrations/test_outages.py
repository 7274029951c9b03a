"""Outages a server rides out: PostgreSQL dropping every connection while it stays up.

``pg_terminate_backend`` kills each of the server's pooled connections; the next
statement on each finds it dead.  Reads, and writes that had not committed, run once
more on a fresh connection, so clients and workers see answers, never a 500.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from omniflash.store import Store
from tests.conftest import running_server
from tests.plain_reads import tasks_of
from tests.store.test_races import assert_money

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

ROUNDS = 4
BODY = {"model": "Omni-Flash-Ext", "prompt": "an outage", "duration": 4}


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
    assert len(tasks_of(pg, 1, limit=100)) == 2 * ROUNDS
    assert_money(pg)


def test_a_poisoned_task_does_not_stop_a_live_server(
    pg: Store, postgres_url: str, tmp_path: Path
) -> None:
    """A task whose webhook PostgreSQL refuses (a NUL in its ``callback_url``, left by an
    older server) is cancelled with a 200, and the server's reaper ends the expired ones
    around another such task; ``/metrics`` counts the webhooks that could not be queued."""
    import dataclasses

    from omniflash.contract import parse_generation_request
    from omniflash.pricing import Pricing

    good = parse_generation_request({**BODY, "callback_url": "https://e.com/hook"})
    poisoned = dataclasses.replace(good, callback_url="https://e.com/hook\x00")
    hold = Pricing().hold(good)
    with running_server(
        tmp_path, "--workers", "0", OMNIFLASH_DATABASE_URL=postgres_url, OMNIFLASH_MAX_ATTEMPTS="1"
    ) as server:
        token, key = pg.keys.create("poisoned", 10**9, 10**6, 10**6)
        start = key.balance

        def submit(spec: object) -> str:
            made = pg.tasks.submit(key, spec, millicredits=hold, estimated_time=1, seed=1)  # type: ignore[arg-type]
            return made.task.id

        expired = [submit(poisoned), submit(good), submit(poisoned), submit(good)]
        while pg.tasks.claim("gone", lease_s=-1) is not None:
            pass
        pending = submit(poisoned)
        with server.client(token) as http:
            cancelled = http.post(f"/v1/tasks/{pending}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(pg.tasks.get(t).status.value == "failed" for t in expired):
                    break
                time.sleep(0.2)
            assert [pg.tasks.get(t).status.value for t in expired] == ["failed"] * 4
            scraped = http.get("/metrics").text
        assert 'omniflash_maintenance_errors_total{job="end_hook"} 3.0' in scraped
        assert pg.keys.get(key.id).balance == start
    assert_money(pg)
