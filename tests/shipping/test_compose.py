"""compose.yaml run with podman-compose: PostgreSQL, an S3 server, two API replicas behind
nginx and two workers; tasks submitted through both replicas all complete, though a
worker is killed mid-task.

The public PostgreSQL, MinIO and nginx images cannot be pulled everywhere these tests
run; ``compose.standins.yaml`` swaps in one image built here from Debian's packages and
moto (tests/shipping/standins). Everything else is compose.yaml as a user runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from omniflash.store import Store
from omniflash.store.schema import tasks
from tests.conftest import free_port, wait_for_task
from tests.money import assert_money_at
from tests.service.test_service import decode, download
from tests.shipping import podman

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

PROJECT = "omniflash-compose-test"


@dataclasses.dataclass
class Compose:
    """A running compose project: its directory, the proxy's URL, the database's URL."""

    root: Path
    url: str
    database_url: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> str:
        cmd = ["podman-compose", "-p", PROJECT, "-f", "compose.yaml", "-f"]
        cmd += ["compose.standins.yaml", *args]
        proc = subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    def container(self, service: str) -> podman.Container:
        return podman.Container(f"{PROJECT}_{service}_1")

    def exec(self, service: str, *args: str) -> str:
        """``podman exec`` in ``service``, tried again while it fails, as an operator would:
        under load, the network's DNS now and then answers a name late (EAI_AGAIN)."""
        for attempt in range(5):
            try:
                return podman.podman("exec", self.container(service).name, *args)
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def compose(api_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    if shutil.which("podman-compose") is None:
        pytest.skip("podman-compose is not installed (apt-get install podman-compose)")
    podman.build_standins_image()
    root = tmp_path_factory.mktemp("compose")
    shutil.copy(podman.ROOT / "compose.yaml", root)
    shutil.copy(podman.ROOT / "tests/shipping/compose.standins.yaml", root)
    (root / "deploy/compose").mkdir(parents=True)
    shutil.copy(podman.ROOT / "deploy/compose/nginx.conf", root / "deploy/compose")
    made = subprocess.run(
        [sys.executable, str(podman.ROOT / "deploy/compose/make-env.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Short leases, so a killed worker's task returns within seconds.
    (root / "omniflash.env").write_text(made + "\nOMNIFLASH_LEASE_SECONDS=4\n")
    password = dict(line.split("=", 1) for line in made.splitlines())["POSTGRES_PASSWORD"]
    http_port, pg_port = free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "OMNIFLASH_API_IMAGE": api_image,
        "OMNIFLASH_HTTP_PORT": str(http_port),
        "OMNIFLASH_TEST_PG_PORT": str(pg_port),
    }
    project = Compose(
        root,
        f"http://127.0.0.1:{http_port}",
        f"postgresql://omniflash:{password}@127.0.0.1:{pg_port}/omniflash",
        env,
    )
    project.run("down", "-v")
    try:
        project.run("up", "-d")
        podman.wait_healthy(project.url, project.container("proxy"), timeout=120)
        for worker in ("worker1", "worker2"):
            project.container(worker).wait_log("preview engine", timeout=120)
        yield project
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            project.run("down", "-v")
        # podman-compose 1.0 leaves the project's network behind
        podman.podman("network", "rm", f"{PROJECT}_default", check=False)


SUBMIT = """
import json, sys, urllib.request
body = json.dumps({"model": "Omni-Flash-Ext", "prompt": "a harbour at night",
                   "resolution": "1080p", "duration": 8}).encode()
request = urllib.request.Request("http://127.0.0.1:8000/v1/videos/generations", body,
    {"Authorization": "Bearer @KEY@", "Content-Type": "application/json",
     "Idempotency-Key": "@IDEM@"})  # a retried exec submits once
print(json.load(urllib.request.urlopen(request))["data"][0]["task_id"])
"""


def test_tasks_through_both_replicas_all_complete_though_a_worker_is_killed(
    compose: Compose,
) -> None:
    out = compose.exec(
        "api1", "omniflash", "keys", "create",
        "--name", "compose", "--credits", "100", "--rpm", "10000", "--max-concurrent", "10",
    )  # fmt: skip
    key = out.strip().splitlines()[-1]
    ids = []
    for replica in ("api1", "api2", "api1", "api2"):
        code = SUBMIT.replace("@KEY@", key).replace("@IDEM@", uuid.uuid4().hex)
        ids.append(compose.exec(replica, "python3", "-c", code).strip())
    assert len(set(ids)) == 4
    client = httpx.Client(
        base_url=compose.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    with client:
        for task_id in ids[:2]:  # both workers busy: the one killed is mid-task
            wait_for_task(client, task_id, until=("processing",), timeout=60)
        victim = compose.container("worker1")
        podman.podman("kill", "--signal", "KILL", victim.name)
        done = [wait_for_task(client, task_id, timeout=240) for task_id in ids]
    assert [d["status"] for d in done] == ["completed"] * 4, done
    for data in done:
        info = decode(download(data["result"]["videos"][0]["url"][0]))  # type: ignore[index]
        assert (info["width"], info["height"], len(info["frames"])) == (1920, 1080, 8 * 24)
    store = Store(compose.database_url, migrate=False)
    try:
        with store.db.read() as conn:
            keys = conn.execute(sa.select(tasks.c.id, tasks.c.result_key)).all()
    finally:
        store.close()
    # The killed worker's task ran again: its result is a later attempt's file.
    assert any(not result.endswith(".1.mp4") for _, result in keys), keys
    assert_money_at(compose.database_url)
