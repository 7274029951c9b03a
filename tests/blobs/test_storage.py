"""The ``Storage`` protocol, on a local directory and on an S3 bucket alike."""

from __future__ import annotations

import calendar
import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import omniflash.blobs
from omniflash.blobs import LocalStorage, S3Storage, Storage

DATA = bytes(range(256)) * 40  # 10 240 bytes, every offset tells its position


def test_package_exports_what_it_lists() -> None:
    assert sorted(omniflash.blobs.__all__) == omniflash.blobs.__all__
    for name in omniflash.blobs.__all__:
        assert getattr(omniflash.blobs, name) is not None


def test_put_bytes_read_back_delete(storage: Storage, tmp_path: Path) -> None:
    key = "inputs/abc/0.png"
    assert not storage.exists(key)
    storage.put_bytes(key, DATA, "image/png")
    assert storage.exists(key) and storage.size(key) == len(DATA)
    assert b"".join(storage.iter_bytes(key)) == DATA
    storage.download(key, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == DATA
    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # absent is fine


def test_put_file_and_overwrite(storage: Storage, tmp_path: Path) -> None:
    for content in (b"first version", b"second"):
        source = tmp_path / "out.mp4"
        source.write_bytes(content)
        storage.put("results/task_1.1.mp4", source)
        assert b"".join(storage.iter_bytes("results/task_1.1.mp4")) == content
    assert storage.size("results/task_1.1.mp4") == len(b"second")


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, DATA),
        (0, 0, DATA[:1]),
        (100, 199, DATA[100:200]),
        (10_000, None, DATA[10_000:]),
        (10_000, 99_999, DATA[10_000:]),
        (len(DATA) - 1, len(DATA) - 1, DATA[-1:]),
        (len(DATA), None, b""),
        (50, 49, b""),
    ],
)
def test_byte_ranges(storage: Storage, start: int, end: int | None, expected: bytes) -> None:
    storage.put_bytes("results/r.mp4", DATA, "video/mp4")
    assert b"".join(storage.iter_bytes("results/r.mp4", start, end)) == expected


def test_large_blob_comes_back_in_chunks(storage: Storage) -> None:
    big = os.urandom(2 * 1024 * 1024 + 7)
    storage.put_bytes("results/big.mp4", big, "video/mp4")
    chunks = list(storage.iter_bytes("results/big.mp4"))
    assert len(chunks) >= 2 and b"".join(chunks) == big


def test_missing_keys(storage: Storage, tmp_path: Path) -> None:
    key = "results/nothing.mp4"
    assert not storage.exists(key)
    with pytest.raises(FileNotFoundError):
        storage.size(key)
    with pytest.raises(FileNotFoundError):
        storage.download(key, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError):
        list(storage.iter_bytes(key))


