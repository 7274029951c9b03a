"""One worker: claims tasks, feeds them to its engine process, heartbeats, finishes.

The engine runs in a long-lived child process so that a model stays loaded between
tasks, and so that a cancel or the per-task timeout can always stop a generation: the
child is asked first (between steps) and killed if it does not stop in time; a fresh
one is then started.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import shutil
import threading
import time
import uuid
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

from omniflash.settings import Settings
from omniflash.storage import Storage
from omniflash.store import Claim, Store
from omniflash.worker.child import child_main

__all__ = ["EngineProcess", "Worker"]

log = logging.getLogger(__name__)
CANCEL_GRACE_S = 10.0


class EngineProcess:
    """A child process running the engine; restarted whenever it had to be killed."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._ctx = mp.get_context("spawn")
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        self.cancel: Event = self._ctx.Event()
        self.starts = 0
        self.cancel_grace_s = CANCEL_GRACE_S
        """How long the engine may take to honour a cancel before it is killed."""

    def ensure(self, stop: threading.Event) -> bool:
        """Start the child if needed and wait until its engine is loaded."""
        if self.proc is not None and self.proc.is_alive() and self.conn is not None:
            return True
        self.kill()
        parent, child = self._ctx.Pipe()
        self.cancel = self._ctx.Event()
        self.proc = self._ctx.Process(
            target=child_main,
            args=(child, self.cancel, self.settings, logging.getLogger().level or logging.INFO),
            name=f"{self.name}-engine",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.conn = parent
        self.starts += 1
        while not stop.is_set():
            if parent.poll(0.2):
                try:
                    message = parent.recv()
                except (EOFError, OSError):
                    message = ("error", "load", "engine process exited while loading")
                if message[0] == "ready":
                    info = message[1] if isinstance(message[1], dict) else {}
                    self.cancel_grace_s = float(info.get("cancel_grace_s", CANCEL_GRACE_S))
                    return True
                log.error("%s: %s", self.name, message[2])
                self.kill()
                stop.wait(5.0)
                return False
            if not self.proc.is_alive():
                log.error("%s: engine process exited while loading", self.name)
                self.kill()
                stop.wait(5.0)
                return False
        return False

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=10)
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn = None, None


