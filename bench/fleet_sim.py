"""``bench/fleet.py --workers N``: N remote worker loops against two API replicas.

The loops are asyncio coroutines in a few processes (``python bench/fleet_sim.py loops``),
each speaking the real ``/worker/v1/`` protocol with ``httpx.AsyncClient``: config, the
claim long poll, one heartbeat, the result upload (a real blank mp4 of the asked
geometry, ``bench.noop_engine``), complete.  Eight loops share a token, as the GPUs of
one machine do.  The replicas run as ``python bench/fleet_sim.py serve COUNTS -- ARGS``,
``omniflash serve`` with every SQL statement its engines send counted into ``COUNTS``.

Three phases, measured on one fresh PostgreSQL database:

- idle: every loop waits in a long poll; API CPU % per replica (``/proc/PID/stat``),
  statements/s sent by the replicas, and the database's transactions/s
  (``pg_stat_database``: commits + rollbacks);
- dispatch: one submit at a time while they wait, submit → claimed from the task rows;
- busy: the loops paused, a queue of tasks submitted, then all of them let go at once;
  tasks/s from the first claim to the last completion, and statements per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WAIT_S = 20.0
"""The loops' claim wait, as ``omniflash worker``'s default."""
PER_TOKEN = 8


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- a replica, with its statements counted ------------------------------------------------


def counted_serve(counts: str, args: list[str]) -> None:
    """``omniflash serve ARGS``, writing how many statements its engines sent to ``counts``."""
    from omniflash.cli import main

    sent = [0]

    def count(*_args: Any) -> None:
        sent[0] += 1

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)

    def write() -> None:
        while True:
            Path(counts).write_text(str(sent[0]))
            time.sleep(0.2)

    threading.Thread(target=write, daemon=True).start()
    main(args, prog_name="omniflash")


# -- the worker loops ------------------------------------------------------------------------


class Loops:
    """One process's loops; ``pause``/``go``/``stop`` arrive on stdin, counts go to stdout."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.go.set()
        self.stopping = False
        self.done = self.errors = self.polls = 0
        self.kinds: dict[str, int] = {}
        self.files: dict[tuple[int, int, int, int], tuple[bytes, dict[str, Any]]] = {}

    def blank(self, spec: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        from bench.noop_engine import _blank

        fps = int(spec["fps"])
        frames = int(spec.get("frames") or 4 * fps)
        geometry = (int(spec["width"]), int(spec["height"]), frames, fps)
        if geometry not in self.files:
            report = {"frames": frames, "width": geometry[0], "height": geometry[1], "fps": fps}
            self.files[geometry] = (_blank(*geometry).read_bytes(), report)
        return self.files[geometry]

    async def one(self, client: httpx.AsyncClient, name: str) -> None:
        (await client.get("/worker/v1/config")).raise_for_status()
        while not self.stopping:
            if not self.go.is_set():
                await self.go.wait()
                continue
            try:
                await self.task(client, name)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                self.errors += 1
                kind = type(exc).__name__
                if isinstance(exc, httpx.HTTPStatusError):
                    kind = f"{exc.request.url.path.rsplit('/', 1)[-1]} {exc.response.status_code}"
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
                # A kept-alive connection the server closed while the loops were paused
                # (uvicorn keeps one 5 s): retried at once, as a worker's next call would.
                await asyncio.sleep(0.0 if isinstance(exc, httpx.TransportError) else 1.0)

    async def task(self, client: httpx.AsyncClient, name: str) -> None:
        self.polls += 1
        answer = await client.post(
            "/worker/v1/claim",
            json={"owner": name, "wait_s": WAIT_S * random.uniform(0.8, 1.0)},  # as a worker
            timeout=WAIT_S + 60,
        )
        if answer.status_code == 204:
            return
        answer.raise_for_status()
        lease = answer.json()["lease"]
        path = f"/worker/v1/tasks/{lease['task_id']}"
        epoch = lease["epoch"]
        data, report = self.blank(lease["spec"])
        beat = await client.post(f"{path}/heartbeat", json={"epoch": epoch, "progress": 50})
        beat.raise_for_status()
        put = await client.put(
            f"{path}/result",
            params={"epoch": epoch},
            content=data,
            headers={"Content-Type": "video/mp4"},
        )
        put.raise_for_status()
        done = await client.post(f"{path}/complete", json={"epoch": epoch, "result": report})
        done.raise_for_status()
        self.done += 1

    def command(self, line: str) -> None:
        word = line.strip()
        if word == "pause":
            self.go.clear()
        elif word == "go":
            self.go.set()
        elif word == "stop":
            self.stopping = True
            self.go.set()
            if self.kinds:
                print(f"errors {self.kinds}", file=sys.stderr, flush=True)
        print(f"{self.done} {self.errors} {self.polls}", flush=True)


async def run_loops(urls: list[str], tokens: list[str], first: int, count: int) -> None:
    loops = Loops()
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    clients = [
        httpx.AsyncClient(
            base_url=urls[n % len(urls)],
            headers={"Authorization": f"Bearer {tokens[n // PER_TOKEN]}"},
            timeout=60,
            limits=limits,
        )
        for n in range(first, first + count)
    ]
    runs = [
        asyncio.ensure_future(loops.one(client, f"sim-{first + i}"))
        for i, client in enumerate(clients)
    ]

    def read_commands() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(loops.command, line)
            if line.strip() == "stop":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    print("ready", flush=True)
    while not loops.stopping:
        await asyncio.sleep(0.2)
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    for client in clients:
        await client.aclose()


# -- the orchestrator ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def db_transactions(url: str) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            return int(
                conn.exec_driver_sql(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                ).scalar_one()
            )
    finally:
        engine.dispose()


