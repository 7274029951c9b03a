"""The queue on PostgreSQL: dispatch latency and task throughput, against a bare claim loop.

Measured in one run on a fresh database, with an engine that does nothing
(``bench.noop_engine:Noop``), so only the queue, the leases and the bookkeeping count:

- dispatch latency (submit → claimed) at idle, p50/p99, for an in-process worker and a
  remote worker (``omniflash worker`` over HTTP), one task at a time;
- tasks per second for 1, 2 and 4 in-process workers draining a queue of tasks (queued
  first, so that the submit rate does not limit the drain);
- the same for a bare ``SELECT … FOR UPDATE SKIP LOCKED`` loop (claim in one
  transaction, finish in another) with as many threads, as the baseline.

With ``--workers N`` it simulates a fleet instead: N remote worker loops against two
API replicas, idle, dispatching and busy (``bench/fleet_sim.py``).

    OMNIFLASH_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python bench/fleet.py
    … python bench/fleet.py --workers 1000

Targets: p99 ≤ 50 ms at idle; ≥ 50% of the bare loop's tasks per second.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BODY = {"model": "Omni-Flash-Ext", "prompt": "nothing at all", "duration": 4}
ENGINE = "bench.noop_engine:Noop"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fresh_database(base: str, prefix: str = "omniflash_fleet_bench") -> Iterator[str]:
    admin = sa.create_engine(
        base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str | None) -> Iterator[None]:
    proc = subprocess.Popen(
        args,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while ready_url is not None:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[3]} exited")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[3]} did not start")
            time.sleep(0.1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class Service:
    """``omniflash serve`` (and maybe remote workers) on one fresh database."""

    def __init__(self, database_url: str, work: Path) -> None:
        self.database_url = database_url
        self.work = work
        self.env = dict(
            os.environ,
            OMNIFLASH_DATABASE_URL=database_url,
            OMNIFLASH_READ_RPM=str(10**9),
            OMNIFLASH_ENGINE=ENGINE,
            PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        )
        self.key = self.cli(
            "keys", "create", "--name", "bench", "--credits", "1000000000",
            "--rpm", "1000000000", "--max-concurrent", "1000000000",
        )  # fmt: skip

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "omniflash", *args, "--data-dir", str(self.work / "admin")],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def serve(self, port: int, workers: int) -> Iterator[None]:
        return process(
            [sys.executable, "-m", "omniflash", "serve", "--port", str(port),
             "--workers", str(workers), "--data-dir", str(self.work / f"api-{port}"),
             "--log-level", "warning"],
            self.env,
            f"http://127.0.0.1:{port}/healthz",
        )  # fmt: skip

    def worker(self, port: int, token: str, name: str) -> Iterator[None]:
        return process(
            [sys.executable, "-m", "omniflash", "worker", "--server", f"http://127.0.0.1:{port}",
             "--token", token, "--data-dir", str(self.work / name), "--log-level", "warning"],
            self.env,
            None,
        )  # fmt: skip


def submit(client: httpx.Client) -> str:
    answer = client.post("/v1/videos/generations", json=BODY)
    answer.raise_for_status()
    return str(answer.json()["data"][0]["task_id"])


def task_times(database_url: str, ids: list[str]) -> list[tuple[float, float, float]]:
    """(created, started, completed) per task, from the store."""
    from omniflash.store import Store
    from omniflash.store.schema import tasks

    store = Store(database_url, migrate=False)
    try:
        with store.db.read() as conn:
            rows = conn.execute(
                sa.select(tasks.c.created_at, tasks.c.started_at, tasks.c.completed_at).where(
                    tasks.c.id.in_(ids)
                )
            ).all()
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        store.close()


def wait_done(client: httpx.Client, task_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/tasks/{task_id}").json()["data"]["status"] != "completed":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{task_id} did not complete")
        time.sleep(0.01)


def latency(service: Service, port: int, samples: int) -> tuple[float, float]:
    """p50 and p99 of submit → claimed, one task at a time, in ms."""
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {service.key}"}
    ids = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        wait_done(client, submit(client))  # the engine process is up
        time.sleep(0.5)
        for _ in range(samples):
            task_id = submit(client)
            wait_done(client, task_id)
            ids.append(task_id)
            time.sleep(0.05)  # idle again: every worker is waiting
    waits = sorted((s - c) * 1000 for c, s, _ in task_times(service.database_url, ids))
    return statistics.median(waits), waits[min(len(waits) - 1, int(len(waits) * 0.99))]


def throughput(service: Service, workers: int, count: int) -> float:
    """Tasks per second for ``workers`` in-process workers draining ``count`` queued tasks.

    The tasks are queued first, through an API-only server, so that the submit rate does
    not limit the drain; a second server with the workers then empties the queue.
    """
    port = free_port()
    headers = {"Authorization": f"Bearer {service.key}"}
    with (
        service.serve(port, workers=0),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client,
    ):
        ids = [submit(client) for _ in range(count)]
        drain = free_port()
        with service.serve(drain, workers=workers):
            deadline = time.monotonic() + 300
            # Watch the store, not the API: polling must not take the workers' CPU.
            while sum(c is not None for _, _, c in task_times(service.database_url, ids)) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError("the queue did not drain")
                time.sleep(0.25)
    times = task_times(service.database_url, ids)
    first = min(s for _, s, _ in times)
    last = max(c for _, _, c in times)
    return count / (last - first)


def bare_loop(database_url: str, threads: int, count: int) -> float:
    """The baseline: claim with SKIP LOCKED in one transaction, finish in another."""
    engine = sa.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=threads + 1
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS bare_queue (id bigserial PRIMARY KEY, "
            "status text NOT NULL, created_at double precision NOT NULL, "
            "started_at double precision, done_at double precision)"
        )
        conn.exec_driver_sql("TRUNCATE bare_queue")
        conn.exec_driver_sql(
            "INSERT INTO bare_queue (status, created_at) "
            f"SELECT 'pending', 0 FROM generate_series(1, {count})"
        )

    def run() -> None:
        while True:
            with engine.begin() as conn:
                row = conn.exec_driver_sql(
                    "SELECT id FROM bare_queue WHERE status = 'pending' ORDER BY id "
                    "LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).first()
                if row is None:
                    return
                conn.exec_driver_sql(
                    "UPDATE bare_queue SET status = 'processing', "
                    "started_at = extract(epoch from clock_timestamp()) WHERE id = %s",
                    (row[0],),
                )
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "UPDATE bare_queue SET status = 'done', "
                    "done_at = extract(epoch from clock_timestamp()) WHERE id = %s",
                    (row[0],),
                )

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    with engine.begin() as conn:
        first, last = conn.exec_driver_sql(
            "SELECT min(started_at), max(done_at) FROM bare_queue"
        ).one()
    engine.dispose()
    return float(count / (last - first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("OMNIFLASH_TEST_POSTGRES_URL"))
    parser.add_argument("--samples", type=int, default=100, help="latency samples [100]")
    parser.add_argument("--tasks", type=int, default=200, help="tasks per throughput run [200]")
    parser.add_argument("--workers", type=int, help="simulate this many remote worker loops")
    parser.add_argument("--procs", type=int, default=2, help="processes for the loops [2]")
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, s [20]")
    parser.add_argument("--queue", type=int, default=2000, help="tasks for the busy phase [2000]")
    parser.add_argument(
        "--load", type=int, default=0, help="CPU-bound processes running beside it all along [0]"
    )
    args = parser.parse_args()
    if not args.postgres:
        sys.exit("bench/fleet.py needs PostgreSQL: --postgres URL or OMNIFLASH_TEST_POSTGRES_URL")
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="omniflash-fleet-bench-"))
    with busy(args.load):
        run(args, work)
    print(f"\n{args.load} CPU-bound processes beside it; load average {os.getloadavg()[0]:.1f}")


@contextmanager
def busy(count: int) -> Iterator[None]:
    """``count`` processes that spin on the CPU: the same run on a machine under load."""
    spin = "while True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace, work: Path) -> None:
    if args.workers:
        from bench.fleet_sim import simulate

        with fresh_database(args.postgres) as url:
            simulate(Service(url, work), args.workers, args.procs, args.idle, 100, args.queue)
        return
    print("| measure | omniflash | bare SKIP LOCKED loop | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    with fresh_database(args.postgres) as url:
        service = Service(url, work)
        token = service.cli("workers", "create", "--name", "bench-remote")
        port = free_port()
        with service.serve(port, workers=1):
            p50, p99 = latency(service, port, args.samples)
        print(f"| dispatch p50 / p99, in-process | {p50:.1f} / {p99:.1f} ms | | | p99 ≤ 50 ms |")
        port = free_port()
        with service.serve(port, workers=0), service.worker(port, token, "remote"):
            p50, p99 = latency(service, port, args.samples)
        print(f"| dispatch p50 / p99, remote | {p50:.1f} / {p99:.1f} ms | | | p99 ≤ 50 ms |")
        for n in (1, 2, 4):
            ours = throughput(service, n, args.tasks)
            bare = bare_loop(url, n, args.tasks)
            print(
                f"| tasks/s, {n} worker{'s' if n > 1 else ''} | {ours:.1f} | {bare:.1f} | "
                f"{ours / bare:.2f} | ≥ 0.50 |",
                flush=True,
            )


if __name__ == "__main__":
    main()
