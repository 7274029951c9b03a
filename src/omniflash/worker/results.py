"""A finished attempt's result file: checked, priced by the store, and the task ended.

The one path from a stored result to a completed task, for in-process workers
(``StoreTaskSource.complete``) and remote ones (the API's ``/worker/v1/.../complete``)
alike.  The file is checked (``omniflash.media.mp4check``) before the task is completed,
and the store's ``complete`` prices it from what the check read in the file, never from
numbers the worker sends: a file that is not the asked video fails the attempt (retried
while attempts remain, then failed and refunded) and is deleted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from omniflash.blobs import Storage
from omniflash.contract import GenerationSpec
from omniflash.media.mp4check import (
    Mp4Summary,
    ResultRejected,
    check_result,
    read_mp4,
    result_seconds,
)
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.worker.wake import Waker

if TYPE_CHECKING:
    from omniflash.worker.source import Lease

__all__ = ["HEAD_BYTES", "ResultIntake", "result_key"]

log = logging.getLogger(__name__)

HEAD_BYTES = 64 * 1024
"""The first read of a result being checked."""


def result_key(lease: Lease) -> str:
    """One key per attempt: a stale attempt can never overwrite or delete the live one's file."""
    return f"results/{lease.task_id}.{lease.epoch}.mp4"


class ResultIntake:
    """Results stored under ``result_key``, judged by this server and recorded in the store."""

    def __init__(self, settings: Settings, store: Store, storage: Storage, waker: Waker) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.waker = waker

    def record(
        self, lease: Lease, reported: dict[str, Any], *, worker_id: int | None = None
    ) -> bool:
        """End the task with the file already stored under ``result_key(lease)``.

        The file is checked first; ``ResultRejected`` when it is not the asked video (the
        attempt has then failed, to be retried, and the file is deleted).  The store's
        ``complete`` prices the seconds of video the file holds, at most what was held at
        submit.  The API calls this for a remote worker's upload, with its token's
        ``worker_id``.  A
        repeated call (an answer lost on its way back) finds the task completed with this
        very file: True again.  ``reported`` (the worker's own numbers) is only kept as
        information; the numbers that matter are the server's.
        """
        key = result_key(lease)
        # ``lease.spec`` is this server's own reading of the task (its claim, or the API's
        # read of the lease a remote worker names), and a spec never changes: the task is
        # read again only when the lease turns out not to be held.
        spec = lease.spec
        try:
            checked = self.check(key, spec)
        except ResultRejected as exc:
            self.storage.delete(key)
            if not self.store.tasks.fail(
                lease.task_id,
                lease.epoch,
                f"the worker's result was refused: {exc}",
                retry=True,
                max_attempts=self.settings.max_attempts,
                worker_id=worker_id,
            ):
                return self._settled(lease, key)
            self.waker.notify()  # it may be pending again
            raise
        seconds = result_seconds(checked, spec)
        info = {
            **reported,
            "frames": checked.frames,
            "width": checked.width,
            "height": checked.height,
            "fps": float(checked.fps),
            "duration": seconds,
        }
        if self.store.tasks.complete(
            lease.task_id,
            lease.epoch,
            result_key=key,
            ttl_s=self.settings.result_ttl_s,
            seconds=seconds,
            pricing=self.settings.pricing,
            info=info,
            worker_id=worker_id,
            resolution=spec.resolution,
        ):
            return True
        return self._settled(lease, key)

    def _settled(self, lease: Lease, key: str) -> bool:
        """The lease was not held: True when the task was completed with this very file (a
        repeated call), else the file is nobody's and is deleted."""
        if self.store.tasks.get(lease.task_id).result_key == key:
            return True
        # Another attempt owns the task now (or it was cancelled): this file is nobody's.
        self.storage.delete(key)
        return False

    def check(self, key: str, spec: GenerationSpec) -> Mp4Summary:
        """The stored result's summary; ``ResultRejected`` unless it is ``spec``'s video.

        Reads the file's head through the storage (ranged reads on a bucket).
        """
        try:
            size = self.storage.size(key)
        except FileNotFoundError as exc:
            raise ResultRejected("no result file was stored") from exc

        def fetch(offset: int, length: int) -> bytes:
            if offset >= size or length <= 0:
                return b""
            return b"".join(self.storage.iter_bytes(key, offset, min(size, offset + length) - 1))

        # One ranged read holds the whole head of omniflash's own files (a bucket round
        # trip each otherwise); a larger moov is read where it lies.
        head = fetch(0, HEAD_BYTES)

        def read(offset: int, length: int) -> bytes:
            if offset + length <= len(head) or len(head) == size:
                return head[offset : offset + length]
            return fetch(offset, length)

        try:
            info = read_mp4(read, size)
        except FileNotFoundError as exc:  # deleted while being read
            raise ResultRejected("the result file disappeared while it was checked") from exc
        check_result(info, spec)
        return info
