"""``LocalStorage``: blobs as files in a directory (the data dir's ``blobs`` by default)."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from omniflash.blobs.protocol import CHUNK, StorageUnavailable, check_key

__all__ = ["LocalStorage"]


class LocalStorage:
    """Blobs as files under ``root``; keys are relative paths like ``results/task_….mp4``.

    A blob is written to a ``.part`` file beside its place, synced, then renamed over it,
    so a reader sees the old file or the new one, never half of one; a whole file on the
    same disk (``put``) is synced and renamed into place without a copy.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        # The key has no ``..`` part (``check_key``): only a link could lead out, which
        # resolving the path finds.
        path = (self._real_root / check_key(key)).resolve()
        if self._real_root not in path.parents:
            raise ValueError(f"blob key escapes the storage root: {key!r}")
        return path

    def _part(self, dest: Path) -> Path:
        return dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.part")

    def put(self, key: str, source: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # ``source`` is a whole file already: on the same disk it is synced and renamed into
        # place (one rename, no copy); from another disk it is copied through a part file.
        _sync(source)
        try:
            os.replace(source, dest)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        tmp = self._part(dest)
        shutil.copyfile(source, tmp)
        _sync(tmp)
        os.replace(tmp, dest)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._part(dest)
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

    def keys_older(self, prefix: str, before: float, since: float | None = None) -> Iterator[str]:
        base = self.root / check_key(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        for path in base.rglob("*"):
            try:
                written = path.stat().st_mtime
                if path.is_file() and written < before and (since is None or written >= since):
                    yield path.relative_to(self.root).as_posix()
            except FileNotFoundError:  # deleted meanwhile
                continue

    def probe(self) -> None:
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK) or not self.root.is_dir():
            raise StorageUnavailable(f"the blob directory {self.root} is not usable")

    def keys(self) -> Iterator[str]:
        """Every blob's key (not part of ``Storage``: for tests and maintenance)."""
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                yield path.relative_to(self.root).as_posix()

    def close(self) -> None:
        """Nothing to release."""


def _sync(path: Path) -> None:
    """The file's data on disk before a database row names it (a result, an input)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
