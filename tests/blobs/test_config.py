"""Choosing a backend from ``Settings``, and what goes wrong clearly."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from omniflash.blobs import (
    LocalStorage,
    S3Storage,
    StorageUnavailable,
    create_storage,
    parse_storage_url,
)
from omniflash.settings import Settings
from tests.conftest import free_port
from tests.s3_server import S3Server


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://videos", "videos", ""),
        ("s3://videos/", "videos", ""),
        ("s3://videos/omniflash", "videos", "omniflash/"),
        ("s3://videos/a/b/", "videos", "a/b/"),
    ],
)
def test_parse_storage_url(url: str, bucket: str, prefix: str) -> None:
    assert parse_storage_url(url) == (bucket, prefix)


@pytest.mark.parametrize("url", ["file:///tmp/x", "s3:///prefix", "gs://b/p", "s3://b/p?x=1"])
def test_unsupported_storage_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="s3://BUCKET/PREFIX"):
        create_storage(Settings(data_dir=tmp_path, storage_url=url))


def test_prefixes_are_paths() -> None:
    with pytest.raises(ValueError, match=re.escape("invalid S3 key prefix 'a/../b/'")):
        S3Storage("bucket", "a/../b")


def test_local_by_default(tmp_path: Path) -> None:
    storage = create_storage(Settings(data_dir=tmp_path))
    assert isinstance(storage, LocalStorage) and storage.root == tmp_path / "blobs"


def test_presigned_results_need_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OMNIFLASH_PRESIGN_RESULTS=1 needs an S3 bucket"):
        create_storage(Settings(data_dir=tmp_path, presign_results=True))


def test_presigned_results_live_at_most_a_week(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage_url="s3://b/p",
        presign_results=True,
        result_ttl_s=8 * 24 * 3600,
    )
    with pytest.raises(ValueError, match="7 days"):
        create_storage(settings)


def test_an_endpoint_without_a_bucket_is_a_mistake(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OMNIFLASH_STORAGE_URL"):
        create_storage(Settings(data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:9000"))


def test_s3_from_settings(tmp_path: Path, s3: S3Server) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage_url=s3.storage_url("deploy/blue"),
        s3_endpoint_url=s3.endpoint_url,
        presign_results=True,
    )
    storage = create_storage(settings)
    try:
        assert isinstance(storage, S3Storage)
        assert (storage.bucket, storage.prefix) == (s3.bucket, "deploy/blue/")
        assert not (tmp_path / "blobs").exists()
    finally:
        storage.close()


def test_a_missing_bucket_stops_the_server_before_it_starts(tmp_path: Path, s3: S3Server) -> None:
    settings = Settings(
        data_dir=tmp_path, storage_url="s3://no-such-bucket/x", s3_endpoint_url=s3.endpoint_url
    )
    with pytest.raises(StorageUnavailable, match=r"s3://no-such-bucket/x/ .*no such bucket"):
        create_storage(settings)


def test_an_unreachable_endpoint_is_unavailable_not_missing(s3: S3Server) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    storage = S3Storage(s3.bucket, "p", endpoint_url=endpoint, max_attempts=2)
    try:
        started = time.monotonic()
        for call in (
            lambda: storage.size("results/a.mp4"),
            lambda: storage.put_bytes("results/a.mp4", b"x", "video/mp4"),
            lambda: storage.delete("results/a.mp4"),
            lambda: list(storage.iter_bytes("results/a.mp4")),
        ):
            with pytest.raises(StorageUnavailable, match=f"s3://{s3.bucket}/p/results/a.mp4 at"):
                call()
        assert time.monotonic() - started < 20
    finally:
        storage.close()


def test_without_boto3_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(RuntimeError, match=r"pip install 'omniflash\[s3\]'"):
        S3Storage("bucket")
