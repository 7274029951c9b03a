"""Fixtures of the storage tests: one S3 server for the package, and each backend in turn."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from omniflash.blobs import LocalStorage, S3Storage, Storage
from tests.s3_server import S3Server, s3_server


@pytest.fixture(scope="package")
def s3() -> Iterator[S3Server]:
    """``moto_server`` with a bucket; this process holds its credentials while it runs."""
    with s3_server() as server, pytest.MonkeyPatch.context() as env:
        for name, value in server.env.items():
            if name.startswith("AWS_"):
                env.setenv(name, value)
        yield server


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def s3_storage(s3: S3Server) -> Iterator[S3Storage]:
    """An ``S3Storage`` on a prefix of its own, so tests share the bucket but no keys."""
    storage = S3Storage(s3.bucket, unique_prefix(), endpoint_url=s3.endpoint_url)
    try:
        yield storage
    finally:
        storage.close()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same tests on a local directory and on an S3 bucket."""
    if request.param == "local":
        return LocalStorage(tmp_path / "blobs")
    s3_storage: S3Storage = request.getfixturevalue("s3_storage")
    return s3_storage
