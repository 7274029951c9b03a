"""A real S3-protocol server on loopback for tests: ``moto_server`` on a free port.

    with s3_server() as s3:
        storage = S3Storage(s3.bucket, "t/", endpoint_url=s3.endpoint_url)
        subprocess.run([...], env={**os.environ, **s3.env})

``s3.env`` holds what a process needs to use the bucket (credentials, region,
``OMNIFLASH_STORAGE_URL``, ``OMNIFLASH_S3_ENDPOINT_URL``); ``s3.storage_url(prefix)``
names a prefix of its own for a test that wants one.  Moto accepts any credentials and,
unlike S3, checks neither signatures nor the expiry of presigned URLs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from tests.conftest import free_port

__all__ = ["S3Server", "s3_server"]

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never a developer's own ~/.aws files, nor the slow instance-metadata lookup.
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str

    def storage_url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for an ``omniflash`` process (or this one) to use the bucket."""
        return {
            **CREDENTIALS,
            "OMNIFLASH_STORAGE_URL": self.storage_url(),
            "OMNIFLASH_S3_ENDPOINT_URL": self.endpoint_url,
        }


@contextlib.contextmanager
def s3_server(bucket: str = "omniflash-test", timeout_s: float = 20.0) -> Iterator[S3Server]:
    """Start ``moto_server``, create ``bucket``, yield; stop the server on exit."""
    for _try in range(3):  # another process may take the free port before the server does
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            if _wait_ready(proc, url, timeout_s):
                # Moto takes unsigned requests: no client library needed to make the bucket.
                httpx.put(f"{url}/{bucket}", timeout=10).raise_for_status()
                yield S3Server(endpoint_url=url, bucket=bucket)
                return
        finally:
            _stop(proc)
    raise RuntimeError("moto_server did not start (is moto[server] installed?)")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            httpx.get(url + "/", timeout=1)
            return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
