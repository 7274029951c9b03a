"""``S3Storage``: blobs in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, Ceph RGW…).

Needs the ``[s3]`` extra (boto3), imported only when an ``S3Storage`` is made.
Credentials and region come the usual AWS ways (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, a profile, an instance role), read
by boto3 itself.  ``put_bytes("inputs/a/0.png", …)`` below writes
``s3://videos/omniflash/inputs/a/0.png``::

    >>> storage = S3Storage("videos", "omniflash/", endpoint_url="http://minio:9000")
    >>> storage.put_bytes("inputs/a/0.png", png, "image/png")  # doctest: +SKIP

One boto3 client serves every thread (boto3 clients are thread-safe).  Requests are
retried in botocore's ``standard`` mode; files over ``multipart_threshold`` go up as
multipart uploads, which S3 makes visible only once complete, as it does a plain PUT:
no reader sees half an object.
"""

from __future__ import annotations

import contextlib
import mimetypes
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omniflash.blobs.protocol import CHUNK, StorageUnavailable, check_key

__all__ = ["INSTALL_HINT", "MAX_PRESIGN_S", "S3Storage"]

INSTALL_HINT = "pip install 'omniflash[s3]'"
MAX_PRESIGN_S = 7 * 24 * 3600
"""The longest a SigV4 presigned URL may live."""

_MISSING = {"NoSuchKey", "404", "NotFound"}
_METHODS = {"GET": "get_object", "PUT": "put_object"}
_CHECK_HINTS = {
    "404": "no such bucket",
    "NoSuchBucket": "no such bucket",
    "403": "access denied: the credentials need s3:ListBucket on the bucket, and "
    "s3:GetObject, s3:PutObject and s3:DeleteObject under the prefix",
}
_SESSION: dict[str, Any] = {}
_SESSION_LOCK = threading.Lock()


def _import_boto3() -> tuple[Any, Any, tuple[type[Exception], ...]]:
    """boto3, its ``Config`` class and the exceptions to translate; a one-line error if absent."""
    try:
        import boto3
        import boto3.exceptions
        import botocore.config
        import botocore.exceptions
    except ImportError as exc:
        raise RuntimeError(f"S3 storage needs boto3; install it with: {INSTALL_HINT}") from exc
    errors = (
        botocore.exceptions.ClientError,
        botocore.exceptions.BotoCoreError,
        boto3.exceptions.Boto3Error,
    )
    return boto3, botocore.config.Config, errors


def _code(exc: BaseException | None) -> str:
    """The S3 error code of a botocore ``ClientError`` (``NoSuchKey``, ``404``…), else ``""``."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Storage:
    """Blobs as objects ``prefix + key`` in ``bucket``.

    ``endpoint_url`` names a non-AWS S3 API (MinIO, R2, Ceph RGW); such endpoints are
    addressed path-style (``http://host/bucket/key``), which they all accept.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 5,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunksize: int = 16 * 1024 * 1024,
        max_connections: int = 32,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix:
            try:
                check_key(prefix.removesuffix("/"))
            except ValueError as exc:
                raise ValueError(f"invalid S3 key prefix {prefix!r}") from exc
        boto3, config_class, self._errors = _import_boto3()
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        config = config_class(
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            max_pool_connections=max_connections,
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # Checksums only where S3 requires them: several S3-compatible servers
            # reject the CRC headers newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._config, self._config_class = config, config_class
        self._probe_client: Any = None
        # One session per process, used under a lock (sessions are not thread-safe): it
        # keeps the parsed service model, so a second client costs milliseconds, not 0.3 s.
        with _SESSION_LOCK:
            if "session" not in _SESSION:
                _SESSION["session"] = boto3.session.Session()
            session = _SESSION["session"]
            self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
        )

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"<S3Storage s3://{self.bucket}/{self.prefix}{where}>"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _calling(self, action: str, key: str | None = None) -> Iterator[None]:
        """boto3's errors become ``FileNotFoundError`` (no such key) or ``StorageUnavailable``."""
        try:
            yield
        except self._errors as exc:
            if key is not None and _code(exc) in _MISSING:
                raise FileNotFoundError(key) from exc
            where = f"s3://{self.bucket}/{self.prefix}{key or ''}"
            if self.endpoint_url:
                where += f" at {self.endpoint_url}"
            raise StorageUnavailable(f"S3 {action} {where} failed: {exc}") from exc

    def check(self) -> None:
        """Fail now, with a clear message, when the bucket cannot be reached or used."""
        try:
            with self._calling("head bucket"):
                self._client.head_bucket(Bucket=self.bucket)
        except StorageUnavailable as exc:
            hint = _CHECK_HINTS.get(_code(exc.__cause__))
            if hint is None:
                raise
            raise StorageUnavailable(f"{exc} ({hint})") from exc.__cause__

    def probe(self) -> None:
        """``HEAD`` the bucket once, on a client of its own that neither retries nor waits
        long: a health probe answers within seconds, whatever the bucket does."""
        with _SESSION_LOCK:
            if self._probe_client is None:
                config = self._config.merge(
                    self._config_class(
                        retries={"mode": "standard", "max_attempts": 1},
                        connect_timeout=2,
                        read_timeout=2,
                    )
                )
                self._probe_client = _SESSION["session"].client(
                    "s3", endpoint_url=self.endpoint_url, config=config
                )
        with self._calling("head bucket"):
            self._probe_client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, source: Path) -> None:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._calling("upload", key):
            self._client.upload_file(
                str(source),
                self.bucket,
                self._key(key),
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        with self._calling("put", key):
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            )

    def download(self, key: str, dest: Path) -> None:
        # boto3 writes a temporary file beside ``dest`` and renames it when complete.
        with self._calling("download", key):
            self._client.download_file(
                self.bucket, self._key(key), str(dest), Config=self._transfer
            )

    def size(self, key: str) -> int:
        with self._calling("head", key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end < start:
            return
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            with self._calling("get", key):
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except StorageUnavailable as exc:
            if _code(exc.__cause__) == "InvalidRange":
                return  # ``start`` is past the end
            raise
        body = response["Body"]
        try:
            with self._calling("read", key):
                yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def local_path(self, key: str) -> Path | None:
        return None

    def presigned_url(self, key: str, expires_at: int, *, method: str = "GET") -> str | None:
        """A SigV4 URL valid until ``expires_at``, or for 7 days if that is later (S3's limit)."""
        if method not in _METHODS:
            raise ValueError(f"presigned URLs are for GET or PUT, not {method!r}")
        lifetime = min(MAX_PRESIGN_S, max(1, int(expires_at - time.time())))
        with self._calling("presign", key):
            url: str = self._client.generate_presigned_url(
                _METHODS[method],
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=lifetime,
            )
        return url

    def delete(self, key: str) -> None:
        with self._calling("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def keys_older(self, prefix: str, before: float, since: float | None = None) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        with self._calling("list"):
            for page in pages:
                for item in page.get("Contents", []):
                    written = item["LastModified"].timestamp()
                    if written < before and (since is None or written >= since):
                        yield str(item["Key"])[len(self.prefix) :]

    def keys(self) -> Iterator[str]:
        """Every blob's key under the prefix (not in ``Storage``: for tests and maintenance)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        with self._calling("list"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"])[len(self.prefix) :]

    def close(self) -> None:
        self._client.close()
        if self._probe_client is not None:
            self._probe_client.close()
