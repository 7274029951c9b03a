"""Where a worker gets its tasks: the store in-process, or the API's worker endpoints remotely.

The worker loop (``omniflash.worker.supervisor.Worker``) is written once against
``TaskSource``; ``StoreTaskSource`` talks to the database and the blob storage directly,
``omniflash.worker.remote.HttpTaskSource`` to an API server over ``/worker/v1/``.  Every
write names the lease's ``epoch``: a worker that lost its lease (reaped, cancelled) gets
``False`` back and changes nothing.

A result is checked (``omniflash.media.mp4check``) before the task is completed, and
priced from what the check read in the file, never from numbers the worker sends: a
file that is not the asked video fails the attempt (retried while attempts remain,
then failed and refunded) and is deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from omniflash.blobs import Storage, StorageUnavailable
from omniflash.contract import GenerationSpec
from omniflash.input_blobs import blob_inputs
from omniflash.media.mp4check import (
    Mp4Summary,
    ResultRejected,
    check_result,
    read_mp4,
    result_seconds,
)
from omniflash.settings import Settings
from omniflash.store import Store, TaskRow, TaskStatus
from omniflash.worker.wake import Waker

__all__ = [
    "PROTOCOL_VERSION",
    "Lease",
    "SourceUnavailable",
    "StoreTaskSource",
    "TaskSource",
    "result_key",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2
"""The ``/worker/v1/`` protocol: a server and a remote worker must speak the same one.

