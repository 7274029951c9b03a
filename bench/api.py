"""The API's hot path against a bare FastAPI app, in the same run, interleaved.

For SQLite (and PostgreSQL when ``--postgres URL`` or ``OMNIFLASH_TEST_POSTGRES_URL`` is
given) it starts ``omniflash serve --workers 0`` and ``bench/bare_app.py`` (same uvicorn
settings, bodies of the same size), loads each with ``wrk`` (16 connections, a separate
process), alternating between them for every round, and prints req/s, p50 and p99 for
GET task, GET list and POST submit; submits are measured with 1k and with 100k tasks in
the table.  GET task is compared with two bare routes, measured in the same rounds: a
sync ``def`` route (run in the thread pool) and an ``async def`` route, the framework's
own limit.  It also prints the idle API process's resident memory.

    python bench/api.py                      # ~4 min on 2 cores
    python bench/api.py --seconds 10 --rounds 3
    python bench/api.py --only get           # GET task only, ~1 min

Needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

HERE = Path(__file__).parent
BODY = {"model": "Omni-Flash-Ext", "prompt": "a lighthouse on a cliff at dusk", "duration": 4}


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}: the server did not start")


@contextmanager
def process(
    args: list[str], env: dict[str, str], url: str, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server started from ``args``, up once ``url`` answers; its output to ``log``."""
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_up(url, proc)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def wrk(url: str, seconds: float, headers: dict[str, str], post: bytes | None) -> Result:
    args = ["wrk", "-t2", "-c16", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    script = None
    if post is not None:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(post.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        script.close()
        args += ["-s", script.name]
    try:
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    finally:
        if script is not None:
            os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error answers\n{out}")

    def pct(p: str) -> float:
        value, unit = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return Result(rps, pct("50"), pct("99"))


def populate(database_url: str, key_id: int, total: int) -> None:
    """Fill the task table up to ``total`` rows of finished history, in bulk."""
    from omniflash.contract import parse_generation_request
    from omniflash.ids import new_task_id
    from omniflash.store import Store
    from omniflash.store.schema import tasks

    store = Store(database_url, migrate=False)
    spec = parse_generation_request(BODY).to_json()
    with store.db.read() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one()
    now = time.time() - 86_400
    while have < total:
        batch = min(5000, total - have)
        rows = [
            {
                "id": new_task_id(now),
                "key_id": key_id,
                "status": "completed",
                "progress": 100,
                "spec": spec,
                "seed": 1,
                "credits": 1000,
                "estimated_time": 3,
                "created_at": now,
                "completed_at": now + 2,
                "attempts": 1,
                "lease_epoch": 1,
                "result_deleted": True,
            }
            for _ in range(batch)
        ]
        with store.db.write() as conn:
            conn.execute(tasks.insert(), rows)
        have += batch
    store.close()


def bench_database(label: str, database_url: str, args: argparse.Namespace) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="omniflash-bench-"))
    try:
        return _bench_in(work, label, database_url, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench_in(work: Path, label: str, database_url: str, args: argparse.Namespace) -> list[str]:
    env = dict(os.environ, OMNIFLASH_READ_RPM=str(10**9), PYTHONUNBUFFERED="1")
    if database_url.startswith("postgresql"):
        env["OMNIFLASH_DATABASE_URL"] = database_url
    data_dir = work / "data"
    omni = [sys.executable, "-m", "omniflash"]
    made = subprocess.run(
        [
            *omni,
            "keys",
            "create",
            "--name",
            "bench",
            "--credits",
            "1000000000",
            "--rpm",
            "1000000000",
            "--max-concurrent",
            "1000000000",
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    url = (
        database_url
        if database_url.startswith("postgresql")
        else (f"sqlite:///{data_dir.resolve() / 'omniflash.db'}")
    )
    populate(url, 1, 1000)
    port, bare_port = free_port(), free_port()
    base, bare = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    headers = {"Authorization": f"Bearer {key}"}
    rows: list[str] = []
    with process(
        [
            *omni,
            "serve",
            "--workers",
            "0",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
        ],
        env,
        base + "/healthz",
    ) as server:
        time.sleep(1.0)
        rss = _rss_mib(server.pid)
        task_id = httpx.post(base + "/v1/videos/generations", json=BODY, headers=headers).json()[
            "data"
        ][0]["task_id"]
        task_bytes = len(httpx.get(f"{base}/v1/tasks/{task_id}", headers=headers).content)
        list_bytes = len(httpx.get(f"{base}/v1/tasks", headers=headers).content)
        bare_url = (
            database_url
            if database_url.startswith("postgresql")
            else f"sqlite:///{work / 'bare.db'}"
        )
        if bare_url.startswith("postgresql://"):
            bare_url = "postgresql+psycopg://" + bare_url.split("://", 1)[1]
        with process(
            [
                sys.executable,
                str(HERE / "bare_app.py"),
                str(bare_port),
                bare_url,
                str(task_bytes),
                str(list_bytes),
            ],
            env,
            bare + "/v1/tasks",
        ):
            get = f"/v1/tasks/{task_id}"
            rows += _compare(
                label,
                ["GET task vs sync route", "GET task vs async route"],
                base + get,
                [bare + get, bare + "/async" + get],
                headers,
                None,
                args,
            )
            if args.only == "get":
                return [*rows, _rss_row(label, rss)]
            paths = [
                ("GET list", "/v1/tasks?limit=20", None),
                ("POST submit (1k tasks)", "/v1/videos/generations", json.dumps(BODY).encode()),
            ]
            for name, path, post in paths:
                rows += _compare(label, [name], base + path, [bare + path], headers, post, args)
            populate(url, 1, args.big)
            rows += _compare(
                label,
                [f"POST submit ({args.big // 1000}k tasks)"],
                base + paths[1][1],
                [bare + paths[1][1]],
                headers,
                paths[1][2],
                args,
            )
    return [*rows, _rss_row(label, rss)]


def _rss_row(label: str, rss: float) -> str:
    return f"| API process idle RSS ({label}) | {rss:.0f} MiB | | | | | | target ≤ 70 MiB |"


def _compare(
    label: str,
    names: list[str],
    ours: str,
    bares: list[str],
    headers: dict[str, str],
    post: bytes | None,
    args: argparse.Namespace,
) -> list[str]:
    """One row per baseline in ``bares`` (named by ``names``), ours measured once a round."""
    mine: list[Result] = []
    base: list[list[Result]] = [[] for _ in bares]
    for _ in range(args.rounds):  # interleaved, so drift hits all alike
        mine.append(wrk(ours, args.seconds, headers, post))
        for results, bare in zip(base, bares, strict=True):
            results.append(wrk(bare, args.seconds, {}, post))

    def med(results: list[Result], field: str) -> float:
        return statistics.median(getattr(r, field) for r in results)

    rows = []
    for name, results in zip(names, base, strict=True):
        ratio = med(mine, "rps") / med(results, "rps")
        rows.append(
            f"| {name} ({label}) | {med(mine, 'rps'):,.0f} | {med(mine, 'p50_ms'):.1f} | "
            f"{med(mine, 'p99_ms'):.1f} | {med(results, 'rps'):,.0f} | "
            f"{med(results, 'p50_ms'):.1f} | {med(results, 'p99_ms'):.1f} | {ratio:.2f} |"
        )
    return rows


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each wrk run [5]")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs per path [2]")
    parser.add_argument("--big", type=int, default=100_000, help="tasks for the second submit run")
    parser.add_argument("--postgres", default=os.environ.get("OMNIFLASH_TEST_POSTGRES_URL"))
    parser.add_argument(
        "--only", choices=["get"], help="measure GET task alone (against both bare routes)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/api.py needs wrk: apt-get install wrk")
    print(
        "| path | omniflash req/s | p50 ms | p99 ms | bare req/s | p50 ms | p99 ms | ratio |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for row in bench_database("SQLite", "sqlite", args):
        print(row, flush=True)
    if args.postgres:
        admin = sa.create_engine(
            args.postgres.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
        )
        name = f"omniflash_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            url = args.postgres.rsplit("/", 1)[0] + "/" + name
            for row in bench_database("PostgreSQL", url, args):
                print(row, flush=True)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


if __name__ == "__main__":
    main()
