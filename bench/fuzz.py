"""Fuzz every door of a real server with schemathesis: no generated request may get a 5xx.

Starts ``omniflash serve`` (no in-process workers, so the machine fuzzes instead of
rendering) on a fresh SQLite file or PostgreSQL database, with a funded API key and a
worker token.  Then it runs schemathesis (examples, coverage, fuzzing and stateful
phases; NUL bytes allowed in strings) over two schemas until the cases add up to
``--cases``:

- the public OpenAPI document the server serves (``/openapi.json``: the Omni-Flash-Ext and
  OpenAI dialects, files, uploads, discovery, account), with the API key;
- the ``/worker/v1/`` routes, which the server keeps out of its public document, with
  the worker token.

The event streams (``GET /v1/tasks/{id}/events``, ``GET /v1/events``) are left out: a
stream that is answered stays open, its keep-alives beating any read timeout, so a
fuzzer would wait on it for ever.  Their inputs (ids, ``Last-Event-ID``, language,
response version, another key's task) are tested in ``tests/events/test_streams.py``.

At the end the money must add up (``tests.money.assert_money``).  Prints a table and
exits 1 on any 5xx or money error.

    python bench/fuzz.py --cases 20000
    OMNIFLASH_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python bench/fuzz.py --database postgres --cases 20000
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet import free_port, fresh_database  # noqa: E402  (needs ROOT on the path)

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@dataclasses.dataclass
class Round:
    surface: str
    operations: int
    cases: int
    server_errors: int
    seconds: float
    failures: list[str]


@contextlib.contextmanager
def _database(kind: str) -> Iterator[str | None]:
    """``None`` for SQLite in the data directory, else a fresh PostgreSQL database's URL."""
    if kind == "sqlite":
        yield None
        return
    base = os.environ.get("OMNIFLASH_TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("--database postgres needs OMNIFLASH_TEST_POSTGRES_URL")
    with fresh_database(base, "omniflash_fuzz") as url:
        yield url


def _omniflash(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "omniflash", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.strip().splitlines()[-1]


def worker_schema() -> dict[str, Any]:
    """An OpenAPI document for ``/worker/v1/``, built from the routes themselves."""
    from fastapi.openapi.utils import get_openapi

    from omniflash import __version__
    from omniflash.api.workers import routes as worker_routes

    routes = []
    for route in worker_routes.router.routes:
        shown = copy.copy(route)
        shown.include_in_schema = True  # type: ignore[attr-defined]
        routes.append(shown)
    schema = get_openapi(title="omniflash worker protocol", version=__version__, routes=routes)
    schema["components"] = schema.get("components", {})
    schema["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearerAuth": []}]
    return schema


_CASES = re.compile(r"^\s*(\d+) generated", re.MULTILINE)
STREAMS = r"/events$"
"""The event streams' paths: never fuzzed (see the module's docstring)."""
_FAILURE = re.compile(r"^_+ (.+?) _+$", re.MULTILINE)


def run_schemathesis(
    surface: str,
    location: str,
    base_url: str,
    token: str,
    examples: int,
    seed: int,
    workdir: Path,
) -> Round:
    """One schemathesis run; counts its cases and the 5xx answers it saw."""
    report = workdir / f"{surface}-{seed}.ndjson"
    args = [
        str(SCHEMATHESIS),
        "run",
        location,
        "--url",
        base_url,
        "-H",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        # One worker: CPython 3.11's parser is not safe to use from several threads at once,
        # and hypothesis parses lambdas' source to describe its strategies.
        "--workers",
        "1",
        "--generation-allow-x00",
        "true",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--exclude-path-regex",
        STREAMS,
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
    ]
    started = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=3600, cwd=workdir)
    seconds = time.monotonic() - started
    text = out.stdout + out.stderr
    found = _CASES.search(text)
    if found is None:
        raise RuntimeError(f"schemathesis said nothing about its cases:\n{text[-4000:]}")
    errors = _server_errors(report)
    failures = _FAILURE.findall(text.split("FAILURES", 1)[-1]) if "FAILURES" in text else []
    if out.returncode not in (0, 1):
        raise RuntimeError(f"schemathesis exited {out.returncode}:\n{text[-4000:]}")
    if out.returncode == 1 and not errors and not failures:
        raise RuntimeError(f"schemathesis failed without a finding:\n{text[-4000:]}")
    operations = len(re.findall(r"^\s*(?:GET|POST|PUT|DELETE|PATCH) /", text, re.MULTILINE))
    return Round(surface, operations, int(found.group(1)), errors, seconds, failures)