class Fleet:
    def __init__(self, service: Any, workers: int, procs: int) -> None:
        from bench.fleet import free_port

        self.service = service
        self.workers = workers
        self.ports = [free_port(), free_port()]
        self.counts = [service.work / f"statements-{p}" for p in self.ports]
        self.pids: list[int] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.nprocs = procs

    def statements(self) -> int:
        return sum(int(p.read_text() or 0) for p in self.counts)

    def snapshot(self) -> tuple[float, list[float], int, int]:
        cpu = [cpu_seconds(pid) for pid in self.pids]
        return time.monotonic(), cpu, self.statements(), db_transactions(self.service.database_url)

    @contextlib.contextmanager
    def replicas(self) -> Iterator[None]:
        from bench.fleet import process

        with contextlib.ExitStack() as stack:
            for port, counts in zip(self.ports, self.counts, strict=True):
                args = [sys.executable, str(Path(__file__)), "serve", str(counts), "--", "serve",
                        "--port", str(port), "--workers", "0", "--log-level", "warning",
                        "--data-dir", str(self.service.work / f"sim-{port}")]  # fmt: skip
                stack.enter_context(
                    process(args, self.service.env, f"http://127.0.0.1:{port}/healthz")
                )
            self.pids = [self._pid(port) for port in self.ports]
            yield

    def _pid(self, port: int) -> int:
        out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True)
        return int(out.stdout.split("pid=")[1].split(",")[0])

    def tokens(self) -> list[str]:
        from omniflash.store import Store

        store = Store(self.service.database_url, migrate=False)
        try:
            n = -(-self.workers // PER_TOKEN)
            return [store.workers.create(f"sim-{i}")[0] for i in range(n)]
        finally:
            store.close()

    @contextlib.contextmanager
    def loops(self) -> Iterator[None]:
        tokens = self.tokens()
        urls = ",".join(f"http://127.0.0.1:{p}" for p in self.ports)
        share = -(-self.workers // self.nprocs)
        try:
            for first in range(0, self.workers, share):
                count = min(share, self.workers - first)
                args = [sys.executable, str(Path(__file__)), "loops", urls, str(first), str(count)]
                self.procs.append(self._spawn(args))
                assert self.procs[-1].stdin is not None
                self.procs[-1].stdin.write("\n".join(tokens) + "\n\n")
            for proc in self.procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError("a loop process did not start")
            yield
        finally:
            for proc in self.procs:
                with contextlib.suppress(OSError):
                    self.tell(proc, "stop")
            for proc in self.procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def _spawn(self, args: list[str]) -> subprocess.Popen[str]:
        pipe = subprocess.PIPE
        return subprocess.Popen(
            args, env=self.service.env, cwd=ROOT, text=True, bufsize=1,
            stdin=pipe, stdout=pipe, stderr=None,
        )  # fmt: skip

    def tell(self, proc: subprocess.Popen[str], word: str) -> tuple[int, int, int]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(word + "\n")
        proc.stdin.flush()
        done, errors, polls = proc.stdout.readline().split()
        return int(done), int(errors), int(polls)

    def tell_all(self, word: str) -> tuple[int, int, int]:
        counts = [self.tell(p, word) for p in self.procs]
        return sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts)


def simulate(
    service: Any, workers: int, procs: int, idle_s: float, samples: int, queue: int
) -> None:
    from bench.fleet import submit, task_times

    raise_fd_limit()
    fleet = Fleet(service, workers, procs)
    headers = {"Authorization": f"Bearer {service.key}"}
    with fleet.replicas(), fleet.loops():
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", headers=headers, timeout=60)
                   for p in fleet.ports]  # fmt: skip
        time.sleep(WAIT_S / 2)  # every loop has connected and is waiting
        t0, cpu0, st0, tx0 = fleet.snapshot()
        time.sleep(idle_s)
        t1, cpu1, st1, tx1 = fleet.snapshot()
        window = t1 - t0
        ids = []
        for n in range(samples):
            ids.append(submit(clients[n % 2]))
            time.sleep(0.1)
        time.sleep(1.0)
        times = task_times(service.database_url, ids)
        waits = sorted((s - c) * 1000 for c, s, _ in times if s is not None)
        fleet.tell_all("pause")
        time.sleep(WAIT_S + 2)  # every long poll has ended
        with ThreadPoolExecutor(8) as pool:
            busy = list(pool.map(lambda n: submit(clients[n % 2]), range(queue)))
        b0 = fleet.snapshot()
        done0 = fleet.tell_all("go")[0]
        deadline = time.monotonic() + 180
        while fleet.tell_all("status")[0] - done0 < queue and time.monotonic() < deadline:
            time.sleep(0.5)
        b1 = fleet.snapshot()
        _done, errors, _polls = fleet.tell_all("status")
        for client in clients:
            client.close()
    times = [t for t in task_times(service.database_url, busy) if t[2] is not None]
    rate = len(times) / (max(t[2] for t in times) - min(t[1] for t in times))
    busy_cpu = [(b1[1][i] - b0[1][i]) / (b1[0] - b0[0]) * 100 for i in range(2)]
    print(f"\n{workers} remote worker loops ({procs} processes, {PER_TOKEN} per token, "
          f"claim wait {WAIT_S:.0f} s) on 2 replicas, one PostgreSQL\n")  # fmt: skip
    print("| measure | value |")
    print("| --- | --- |")
    cpu = [(cpu1[i] - cpu0[i]) / window * 100 for i in range(2)]
    print(f"| idle: API CPU per replica | {cpu[0]:.1f} % / {cpu[1]:.1f} % |")
    print(f"| idle: statements/s sent by the replicas | {(st1 - st0) / window:.1f} |")
    print(f"| idle: DB transactions/s (pg_stat_database) | {(tx1 - tx0) / window:.1f} |")
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    print(f"| dispatch p50 / p99 while all wait ({len(waits)} submits) | "
          f"{statistics.median(waits):.1f} / {p99:.1f} ms |")  # fmt: skip
    print(f"| busy: tasks/s ({len(times)} of {queue} tasks) | {rate:.1f} |")
    print(f"| busy: API CPU per replica | {busy_cpu[0]:.0f} % / {busy_cpu[1]:.0f} % |")
    print(f"| busy: statements per task (replicas) | {(b1[2] - b0[2]) / len(times):.1f} |")
    print(f"| busy: DB transactions per task | {(b1[3] - b0[3]) / len(times):.1f} |")
    print(f"| loop errors (HTTP, stale keep-alive connections included) | {errors} |")


def main() -> None:
    if sys.argv[1] == "serve":
        counted_serve(sys.argv[2], sys.argv[4:])
    elif sys.argv[1] == "loops":
        raise_fd_limit()
        tokens = []
        while line := sys.stdin.readline().strip():
            tokens.append(line)
        asyncio.run(run_loops(sys.argv[2].split(","), tokens, int(sys.argv[3]), int(sys.argv[4])))


if __name__ == "__main__":
    main()