class Worker(threading.Thread):
    """Claims one task at a time from the store and runs it in its engine process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        storage: Storage,
        wakeup: threading.Condition,
        stop: threading.Event,
        index: int = 0,
    ) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.settings = settings
        self.store = store
        self.storage = storage
        self.wakeup = wakeup
        self.stop = stop
        self.owner = f"{self.name}-{uuid.uuid4().hex[:8]}"
        self.engine = EngineProcess(dataclasses.replace(settings, worker_index=index), self.name)
        self.completed = self.failed = self.cancelled = 0

    def __repr__(self) -> str:
        return (
            f"<Worker {self.owner} completed={self.completed} failed={self.failed} "
            f"cancelled={self.cancelled} engine_starts={self.engine.starts}>"
        )

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.engine.ensure(self.stop):
                    continue
                claim = self.store.tasks.claim(self.owner, self.settings.lease_s)
                if claim is None:
                    with self.wakeup:
                        self.wakeup.wait(self.settings.poll_interval_s)
                    continue
                try:
                    self._run(claim)
                except Exception:
                    log.exception("%s: task %s crashed the supervisor", self.name, claim.task.id)
                    self._fail(claim, "internal error while running the task", retry=True)
                    self.engine.kill()
        finally:
            self.engine.kill()

    def _fail(self, claim: Claim, message: str, *, retry: bool) -> None:
        self.failed += 1
        self.store.tasks.fail(claim, message, retry=retry, max_attempts=self.settings.max_attempts)

    def _run(self, claim: Claim) -> None:
        task = claim.task
        s = self.settings
        log.info(
            "%s: running %s (%s, attempt %d)",
            self.name,
            task.id,
            task.spec.mode.value,
            task.attempts,
        )
        scratch = s.scratch_dir / f"{task.id}.{claim.epoch}"
        output = scratch / "out.mp4"
        conn = self.engine.conn
        assert conn is not None
        self.engine.cancel.clear()
        conn.send(
            (
                "job",
                {
                    "task_id": task.id,
                    "spec": task.spec.to_json(),
                    "seed": task.seed,
                    "workdir": str(scratch),
                    "output_path": str(output),
                },
            )
        )
        started = time.monotonic()
        deadline = started + s.task_timeout_s
        beat_every = max(0.2, min(2.0, s.lease_s / 3))
        last_beat = -1e9
        progress = beat_progress = 0
        cancel_sent_at: float | None = None
        outcome: tuple[Any, ...] | None = None
        try:
            while outcome is None:
                now = time.monotonic()
                due = now - last_beat >= beat_every or (
                    progress != beat_progress and now - last_beat >= 0.5
                )
                if cancel_sent_at is None and due:
                    last_beat, beat_progress = now, progress
                    if not self.store.tasks.heartbeat(claim, progress=progress, lease_s=s.lease_s):
                        # Cancelled by its owner, or reaped and handed to another worker.
                        log.info("%s: %s is no longer ours; stopping it", self.name, task.id)
                        self.engine.cancel.set()
                        cancel_sent_at = now
                if cancel_sent_at is not None and now - cancel_sent_at > self.engine.cancel_grace_s:
                    log.warning(
                        "%s: engine ignored the cancel of %s; killing it", self.name, task.id
                    )
                    self.engine.kill()
                    self.cancelled += 1
                    return
                if now > deadline:
                    self.engine.kill()
                    minutes = s.task_timeout_s / 60
                    self._fail(
                        claim,
                        f"generation timed out after {minutes:g} min and was stopped",
                        retry=False,
                    )
                    return
                if self.stop.is_set():
                    # Shutting down: leave the task to be reaped and run again.
                    self.engine.kill()
                    return
                try:
                    ready = conn.poll(0.1)
                    message = conn.recv() if ready else None
                except (EOFError, OSError):
                    self.engine.kill()
                    if cancel_sent_at is None:
                        self._fail(claim, "the engine process crashed", retry=True)
                    return
                if message is None:
                    continue
                if message[0] == "progress":
                    # The last percent is the upload and bookkeeping after the engine is done.
                    progress = max(progress, min(99, int(float(message[1]) * 99)))
                else:
                    outcome = message
            if cancel_sent_at is not None:
                self.cancelled += 1
                return
            self._finish(claim, outcome, output)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _finish(self, claim: Claim, outcome: tuple[Any, ...], output: Any) -> None:
        task = claim.task
        if outcome[0] == "error":
            kind, message = outcome[1], outcome[2]
            if kind == "cancelled":
                self.cancelled += 1
                return
            log.info("%s: %s failed: %s", self.name, task.id, message)
            self._fail(claim, message, retry=False)
            return
        result = outcome[1]
        # One key per attempt: a stale attempt can never overwrite or delete the live one's file.
        key = f"results/{task.id}.{claim.epoch}.mp4"
        self.storage.put(key, output)
        now = time.time()
        final = self.settings.pricing.millicredits(task.spec.resolution, int(result["duration"]))
        info = dict(result["info"])
        info.update({k: result[k] for k in ("frames", "width", "height", "fps", "duration")})
        ok = self.store.tasks.complete(
            claim,
            result_key=key,
            expires_at=now + self.settings.result_ttl_s,
            final_millicredits=final,
            info=info,
            now=now,
        )
        if ok:
            self.completed += 1
            log.info(
                "%s: %s completed in %.1f s", self.name, task.id, info.get("generate_seconds", 0)
            )
        else:
            # Another attempt owns the task now (or it was cancelled): this file is nobody's result.
            self.storage.delete(key)
