"""``/healthz`` reports the bucket: a real server on a real ``moto_server`` that goes away."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from omniflash.blobs import LocalStorage, StorageUnavailable
from omniflash.blobs.health import StorageHealth
from tests.conftest import free_port, running_server
from tests.s3_server import CREDENTIALS, _stop, _wait_ready

pytestmark = pytest.mark.timeout(120)


def test_healthz_is_503_while_the_bucket_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        assert _wait_ready(moto, endpoint, 20)
        httpx.put(f"{endpoint}/health-bucket", timeout=10).raise_for_status()
        env = {
            **CREDENTIALS,
            "OMNIFLASH_STORAGE_URL": "s3://health-bucket/p/",
            "OMNIFLASH_S3_ENDPOINT_URL": endpoint,
        }
        with running_server(tmp_path, "--workers", "0", **env) as server:
            assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
            _stop(moto)
            deadline = time.monotonic() + 30
            while True:
                started = time.monotonic()
                response = httpx.get(server.url + "/healthz", timeout=30)
                took = time.monotonic() - started
                assert took < 8, "a probe answers within seconds, the bucket's retries aside"
                if response.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "degraded"
            assert body["problems"] == ["storage: StorageUnavailable"]
    finally:
        _stop(moto)


def test_the_probe_is_cached(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs")
    calls: list[float] = []
    real = storage.probe

    def counted() -> None:
        calls.append(time.monotonic())
        real()

    storage.probe = counted  # type: ignore[method-assign]
    health = StorageHealth(storage, ttl_s=60)
    assert [health.problem() for _ in range(50)] == [None] * 50
    assert len(calls) == 1
    (tmp_path / "blobs").rmdir()
    health = StorageHealth(storage, ttl_s=0)
    assert health.problem() == StorageUnavailable.__name__
