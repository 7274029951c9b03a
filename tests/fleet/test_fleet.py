"""The fleet, for real: two API replicas, three remote workers, PostgreSQL and an S3 bucket.

Every member is its own process.  A worker and a replica are SIGKILLed mid-run and
restarted; tasks are cancelled at random moments through either replica.  Afterwards
every task has ended exactly once, every result downloads through either replica, and
the money adds up: the key's balance is its start less what its completed tasks cost,
and every cancelled task was refunded exactly once.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
import pytest
import sqlalchemy as sa

from omniflash.pricing import to_millicredits
from omniflash.store import Store
from omniflash.store.schema import ledger, tasks
from tests.conftest import LiveServer, omniflash_cmd
from tests.s3_server import S3Server, s3_server

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(420)]

BODY = {"model": "Omni-Flash-Ext", "prompt": "a fleet of kites", "duration": 4}
START_CREDITS = 1000


@dataclass
class Fleet:
    tmp: Path
    env: dict[str, str]
    database_url: str
    replicas: list[LiveServer] = field(default_factory=list)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    key: str = ""

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            omniflash_cmd(*args, "--data-dir", str(self.tmp / "admin")),
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip().splitlines()[-1]

    def replica(self, index: int) -> LiveServer:
        server = LiveServer(
            data_dir=self.tmp / f"replica-{index}", env=self.env, extra_args=("--workers", "0")
        )
        server.api_key = self.key
        server.start()
        return server

    def start_worker(self, name: str, server: LiveServer) -> None:
        log = open(self.tmp / f"{name}-{time.time_ns()}.log", "wb")  # noqa: SIM115 - the child's
        self.workers[name] = subprocess.Popen(
            omniflash_cmd(
                "worker",
                "--server",
                server.url,
                "--token",
                self.tokens[name],
                "--data-dir",
                str(self.tmp / name),
            ),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill_worker(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait(30)

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for server in self.replicas:
            server.stop()


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str) -> Iterator[Fleet]:
    admin = sa.create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
    )
    name = f"omniflash_fleet_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    database_url = postgres_url.rsplit("/", 1)[0] + "/" + name
    s3: S3Server
    with s3_server() as s3:
        env = dict(os.environ)
        env.update(s3.env)
        env.update(
            {
                "OMNIFLASH_DATABASE_URL": database_url,
                "OMNIFLASH_ALLOW_PRIVATE_URLS": "1",
                "OMNIFLASH_LEASE_SECONDS": "3",
                "OMNIFLASH_X264_PRESET": "ultrafast",
                "OMNIFLASH_CLAIM_WAIT": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        fleet = Fleet(tmp=tmp_path, env=env, database_url=database_url)
        fleet.key = fleet.cli(
            "keys", "create", "--name", "fleet", "--credits", str(START_CREDITS),
            "--rpm", "100000", "--max-concurrent", "1000",
        )  # fmt: skip
        for n in range(3):
            fleet.tokens[f"gpu-{n}"] = fleet.cli("workers", "create", "--name", f"gpu-{n}")
        try:
            fleet.replicas = [fleet.replica(0), fleet.replica(1)]
            yield fleet
        finally:
            fleet.stop()
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


def _submit(server: LiveServer, n: int, **fields: object) -> str:
    with server.client() as client:
        answer = client.post("/v1/videos/generations", json={**BODY, "seed": n, **fields})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"][0]["task_id"])


def _statuses(server: LiveServer, ids: list[str]) -> dict[str, dict[str, object]]:
    out = {}
    with server.client() as client:
        for task_id in ids:
            out[task_id] = client.get(f"/v1/tasks/{task_id}").json()["data"]
    return out


def _wait_all_ended(fleet: Fleet, ids: list[str], timeout: float = 240) -> dict[str, dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        seen = _statuses(fleet.replicas[0], ids)
        if all(d["status"] in ("completed", "failed", "cancelled") for d in seen.values()):
            return seen
        if time.monotonic() > deadline:
            counts = Counter(d["status"] for d in seen.values())
            logs = "\n".join(p.name for p in fleet.tmp.glob("*.log"))
            raise AssertionError(f"tasks still running after {timeout} s: {counts}\n{logs}")
        time.sleep(0.5)


def _money(fleet: Fleet) -> tuple[int, Counter[str], Counter[str], dict[str, str]]:
    store = Store(fleet.database_url, migrate=False)
    try:
        (key,) = store.keys.all()
        assert key.balance == store.keys.ledger_sum(key.id)
        with store.db.read() as conn:
            entries = conn.execute(sa.select(ledger.c.task_id, ledger.c.reason)).all()
            rows = dict(conn.execute(sa.select(tasks.c.id, tasks.c.status)).all())
        charges = Counter(t for t, r in entries if r == "charge")
        refunds = Counter(t for t, r in entries if r == "refund")
        return key.balance, charges, refunds, rows
    finally:
        store.close()


def _decode_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_fleet_survives_sigkill_and_a_cancel_storm(fleet: Fleet) -> None:
    a, b = fleet.replicas
    fleet.start_worker("gpu-0", a)
    fleet.start_worker("gpu-1", a)
    fleet.start_worker("gpu-2", b)

    ids = [_submit(a if n % 2 else b, n) for n in range(30)]
    # Mid-run: a worker and a replica die without warning, then come back.
    deadline = time.monotonic() + 120
    while sum(d["status"] == "completed" for d in _statuses(a, ids).values()) < 5:
        assert time.monotonic() < deadline, "no progress before the kills"
        time.sleep(0.2)
    fleet.kill_worker("gpu-0")
    b.kill()
    time.sleep(1.0)
    b.start()
    fleet.start_worker("gpu-0", b)

    done = _wait_all_ended(fleet, ids)
    assert Counter(d["status"] for d in done.values()) == {"completed": 30}
    for n, task_id in enumerate(ids):
        urls = done[task_id]["result"]["videos"][0]["url"]  # type: ignore[index]
        path = urls[0].split("/v1/files/", 1)[1]
        for replica in (a, b):  # any replica serves any result
            answer = httpx.get(f"{replica.url}/v1/files/{path}", timeout=30)
            assert answer.status_code == 200, answer.text
            if n % 10 == 0 and replica is a:
                assert _decode_frames(answer.content) == 96

    balance, charges, refunds, rows = _money(fleet)
    spent = sum(to_millicredits(float(d["credits_cost"])) for d in done.values())  # type: ignore[arg-type]
    assert balance == to_millicredits(START_CREDITS) - spent
    assert set(charges.values()) == {1} and not refunds

    # A cancel storm through either replica, racing the workers: three cancels at random
    # moments go to the first tasks (running, just finishing or done by then: 200 or 409),
    # then nine at once to the back of the queue, from the last task forwards, which three
    # workers cannot reach in the second that takes, however loaded the machine is (the
    # submits, the cancels and the workers slow down together).
    rng = random.Random(7)
    with a.client() as on_a, b.client() as on_b:
        storm = []
        for n in range(30):
            answer = (on_a if n % 2 else on_b).post(
                "/v1/videos/generations",
                json={**BODY, "seed": 100 + n, "duration": 10, "resolution": "1080p"},
            )
            assert answer.status_code == 200, answer.text
            storm.append(str(answer.json()["data"][0]["task_id"]))
        front = rng.sample(storm[:6], 3)
        back = storm[:-10:-1]
        cancelled = set()
        for task_id in [*front, *back]:
            if task_id in front:
                time.sleep(rng.uniform(0.0, 0.1))
            answer = rng.choice((on_a, on_b)).post(f"/v1/tasks/{task_id}/cancel")
            assert answer.status_code in (200, 409), answer.text
            if answer.status_code == 200:
                cancelled.add(task_id)
    ended = _wait_all_ended(fleet, storm)
    assert len(cancelled) >= 6, "most cancels found their task still going"
    assert {t for t, d in ended.items() if d["status"] == "cancelled"} == cancelled
    assert all(d["status"] in ("completed", "cancelled") for d in ended.values())

    balance, charges, refunds, rows = _money(fleet)
    assert set(charges.values()) == {1} and len(charges) == 60
    assert set(refunds) == cancelled and set(refunds.values()) == {1}
    spent = sum(
        to_millicredits(float(d["credits_cost"]))  # type: ignore[arg-type]
        for d in [*done.values(), *ended.values()]
    )
    assert balance == to_millicredits(START_CREDITS) - spent
    assert all(rows[t] == "cancelled" for t in cancelled)
