"""Blob storage for result files, and the signed, expiring URLs that serve them.

``Storage`` is the seam a fleet swaps (an S3-compatible bucket); ``LocalStorage`` keeps
files under the data dir.  A download URL carries its expiry and an HMAC of the blob key
and expiry made with the server secret, so anyone holding it may download the file
until then, and no one can forge or extend it::

    >>> signer = UrlSigner(b"secret")
    >>> path = signer.path("results/task_1.mp4", expires_at=2_000_000_000)
    >>> signer.verify("results/task_1.mp4", 2_000_000_000, path.rsplit("sig=", 1)[1], now=0)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

__all__ = ["LocalStorage", "Storage", "UrlSigner", "create_storage"]

if TYPE_CHECKING:
    from omniflash.settings import Settings

CHUNK = 1024 * 1024


class Storage(Protocol):
    """Where blobs live: result videos (``results/…``) and task inputs (``inputs/…``).

    Keys are relative, ``/``-separated paths.  Every method is safe to call from several
    threads and processes at once; a reader never sees a half-written blob.
    """

    def put(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key`` (moving it when possible)."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``."""

    def download(self, key: str, dest: Path) -> None:
        """Copy the blob to the local file ``dest``; ``FileNotFoundError`` when absent."""

    def size(self, key: str) -> int:
        """The blob's size in bytes; ``FileNotFoundError`` when absent."""

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``start`` to ``end`` (inclusive; ``None``: to the end), in chunks."""

    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob, when the backend has one (lets a server sendfile)."""

    def presigned_url(self, key: str, expires_at: int, *, method: str = "GET") -> str | None:
        """A URL that reads (``GET``) or writes (``PUT``) the blob without credentials until
        ``expires_at``; ``None`` when the backend has no such URLs (a local directory)."""

    def delete(self, key: str) -> None:
        """Remove the blob; absent blobs are fine."""

    def exists(self, key: str) -> bool: ...


class LocalStorage:
    """Blobs as files under ``root``; keys are relative paths like ``results/task_….mp4``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob key escapes the storage root: {key!r}")
        return path

    def put(self, key: str, source: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            os.replace(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
        with open(tmp, "wb") as handle:
            handle.write(data)
            os.fsync(handle.fileno())
        os.replace(tmp, dest)

    def download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._existing(key), dest)

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._existing(key)
        with open(path, "rb") as handle:
            handle.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, expires_at: int, *, method: str = "GET") -> str | None:
        return None

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self) -> Iterator[str]:
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                yield path.relative_to(self.root).as_posix()


class UrlSigner:
    """HMAC-SHA256 signatures over a blob key and an expiry time."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def signature(self, key: str, expires_at: int) -> str:
        message = f"{key}\n{expires_at}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def path(self, key: str, expires_at: int) -> str:
        """The URL path (and query) that downloads ``key`` until ``expires_at``."""
        sig = self.signature(key, expires_at)
        return f"/v1/files/{quote(key)}?expires={expires_at}&sig={sig}"

    def verify(self, key: str, expires_at: int, sig: str, *, now: float) -> bool:
        if now > expires_at:
            return False
        return hmac.compare_digest(self.signature(key, expires_at), sig)


def create_storage(settings: Settings) -> Storage:
    """The storage ``settings.storage_url`` names: the data dir's ``blobs`` by default."""
    if settings.storage_url:
        raise ValueError(f"unsupported storage URL {settings.storage_url!r}")
    return LocalStorage(settings.blobs_dir)
