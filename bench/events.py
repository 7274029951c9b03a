"""Event streams on PostgreSQL: idle streams' cost on one API process, and event latency
from a worker on replica A to a client on replica B.

It starts two ``omniflash serve --workers 0`` replicas on a fresh database, then:

1. ``GET /v1/tasks/{id}`` on A, p50 and p99 (the baseline), then with ``--streams``
   (1,000) idle ``GET /v1/events`` streams open on A, then again after they closed:
   the same run, the same task, interleaved;
2. A's resident memory before and with the streams: memory per stream;
3. a worker played by this script reports progress on A (``POST /worker/v1/…/heartbeat``)
   while a client streams the task on B: the time from the heartbeat's request to the
   ``progress`` event read on B, p50 and p99.

    OMNIFLASH_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python bench/events.py
    python bench/events.py --postgres URL --streams 1000 --gets 2000 --events 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import subprocess
import sys
import tempfile
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

from bench.api import process  # noqa: E402  (needs ROOT on the path)
from bench.fleet import free_port  # noqa: E402

OMNIFLASH = (sys.executable, "-m", "omniflash")
BODY = {"model": "Omni-Flash-Ext", "prompt": "a lighthouse at dusk", "duration": 4}


def cli(env: dict[str, str], data_dir: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "omniflash", *args, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def replica(env: dict[str, str], data_dir: Path, log: Path) -> Iterator[tuple[str, int]]:
    """One ``omniflash serve --workers 0``: its URL and pid while it runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [*OMNIFLASH, "serve", "--workers", "0", "--port", str(port), "--data-dir", str(data_dir)]
    with process(args, env, url + "/healthz", log) as proc:
        yield url, proc.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def gets(url: str, key: str, task_id: str, n: int) -> tuple[float, float]:
    """``n`` sequential polls of one task: p50 and p99 in ms."""
    took = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(n):
            start = time.perf_counter()
            assert client.get(f"/v1/tasks/{task_id}").status_code == 200
            took.append((time.perf_counter() - start) * 1000)
    return percentiles(took)


def percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100)
    return statistics.median(values), cuts[98]


class IdleStreams:
    """``n`` idle ``GET /v1/events`` streams, held open by one event loop in a thread."""

    def __init__(self, url: str, key: str, n: int) -> None:
        self.url, self.key, self.n = url, key, n
        self.loop = asyncio.new_event_loop()
        self.opened = threading.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _open_one(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {self.key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.decode(errors="replace"))
        self.writers.append(writer)

    async def _open(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        for start in range(0, self.n, 100):
            await asyncio.gather(
                *(self._open_one(host, int(port)) for _ in range(min(100, self.n - start)))
            )

    def __enter__(self) -> IdleStreams:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(120)
        return self

    def __exit__(self, *_exc: object) -> None:
        async def close() -> None:
            for writer in self.writers:
                writer.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def event_latency(a: str, b: str, key: str, token: str, samples: int) -> tuple[float, float]:
    """Heartbeats with rising progress on A, each timed until B's client reads its event."""
    took: list[float] = []
    auth = {"Authorization": f"Bearer {key}"}
    worker = httpx.Client(base_url=a, headers={"Authorization": f"Bearer {token}"})
    while len(took) < samples:
        httpx.post(a + "/v1/videos/generations", json=BODY, headers=auth).raise_for_status()
        # The oldest pending task: the one just submitted, or the polls' task at first.
        lease = worker.post("/worker/v1/claim", json={"owner": "bench", "wait_s": 5}).json()
        task_id, epoch = lease["lease"]["task_id"], lease["lease"]["epoch"]
        arrived: queue.Queue[float] = queue.Queue()
        ready = threading.Event()

        def read(
            task_id: str = task_id,
            arrived: queue.Queue[float] = arrived,
            ready: threading.Event = ready,
        ) -> None:
            with httpx.stream(
                "GET", f"{b}/v1/tasks/{task_id}/events", headers=auth, timeout=60
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                        if kind == "status":
                            ready.set()
                        elif kind == "progress":
                            arrived.put(time.perf_counter())
                        elif kind == "end":
                            return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ready.wait(30)
        for progress in range(1, 100):
            if len(took) >= samples:
                break
            start = time.perf_counter()
            beat = worker.post(
                f"/worker/v1/tasks/{task_id}/heartbeat", json={"epoch": epoch, "progress": progress}
            )
            assert beat.status_code == 200 and beat.json()["held"], beat.text
            took.append((arrived.get(timeout=10) - start) * 1000)
        worker.post(
            f"/worker/v1/tasks/{task_id}/fail",
            json={"epoch": epoch, "message": "done", "retry": False},
        )
        reader.join(30)
    worker.close()
    return percentiles(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=os.environ.get("OMNIFLASH_TEST_POSTGRES_URL"))
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    if not args.postgres:
        sys.exit("needs --postgres URL or OMNIFLASH_TEST_POSTGRES_URL")
    admin = sa.create_engine(
        args.postgres.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
    )
    name = f"omniflash_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = args.postgres.rsplit("/", 1)[0] + "/" + name
    tmp = Path(tempfile.mkdtemp(prefix="omniflash-events-bench-"))
    env = {
        **os.environ,
        "OMNIFLASH_DATABASE_URL": url,
        "OMNIFLASH_READ_RPM": "10000000",
        "OMNIFLASH_LEASE_SECONDS": "300",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src"),
    }
    try:
        key = cli(env, tmp / "admin", "keys", "create", "--name", "bench", "--credits", "100000")
        token = cli(env, tmp / "admin", "workers", "create", "--name", "bench")
        with (
            replica(env, tmp / "a", tmp / "a.log") as (a, a_pid),
            replica(env, tmp / "b", tmp / "b.log") as (b, _),
        ):
            auth = {"Authorization": f"Bearer {key}"}
            task_id = httpx.post(a + "/v1/videos/generations", json=BODY, headers=auth).json()[
                "data"
            ][0]["task_id"]
            gets(a, key, task_id, 200)  # warm up
            before = gets(a, key, task_id, args.gets)
            rss_before = rss_mib(a_pid)
            with IdleStreams(a, key, args.streams):
                time.sleep(1)
                rss_with = rss_mib(a_pid)
                beside = gets(a, key, task_id, args.gets)
            after = gets(a, key, task_id, args.gets)
            latency = event_latency(a, b, key, token, args.events)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    per_stream_kib = (rss_with - rss_before) * 1024 / args.streams
    print(f"\nEvent streams on PostgreSQL ({os.cpu_count()} cores)\n")
    print(f"{'measure':<52} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"{'GET /v1/tasks/{id} on A, no streams (baseline)':<52} {before[0]:8.2f} {before[1]:8.2f}"
    )
    label = f"GET /v1/tasks/{{id}} on A, {args.streams} idle streams open"
    print(f"{label:<52} {beside[0]:8.2f} {beside[1]:8.2f}")
    print(f"{'GET /v1/tasks/{id} on A, streams closed again':<52} {after[0]:8.2f} {after[1]:8.2f}")
    label = f"event latency, heartbeat on A -> client on B ({args.events})"
    print(f"{label:<52} {latency[0]:8.2f} {latency[1]:8.2f}")
    print(
        f"\nA's resident memory: {rss_before:.1f} MiB idle, {rss_with:.1f} MiB with "
        f"{args.streams} streams: {per_stream_kib:.1f} KiB per stream"
    )


if __name__ == "__main__":
    main()
