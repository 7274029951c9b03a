"""The ``Storage`` protocol every blob backend speaks, its one error, and the key rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

__all__ = ["CHUNK", "Storage", "StorageUnavailable", "check_key"]

CHUNK = 1024 * 1024
"""Bytes per chunk that ``iter_bytes`` yields."""


class StorageUnavailable(OSError):
    """The backend could not be reached or refused the request (after its own retries).

    A missing blob is ``FileNotFoundError`` instead; this one means "try again later" or
    "the configuration is wrong" (bucket, endpoint, credentials), and says which.
    """


class Storage(Protocol):
    """Where blobs live: result videos (``results/…``) and task inputs (``inputs/…``).

    Keys are relative, ``/``-separated paths (``ValueError`` otherwise).  Every method is
    safe to call from several threads and processes at once; a reader never sees a
    half-written blob, only the old one or the new one.  A backend that cannot be
    reached raises ``StorageUnavailable``.
    """

    def put(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key``; ``source`` may be gone afterwards
        (a local backend moves it)."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``."""

    def download(self, key: str, dest: Path) -> None:
        """Copy the blob to the local file ``dest``; ``FileNotFoundError`` when absent."""

    def size(self, key: str) -> int:
        """The blob's size in bytes; ``FileNotFoundError`` when absent."""

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``start`` to ``end`` (inclusive; ``None``: to the end), in chunks.

        Nothing when ``start`` is past the end; ``FileNotFoundError`` (at the first
        ``next``) when absent::

            >>> b"".join(storage.iter_bytes("results/a.mp4", 0, 3))  # doctest: +SKIP
            b'\\x00\\x00\\x00\\x18'
        """

    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob, when the backend has one (lets a server sendfile)."""

    def presigned_url(self, key: str, expires_at: int, *, method: str = "GET") -> str | None:
        """A URL that reads (``GET``) or writes (``PUT``) the blob without credentials until
        ``expires_at``; ``None`` when the backend has no such URLs (a local directory)."""

    def delete(self, key: str) -> None:
        """Remove the blob; absent blobs are fine."""

    def exists(self, key: str) -> bool:
        """Whether the blob is there."""

    def keys_older(self, prefix: str, before: float, since: float | None = None) -> Iterator[str]:
        """Keys under ``prefix`` last written before ``before`` (and at or after ``since``),
        in Unix seconds, for the sweep; a local backend includes the ``.part`` files of
        interrupted writes."""

    def probe(self) -> None:
        """One cheap call, without retries and within seconds, that raises
        ``StorageUnavailable`` when the backend cannot be used just now (``/healthz``)."""

    def close(self) -> None:
        """Release connections; the object is not used afterwards."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_key(key: str) -> str:
    """``key`` when it is a relative ``/``-separated path with no ``.``/``..`` parts.

    >>> check_key("results/task_1.1.mp4")
    'results/task_1.1.mp4'
    >>> check_key("../etc/passwd")
    Traceback (most recent call last):
    ...
    ValueError: invalid blob key: '../etc/passwd'
    """
    parts = key.split("/")
    if (
        not key
        or "\\" in key
        or any(part in ("", ".", "..") for part in parts)
        or _CONTROL.search(key)
    ):
        raise ValueError(f"invalid blob key: {key!r}")
    return key