def _server_errors(report: Path) -> int:
    """Responses with a 5xx status in schemathesis's NDJSON report."""
    if not report.exists():
        return 0
    count = 0
    with report.open() as lines:
        for line in lines:
            count += len(re.findall(r'"status_code":\s*5\d\d', line))
    return count


@contextlib.contextmanager
def fuzz_server(database: str, workdir: Path) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    """A real server: ``(base_url, api_key, worker_token, env)``."""
    with _database(database) as url:
        env = dict(os.environ)
        env.update(
            {
                "OMNIFLASH_DATA_DIR": str(workdir / "data"),
                "OMNIFLASH_READ_RPM": "100000000",
                "OMNIFLASH_X264_PRESET": "ultrafast",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if url:
            env["OMNIFLASH_DATABASE_URL"] = url
        key = _omniflash(
            env,
            *("keys", "create", "--name", "fuzz", "--credits", "100000000"),
            *("--rpm", "100000000", "--max-concurrent", "100000"),
        )
        token = _omniflash(env, "workers", "create", "--name", "fuzz")
        port = free_port()
        log = (workdir / "server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniflash", "serve", "--port", str(port), "--workers", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        "the server exited:\n" + (workdir / "server.log").read_text()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.2)
            yield base, key, token, env
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def fuzz(database: str, cases: int, seed: int, workdir: Path) -> list[Round]:
    """Rounds over both schemas until ``cases`` cases ran; raises on a money error."""
    from omniflash.settings import Settings
    from tests.money import assert_money_at

    rounds: list[Round] = []
    with fuzz_server(database, workdir) as (base, key, token, env):
        public = workdir / "public.json"
        public.write_text(httpx.get(base + "/openapi.json", timeout=30).text)
        worker = workdir / "worker.json"
        worker.write_text(json.dumps(worker_schema()))
        surfaces = [("public", str(public), key, 0.8), ("worker", str(worker), token, 0.2)]
        per_round = max(5, cases // 40)
        total, n = 0, 0
        while total < cases:
            for surface, location, credential, share in surfaces:
                done = run_schemathesis(
                    surface,
                    location,
                    base,
                    credential,
                    max(1, int(per_round * share)),
                    seed + n,
                    workdir,
                )
                rounds.append(done)
                total += done.cases
            n += 1
        url = env.get("OMNIFLASH_DATABASE_URL") or Settings(data_dir=workdir / "data").database_url
        time.sleep(0.5)
        assert_money_at(url)
    return rounds


def table(rounds: list[Round]) -> str:
    rows = ["| surface | runs | cases | 5xx answers | seconds |", "| --- | --- | --- | --- | --- |"]
    for surface in sorted({r.surface for r in rounds}):
        mine = [r for r in rounds if r.surface == surface]
        rows.append(
            f"| {surface} | {len(mine)} | {sum(r.cases for r in mine):,} | "
            f"{sum(r.server_errors for r in mine)} | {sum(r.seconds for r in mine):.0f} |"
        )
    rows.append(
        f"| all | {len(rounds)} | {sum(r.cases for r in rounds):,} | "
        f"{sum(r.server_errors for r in rounds)} | {sum(r.seconds for r in rounds):.0f} |"
    )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000, help="cases to run in all")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="omniflash-fuzz-"))
    try:
        rounds = fuzz(args.database, args.cases, args.seed, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"schemathesis on {args.database}, seed {args.seed}")
    print(table(rounds))
    failures = sorted({f for r in rounds for f in r.failures})
    for failure in failures:
        print("failed:", failure)
    return 1 if failures or any(r.server_errors for r in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