@pytest.mark.parametrize("key", ["", "../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "a/./b"])
def test_keys_must_be_relative_paths(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put_bytes(key, b"x", "text/plain")
    with pytest.raises(ValueError):
        storage.exists(key)


def test_concurrent_puts_and_reads(storage: Storage) -> None:
    """Many threads writing and reading: every read is one whole version, never a mix."""
    versions = [bytes([n]) * 300_000 for n in range(6)]
    storage.put_bytes("results/shared.mp4", versions[0], "video/mp4")
    seen: set[bytes] = set()
    lock = threading.Lock()

    def write(n: int) -> None:
        storage.put_bytes("results/shared.mp4", versions[n % len(versions)], "video/mp4")
        storage.put_bytes(f"results/own-{n}.mp4", versions[n % len(versions)], "video/mp4")

    def read(_n: int) -> None:
        data = b"".join(storage.iter_bytes("results/shared.mp4"))
        assert data in versions, f"a torn read of {len(data)} bytes"
        with lock:
            seen.add(data[:1])

    jobs = list(itertools.chain.from_iterable((write, read) for _ in range(12)))
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(job, n) for n, job in enumerate(jobs)]:
            future.result(timeout=30)
    assert seen
    for n in range(0, len(jobs), 2):
        assert b"".join(storage.iter_bytes(f"results/own-{n}.mp4")) == versions[n % 6]


def test_local_storage_has_files_and_no_presigned_urls(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs")
    storage.put_bytes("results/a.mp4", b"abc", "video/mp4")
    path = storage.local_path("results/a.mp4")
    assert path is not None and path.read_bytes() == b"abc"
    assert storage.presigned_url("results/a.mp4", int(time.time()) + 60) is None
    assert list(storage.keys()) == ["results/a.mp4"]


# -- S3 only ------------------------------------------------------------------------------


def _bucket_keys(storage: S3Storage) -> set[str]:
    listing = storage._client.list_objects_v2(Bucket=storage.bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def test_s3_keys_live_under_the_prefix(s3_storage: S3Storage) -> None:
    other = S3Storage(s3_storage.bucket, "other-prefix", endpoint_url=s3_storage.endpoint_url)
    try:
        assert other.prefix == "other-prefix/"
        s3_storage.put_bytes("results/a.mp4", b"mine", "video/mp4")
        other.put_bytes("results/a.mp4", b"theirs", "video/mp4")
        assert s3_storage.prefix + "results/a.mp4" in _bucket_keys(s3_storage)
        assert "other-prefix/results/a.mp4" in _bucket_keys(s3_storage)
        assert b"".join(s3_storage.iter_bytes("results/a.mp4")) == b"mine"
        assert list(s3_storage.keys()) == ["results/a.mp4"]
        other.delete("results/a.mp4")
        assert s3_storage.exists("results/a.mp4")
    finally:
        other.close()
    assert s3_storage.local_path("results/a.mp4") is None


def test_s3_without_prefix(s3_storage: S3Storage) -> None:
    bare = S3Storage(s3_storage.bucket, endpoint_url=s3_storage.endpoint_url)
    try:
        bare.put_bytes("bare-test/x.png", b"x", "image/png")
        assert "bare-test/x.png" in _bucket_keys(s3_storage)
        bare.delete("bare-test/x.png")
        assert "bare-test/x.png" not in _bucket_keys(s3_storage)
    finally:
        bare.close()


def test_s3_objects_carry_their_content_type(s3_storage: S3Storage, tmp_path: Path) -> None:
    source = tmp_path / "out.mp4"
    source.write_bytes(b"mp4")
    s3_storage.put("results/t.1.mp4", source)
    s3_storage.put_bytes("inputs/i/0.png", b"png", "image/png")
    head = s3_storage._client.head_object
    assert head(Bucket=s3_storage.bucket, Key=s3_storage.prefix + "results/t.1.mp4")[
        "ContentType"
    ] == ("video/mp4")
    assert head(Bucket=s3_storage.bucket, Key=s3_storage.prefix + "inputs/i/0.png")[
        "ContentType"
    ] == ("image/png")


def test_s3_large_files_go_up_in_parts(s3_storage: S3Storage, tmp_path: Path) -> None:
    small_parts = S3Storage(
        s3_storage.bucket,
        s3_storage.prefix,
        endpoint_url=s3_storage.endpoint_url,
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunksize=5 * 1024 * 1024,
    )
    try:
        content = os.urandom(11 * 1024 * 1024)
        source = tmp_path / "big.mp4"
        source.write_bytes(content)
        small_parts.put("results/big.mp4", source)
        etag = s3_storage._client.head_object(
            Bucket=s3_storage.bucket, Key=s3_storage.prefix + "results/big.mp4"
        )["ETag"]
        assert etag.strip('"').endswith("-3"), f"not a 3-part upload: {etag}"
        small_parts.download("results/big.mp4", tmp_path / "back.mp4")
        assert (tmp_path / "back.mp4").read_bytes() == content
    finally:
        small_parts.close()


def test_s3_presigned_get_and_put_work_without_credentials(s3_storage: S3Storage) -> None:
    expires_at = int(time.time()) + 600
    s3_storage.put_bytes("results/p.mp4", b"presigned bytes", "video/mp4")
    get_url = s3_storage.presigned_url("results/p.mp4", expires_at)
    assert get_url is not None and "Signature=" in get_url
    answer = httpx.get(get_url, timeout=10)
    assert answer.status_code == 200 and answer.content == b"presigned bytes"
    ranged = httpx.get(get_url, headers={"Range": "bytes=0-8"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == b"presigned"

    put_url = s3_storage.presigned_url("inputs/up/0.png", expires_at, method="PUT")
    assert put_url is not None
    assert httpx.put(put_url, content=b"uploaded", timeout=10).status_code == 200
    assert b"".join(s3_storage.iter_bytes("inputs/up/0.png")) == b"uploaded"
    with pytest.raises(ValueError):
        s3_storage.presigned_url("results/p.mp4", expires_at, method="DELETE")


def _expiry(url: str) -> int:
    query = parse_qs(urlsplit(url).query)
    signed_at = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    return signed_at + int(query["X-Amz-Expires"][0])


def test_s3_presigned_urls_expire_when_asked(s3_storage: S3Storage) -> None:
    """S3 refuses a presigned URL after ``X-Amz-Date + X-Amz-Expires`` (moto does not check)."""
    now = int(time.time())
    for expires_at in (now + 60, now + 72 * 3600):
        url = s3_storage.presigned_url("results/p.mp4", expires_at)
        assert url is not None and abs(_expiry(url) - expires_at) <= 2
    week = s3_storage.presigned_url("results/p.mp4", now + 30 * 24 * 3600)
    assert week is not None and abs(_expiry(week) - (now + 7 * 24 * 3600)) <= 2
    past = s3_storage.presigned_url("results/p.mp4", now - 10)
    assert past is not None and _expiry(past) <= now + 2
