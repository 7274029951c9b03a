"""Where a worker gets its tasks: the store in-process, or the API's worker endpoints remotely.

The worker loop (``omniflash.worker.supervisor.Worker``) is written once against
``TaskSource``; ``StoreTaskSource`` talks to the database and the blob storage directly,
``omniflash.worker.http_source.HttpTaskSource`` to an API server over ``/worker/v1/``.  Every
write names the lease's ``epoch``: a worker that lost its lease (reaped, cancelled) gets
``False`` back and changes nothing.

A result is checked before the task is completed, and the store prices it from what the
check read in the file, never from numbers the worker sends (``worker.results``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from omniflash.blobs import Storage, StorageUnavailable
from omniflash.contract import GenerationSpec
from omniflash.input_blobs import blob_inputs
from omniflash.media.mp4check import (
    ResultRejected,
)
from omniflash.settings import Settings
from omniflash.store import OUTAGES, Store, preview_key
from omniflash.worker.results import ResultIntake, result_key
from omniflash.worker.wake import Waker

__all__ = [
    "PREVIEW_TYPES",
    "PROTOCOL_VERSION",
    "Lease",
    "SourceUnavailable",
    "StoreTaskSource",
    "TaskSource",
    "store_preview",
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

    def preview(self, lease: Lease, data: bytes, width: int, height: int) -> None:
        """Store one preview frame (a small WebP image) as the task's next ``preview``
        event; nothing happens once the task is not ours."""


PREVIEW_TYPES = {"WEBP": ("webp", "image/webp"), "JPEG": ("jpg", "image/jpeg")}
"""The image formats a preview frame may have: PIL's name -> extension, media type."""


def store_preview(
    store: Store,
    storage: Storage,
    lease: Lease,
    data: bytes,
    *,
    width: int,
    height: int,
    image_format: str = "WEBP",
    worker_id: int | None = None,
) -> bool:
    """Store a preview frame's bytes as the task's next preview blob, then its event;
    False (and the blob deleted again) when the lease is not held.  The blob comes first,
    so that no client is ever sent a preview whose image is not there yet."""
    ext, media_type = PREVIEW_TYPES[image_format]
    key = preview_key(lease.task_id, store.tasks.preview_count(lease.task_id), ext)
    storage.put_bytes(key, data, media_type)
    held = store.tasks.add_preview(
        lease.task_id, lease.epoch, blob=key, width=width, height=height, worker_id=worker_id
    )
    if not held:
        storage.delete(key)
    return held


class StoreTaskSource:
    """Tasks straight from the database, blobs straight from storage (in-process workers)."""

    def __init__(self, settings: Settings, store: Store, storage: Storage, waker: Waker) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.waker = waker
        self.results = ResultIntake(settings, store, storage, waker)

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
        paths = {}
        for n, (label, key) in enumerate(blob_inputs(lease.spec).items()):
            dest.mkdir(parents=True, exist_ok=True)
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
            with _unavailable():
                return self.results.record(lease, result)
        except ResultRejected as exc:
            log.warning("the result of %s was refused: %s", lease.task_id, exc)
            return False

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

    def preview(self, lease: Lease, data: bytes, width: int, height: int) -> None:
        with _unavailable():
            store_preview(self.store, self.storage, lease, data, width=width, height=height)


_OUTAGES: tuple[type[Exception], ...] = (*OUTAGES, StorageUnavailable)


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Database and storage outages become ``SourceUnavailable``: the loop backs off, retries."""
    try:
        yield
    except _OUTAGES as exc:
        raise SourceUnavailable(str(exc).splitlines()[0]) from exc
