"""The API image, built from the Containerfile and run with podman: an API container on
PostgreSQL and worker containers complete tasks, and a worker stopped mid-task hands its
task back for another to finish."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

import omniflash
from omniflash.store import Store, TaskStatus
from omniflash.store.schema import ledger
from tests.conftest import _truncate, free_port, wait_for_task
from tests.money import assert_money_at
from tests.service.test_service import decode, download
from tests.shipping import podman

pytestmark = [pytest.mark.containers, pytest.mark.postgres, pytest.mark.timeout(600)]

SLOW = {"resolution": "1080p", "duration": 8}  # several seconds of preview rendering


@dataclasses.dataclass
class Fleet:
    """An API container serving on ``url`` over PostgreSQL, a funded key, a worker token."""

    url: str
    store: Store
    database_url: str
    key: str
    token: str
    api: podman.Container
    start_s: float

    def worker(self) -> podman.Container:
        """A worker container of the same image, idle in its first claim."""
        container = podman.run(
            podman.API_IMAGE,
            "worker",
            "--server",
            self.url,
            "--workers",
            "1",
            env={"OMNIFLASH_WORKER_TOKEN": self.token, "OMNIFLASH_X264_PRESET": "ultrafast"},
        )
        try:
            container.wait_log("preview engine")
        except RuntimeError:
            container.remove()
            raise
        time.sleep(0.5)  # from the engine's ready line to the first claim
        return container

    def submit(self, **fields: object) -> str:
        body = {"model": "Omni-Flash-Ext", "prompt": "a harbour at night", "duration": 4}
        body.update(fields)
        with self.client() as client:
            response = client.post("/v1/videos/generations", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["data"][0]["task_id"])

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def ledger_reasons(self, task_id: str) -> list[str]:
        with self.store.db.read() as conn:
            rows = conn.execute(sa.select(ledger.c.reason).where(ledger.c.task_id == task_id))
            return sorted(rows.scalars())


@pytest.fixture(scope="module")
def fleet(api_image: str, postgres_url: str) -> Iterator[Fleet]:
    store = Store(postgres_url)
    _truncate(store)
    key, _ = store.keys.create("containers", 10_000_000, 10_000, 10)
    token, _ = store.workers.create("container-gpu")
    port = free_port()
    env = {
        "OMNIFLASH_DATABASE_URL": postgres_url,
        "OMNIFLASH_PORT": str(port),
        "OMNIFLASH_WORKERS": "0",
    }
    started = time.monotonic()
    with podman.running(api_image, env=env, healthcheck=True) as api:
        url = f"http://127.0.0.1:{port}"
        podman.wait_healthy(url, api)
        try:
            yield Fleet(url, store, postgres_url, key, token, api, time.monotonic() - started)
        finally:
            store.close()
    assert_money_at(postgres_url)


def test_the_image_is_labelled_unprivileged_and_holds_no_secrets(api_image: str) -> None:
    info = json.loads(podman.podman("image", "inspect", api_image))[0]
    config = info["Config"]
    assert config["Labels"]["org.opencontainers.image.version"] == omniflash.__version__
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["omniflash"]
    assert "/healthz" in " ".join(info.get("Healthcheck", config.get("Healthcheck"))["Test"])
    names = {entry.split("=", 1)[0] for entry in config["Env"]}
    assert not names & {"OMNIFLASH_DATABASE_URL", "OMNIFLASH_WORKER_TOKEN", "AWS_SECRET_ACCESS_KEY"}
    out = podman.podman("run", "--rm", "--no-healthcheck", api_image, "--version")
    assert out.strip() == f"omniflash, version {omniflash.__version__}"
    assert "torch" not in podman.podman(
        "run", "--rm", "--no-healthcheck", "--entrypoint", "pip", api_image, "list"
    )


def test_api_and_worker_containers_complete_a_task_whose_mp4_decodes(fleet: Fleet) -> None:
    assert podman.podman("healthcheck", "run", fleet.api.name).strip() in ("", "healthy")
    worker = fleet.worker()
    try:
        task_id = fleet.submit(resolution="720p", duration=4)
        with fleet.client() as client:
            data = wait_for_task(client, task_id, timeout=120)
        assert data["status"] == "completed", (data, worker.logs())
        video = data["result"]["videos"][0]  # type: ignore[index]
        info = decode(download(video["url"][0]))
        assert (info["codec"], info["width"], info["height"]) == ("h264", 1280, 720)
        assert len(info["frames"]) == 4 * 24
        assert fleet.ledger_reasons(task_id) == ["charge"]
    finally:
        worker.remove()
    assert_money_at(fleet.database_url)


def test_a_worker_stopped_mid_task_hands_it_back_for_another_to_finish(fleet: Fleet) -> None:
    """``podman stop`` sends SIGTERM, as Kubernetes does when it scales workers down: the
    task goes back to pending at once (its 30 s lease untouched), the next worker finishes
    it, and the key is charged once and refunded nothing."""
    first = fleet.worker()
    try:
        task_id = fleet.submit(**SLOW)
        with fleet.client() as client:
            wait_for_task(client, task_id, until=("processing",), timeout=60)
        took = first.stop(grace_s=60)
        assert first.exit_code() == 0, first.logs()
        assert took < 20, f"the worker took {took:.1f} s to drain"
        task = fleet.store.tasks.get(task_id)
        assert task.status is TaskStatus.PENDING and task.attempts == 0, task
        assert "released=1" in first.logs()
    finally:
        first.remove()
    second = fleet.worker()
    try:
        with fleet.client() as client:
            data = wait_for_task(client, task_id, timeout=120)
        assert data["status"] == "completed", (data, second.logs())
        info = decode(download(data["result"]["videos"][0]["url"][0]))  # type: ignore[index]
        assert (info["width"], info["height"], len(info["frames"])) == (1920, 1080, 8 * 24)
        assert fleet.ledger_reasons(task_id) == ["charge"]
    finally:
        second.remove()
    assert_money_at(fleet.database_url)