2: leases bound to the worker token; results checked and priced by the server (the
worker's numbers are not used); the spec's fields as of this version.
"""


class SourceUnavailable(Exception):
    """The task source cannot be reached just now (database or server down); retry later."""


@dataclasses.dataclass(frozen=True)
class Lease:
    """A claimed task, as a worker needs it."""

    task_id: str
    spec: GenerationSpec
    seed: int
    attempt: int
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "spec": self.spec.to_dict(),
            "seed": self.seed,
            "attempt": self.attempt,
            "epoch": self.epoch,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        return cls(
            task_id=str(data["task_id"]),
            spec=GenerationSpec.from_dict(data["spec"]),
            seed=int(data["seed"]),
            attempt=int(data["attempt"]),
            epoch=int(data["epoch"]),
        )


HEAD_BYTES = 64 * 1024
"""The first read of a result being checked."""


def result_key(lease: Lease) -> str:
    """One key per attempt: a stale attempt can never overwrite or delete the live one's file."""
    return f"results/{lease.task_id}.{lease.epoch}.mp4"


class TaskSource(Protocol):
    """What a worker loop needs; every method may raise ``SourceUnavailable``."""

    def claim(self, owner: str, wait_s: float) -> Lease | None:
        """The oldest pending task under a new lease, waiting up to ``wait_s`` for one."""

    def heartbeat(self, lease: Lease, progress: int) -> bool:
        """Renew the lease, record progress (0–99); ``False`` once the task is not ours."""

    def fetch_inputs(self, lease: Lease, dest: Path) -> dict[str, Path]:
        """Download the task's blob inputs into ``dest``: ``{label: local file}``."""

    def complete(self, lease: Lease, output: Path, result: dict[str, Any]) -> bool:
        """Store ``output`` as the result and end the task; ``False`` when not ours."""

    def fail(self, lease: Lease, message: str, *, retry: bool) -> bool:
        """End this attempt with an error (queued again when ``retry`` and attempts remain)."""

    def release(self, lease: Lease) -> bool:
        """Hand the task back to the queue untried (a graceful stop); no attempt is used."""


class StoreTaskSource:
    """Tasks straight from the database, blobs straight from storage (in-process workers)."""

    def __init__(self, settings: Settings, store: Store, storage: Storage, waker: Waker) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.waker = waker

    def claim(self, owner: str, wait_s: float) -> Lease | None:
        deadline = time.monotonic() + wait_s
        while True:
            seen = self.waker.generation
            with _unavailable():
                claim = self.store.tasks.claim(owner, self.settings.lease_s)
            if claim is not None:
                task = claim.task
                return Lease(task.id, task.spec, task.seed, task.attempts, claim.epoch)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.waker.wait(seen, min(left, self.settings.poll_interval_s))

    def heartbeat(self, lease: Lease, progress: int) -> bool:
        with _unavailable():
            return self.store.tasks.heartbeat(
                lease.task_id, lease.epoch, progress=progress, lease_s=self.settings.lease_s
            )

    def fetch_inputs(self, lease: Lease, dest: Path) -> dict[str, Path]:
        dest.mkdir(parents=True, exist_ok=True)
        paths = {}
        for n, (label, key) in enumerate(blob_inputs(lease.spec).items()):
            path = dest / f"input-{n}"
            with _unavailable():
                self.storage.download(key, path)
            paths[label] = path
        return paths

    def complete(self, lease: Lease, output: Path, result: dict[str, Any]) -> bool:
        key = result_key(lease)
        with _unavailable():
            if output.exists() or not self.storage.exists(key):
                # A retry after the database failed has stored the file already (put moves it).
                self.storage.put(key, output)
        try:
            return self.record_result(lease, result)
        except ResultRejected as exc:
            log.warning("the result of %s was refused: %s", lease.task_id, exc)
            return False

    def record_result(
        self, lease: Lease, reported: dict[str, Any], *, worker_id: int | None = None
    ) -> bool:
        """End the task with the file already stored under ``result_key(lease)``.

        The file is checked first; ``ResultRejected`` when it is not the asked video (the
        attempt has then failed, to be retried, and the file is deleted).  The price is
        the seconds of video the file holds, at most what was held at submit.  The API
        calls this for a remote worker's upload, with its token's ``worker_id``.  A
        repeated call (an answer lost on its way back) finds the task completed with this
        very file: True again.  ``reported`` (the worker's own numbers) is only kept as
        information; the numbers that matter are the server's.
        """
        key = result_key(lease)
        with _unavailable():
            task = self.store.tasks.get(lease.task_id)
            if task.result_key == key:
                return True
            if not _holds(task, lease.epoch, worker_id):
                self.storage.delete(key)  # nobody's result
                return False
            try:
                checked = self.check(key, task.spec)
            except ResultRejected as exc:
                self.storage.delete(key)
                self.store.tasks.fail(
                    lease.task_id,
                    lease.epoch,
                    f"the worker's result was refused: {exc}",
                    retry=True,
                    max_attempts=self.settings.max_attempts,
                    worker_id=worker_id,
                )
                self.waker.notify()  # it may be pending again
                raise
            seconds = result_seconds(checked, task.spec)
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
            ):
                return True
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

    def fail(
        self, lease: Lease, message: str, *, retry: bool, worker_id: int | None = None
    ) -> bool:
        with _unavailable():
            return self.store.tasks.fail(
                lease.task_id,
                lease.epoch,
                message,
                retry=retry,
                max_attempts=self.settings.max_attempts,
                worker_id=worker_id,
            )

    def release(self, lease: Lease, *, worker_id: int | None = None) -> bool:
        with _unavailable():
            return self.store.tasks.release(lease.task_id, lease.epoch, worker_id=worker_id)


def _holds(task: TaskRow, epoch: int, worker_id: int | None) -> bool:
    """Whether ``task`` is processing under ``epoch`` (and, remotely, ``worker_id``'s lease)."""
    return (
        task.status is TaskStatus.PROCESSING
        and task.lease_epoch == epoch
        and (worker_id is None or task.lease_worker == worker_id)
    )


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Database and storage outages become ``SourceUnavailable``: the loop backs off, retries."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, StorageUnavailable) as exc:
        raise SourceUnavailable(str(exc).splitlines()[0]) from exc
