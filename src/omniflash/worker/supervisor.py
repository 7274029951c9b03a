"""One worker: claims tasks from a ``TaskSource``, runs them in its engine process, finishes.

The engine runs in a long-lived child process so that a model stays loaded between
tasks, and so that a cancel or the per-task timeout can always stop a generation: the
child is asked first (between steps) and killed if it does not stop in time; a fresh
one is then started.  Previews the engine shows on the way are passed to the source at
most one per ``preview_interval_s`` (``worker.previews``).  The loop outlives every
error of its source (a database restart, a lost server): it backs off and tries again,
and it never finishes a task twice, since every write names the lease's epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from omniflash.logs import task_context
from omniflash.settings import Settings
from omniflash.worker.child import child_main
from omniflash.worker.previews import Previews
from omniflash.worker.source import Lease, SourceUnavailable, TaskSource

__all__ = ["EngineProcess", "Worker", "duration_text"]

log = logging.getLogger(__name__)
CANCEL_GRACE_S = 10.0
RENEW_S = 5.0
"""The longest between two heartbeats of a task whose progress has not moved."""
PROGRESS_BEAT_S = 0.5
"""The shortest between two heartbeats that carry new progress."""


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


def duration_text(seconds: float) -> str:
    """``duration_text(8) == "8 s"``, ``duration_text(90) == "1 min 30 s"``."""
    whole = max(0, round(seconds))
    minutes, secs = divmod(whole, 60)
    if not minutes:
        return f"{secs} s"
    return f"{minutes} min" + (f" {secs} s" if secs else "")


class Worker(threading.Thread):
    """Claims one task at a time from its source and runs it in its engine process."""

    BACKOFF_S = (0.5, 10.0)
    FINISH_RETRY_S = 60.0
    """How long a finished task's result keeps being offered to an unreachable source."""

    def __init__(
        self,
        settings: Settings,
        source: TaskSource,
        scratch_dir: Path,
        stop: threading.Event,
        index: int = 0,
        *,
        claim_wait_s: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"worker-{index}", daemon=True)
        self.settings = settings
        self.source = source
        self.scratch_dir = scratch_dir
        self.stop = stop
        self.claim_wait_s = settings.poll_interval_s if claim_wait_s is None else claim_wait_s
        self.owner = f"{self.name}-{uuid.uuid4().hex[:8]}"
        self.engine = EngineProcess(dataclasses.replace(settings, worker_index=index), self.name)
        self.completed = self.failed = self.cancelled = self.released = self.source_errors = 0
        self.previews_sent = self.preview_errors = 0
        self.preview_interval_s = settings.preview_interval_s

    def __repr__(self) -> str:
        return (
            f"<Worker {self.owner} completed={self.completed} failed={self.failed} "
            f"cancelled={self.cancelled} released={self.released} "
            f"source_errors={self.source_errors} engine_starts={self.engine.starts}>"
        )

    def run(self) -> None:
        backoff = self.BACKOFF_S[0]
        try:
            while not self.stop.is_set():
                try:
                    if not self.engine.ensure(self.stop):
                        continue
                    lease = self.source.claim(self.owner, self.claim_wait_s)
                except SourceUnavailable as exc:
                    self.source_errors += 1
                    log.warning(
                        "%s: task source unavailable (%s); retrying in %.1f s",
                        self.name,
                        exc,
                        backoff,
                    )
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, self.BACKOFF_S[1])
                    continue
                except Exception:
                    self.source_errors += 1
                    log.exception("%s: claiming failed; retrying in %.1f s", self.name, backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, self.BACKOFF_S[1])
                    continue
                backoff = self.BACKOFF_S[0]
                if lease is None:
                    continue
                try:
                    self._run(lease)
                except Exception:
                    log.exception("%s: task %s crashed the supervisor", self.name, lease.task_id)
                    self.engine.kill()
                    self._fail(lease, "internal error while running the task", retry=True)
        finally:
            self.engine.kill()

    def _settle(self, what: str, call: Callable[[], bool]) -> bool:
        """A finishing call, retried while the source is unreachable; False if never done."""
        deadline = time.monotonic() + self.FINISH_RETRY_S
        delay = self.BACKOFF_S[0]
        while True:
            try:
                return call()
            except SourceUnavailable as exc:
                self.source_errors += 1
                if time.monotonic() + delay > deadline:
                    log.error(
                        "%s: could not %s (%s); the lease will run out and the task "
                        "will be run again",
                        self.name,
                        what,
                        exc,
                    )
                    return False
                log.warning("%s: could not %s (%s); retrying", self.name, what, exc)
                if self.stop.is_set():
                    # Stopping: a few more seconds for the finish, not the whole minute.
                    deadline = min(deadline, time.monotonic() + 5.0)
                time.sleep(delay)
                delay = min(delay * 2, self.BACKOFF_S[1])
            except Exception:
                log.exception("%s: could not %s", self.name, what)
                return False

    def _fail(self, lease: Lease, message: str, *, retry: bool) -> None:
        self.failed += 1
        self._settle(f"fail {lease.task_id}", lambda: self.source.fail(lease, message, retry=retry))

    def _beat(self, lease: Lease, progress: int) -> bool | None:
        """The heartbeat's answer; ``None`` when the source could not be reached this time."""
        try:
            return self.source.heartbeat(lease, progress)
        except SourceUnavailable as exc:
            self.source_errors += 1
            log.warning("%s: heartbeat of %s failed (%s)", self.name, lease.task_id, exc)
            return None

    def _run(self, lease: Lease) -> None:
        log.info(
            "%s: running %s (%s, attempt %d)",
            self.name,
            lease.task_id,
            lease.spec.mode.value,
            lease.attempt,
        )
        # The result is written beside the task's directory, which is made only for inputs
        # (most tasks have none): directory operations cost more than the rest of a short
        # task's files, and the result leaves by one rename (``TaskSource.complete``).
        scratch = self.scratch_dir / f"{lease.task_id}.{lease.epoch}"
        output = self.scratch_dir / f"{lease.task_id}.{lease.epoch}.mp4"
        try:
            with task_context(lease.task_id):  # log lines about this task carry its id
                self._attempt(lease, scratch, output)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            output.unlink(missing_ok=True)

    def _previews(self, lease: Lease) -> Previews:
        # A source without ``preview`` (one written before previews) gets none, and the
        # engine is told not to make them; so does a negative interval.
        method = getattr(self.source, "preview", None)
        if method is None or self.preview_interval_s < 0:
            return Previews(None, self.preview_interval_s)

        def send(data: bytes, width: int, height: int) -> None:
            method(lease, data, width, height)

        return Previews(send, self.preview_interval_s)

    def _attempt(self, lease: Lease, scratch: Path, output: Path) -> None:
        previews = self._previews(lease)
        try:
            self._attempt_with(lease, scratch, output, previews)
        finally:
            self.previews_sent += previews.sent
            self.preview_errors += previews.errors

    def _attempt_with(self, lease: Lease, scratch: Path, output: Path, previews: Previews) -> None:
        s = self.settings
        try:
            inputs = self.source.fetch_inputs(lease, scratch / "inputs")
        except (SourceUnavailable, FileNotFoundError) as exc:
            log.warning("%s: inputs of %s unavailable: %s", self.name, lease.task_id, exc)
            self._fail(lease, "a stored input could not be read", retry=True)
            return
        conn = self.engine.conn
        assert conn is not None
        self.engine.cancel.clear()
        conn.send(
            (
                "job",
                {
                    "task_id": lease.task_id,
                    "spec": lease.spec.to_json(),
                    "seed": lease.seed,
                    "workdir": str(scratch),
                    "output_path": str(output),
                    "inputs": {label: str(path) for label, path in inputs.items()},
                    "previews": previews.wanted,
                },
            )
        )
        started = time.monotonic()
        deadline = started + s.task_timeout_s
        # A beat is one statement: news (progress) goes out at most every PROGRESS_BEAT_S,
        # and a lease with no news is renewed three times a lease, at most every RENEW_S
        # (a cancel is noticed by the next beat).
        beat_every = max(0.2, min(RENEW_S, s.lease_s / 3))
        last_beat = started  # the claim has just set the lease
        progress = beat_progress = 0
        cancel_sent_at: float | None = None
        outcome: tuple[Any, ...] | None = None
        while outcome is None:
            now = time.monotonic()
            due = now - last_beat >= beat_every or (
                progress != beat_progress and now - last_beat >= PROGRESS_BEAT_S
            )
            if cancel_sent_at is None and due:
                last_beat, beat_progress = now, progress
                if self._beat(lease, progress) is False:
                    # Cancelled by its owner, or reaped and handed to another worker.
                    log.info("%s: %s is no longer ours; stopping it", self.name, lease.task_id)
                    self.engine.cancel.set()
                    cancel_sent_at = now
            if cancel_sent_at is not None and now - cancel_sent_at > self.engine.cancel_grace_s:
                log.warning(
                    "%s: engine ignored the cancel of %s; killing it", self.name, lease.task_id
                )
                self.engine.kill()
                self.cancelled += 1
                return
            if now > deadline:
                self.engine.kill()
                self._fail(
                    lease,
                    f"generation timed out after {duration_text(s.task_timeout_s)} and was stopped",
                    retry=False,
                )
                return
            if self.stop.is_set():
                # Shutting down: hand the task back untried, for another worker to run now.
                self.engine.kill()
                if self._settle(f"release {lease.task_id}", lambda: self.source.release(lease)):
                    self.released += 1
                return
            try:
                ready = conn.poll(0.1)
                message = conn.recv() if ready else None
            except (EOFError, OSError):
                self.engine.kill()
                if cancel_sent_at is None:
                    self._fail(lease, "the engine process crashed", retry=True)
                return
            if message is None:
                if cancel_sent_at is None:
                    previews.tick(time.monotonic())
                continue
            if message[0] == "progress":
                # The last percent is the upload and bookkeeping after the engine is done.
                progress = max(progress, min(99, int(float(message[1]) * 99)))
            elif message[0] == "preview":
                if cancel_sent_at is None:
                    previews.offer((message[1], int(message[2]), int(message[3])), now)
            else:
                outcome = message
        if cancel_sent_at is not None:
            self.cancelled += 1
            return
        if outcome[0] == "done":
            previews.flush(time.monotonic())
        self._finish(lease, outcome, output)

    def _finish(self, lease: Lease, outcome: tuple[Any, ...], output: Path) -> None:
        if outcome[0] == "error":
            kind, message = outcome[1], outcome[2]
            if kind == "cancelled":
                self.cancelled += 1
                return
            log.info("%s: %s failed: %s", self.name, lease.task_id, message)
            # Transient (an input's server answered 503): queued again while attempts remain.
            self._fail(lease, message, retry=kind == "transient")
            return
        result = outcome[1]
        info = dict(result["info"])
        info.update({k: result[k] for k in ("frames", "width", "height", "fps", "duration")})
        if self._settle(
            f"complete {lease.task_id}", lambda: self.source.complete(lease, output, info)
        ):
            self.completed += 1
            log.info(
                "%s: %s completed in %.1f s",
                self.name,
                lease.task_id,
                info.get("generate_seconds", 0),
            )
