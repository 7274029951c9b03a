"""Previews from a real engine process through the worker to its source, one per interval."""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy
import pytest
from PIL import Image

from omniflash.contract import parse_generation_request
from omniflash.engines.preview import preview_every
from omniflash.settings import Settings
from omniflash.worker.previews import Previews
from omniflash.worker.source import Lease
from omniflash.worker.supervisor import Worker

SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a kite", "duration": 4})
FRAMES = 4 * 24


class Recording:
    """A task source with one task, and no ``preview``: a source written before previews."""

    def __init__(self, tmp_path: Path) -> None:
        self.leases = [Lease("task_p", SPEC, 3, 1, 1)]
        self.kept = tmp_path / "kept.mp4"
        self.ended: list[str] = []
        self.done = threading.Event()

    def claim(self, owner: str, wait_s: float) -> Lease | None:
        if self.leases:
            return self.leases.pop()
        time.sleep(wait_s)
        return None

    def heartbeat(self, lease: Lease, progress: int) -> bool:
        return True

    def fetch_inputs(self, lease: Lease, dest: Path) -> dict[str, Path]:
        return {}

    def complete(self, lease: Lease, output: Path, result: dict[str, Any]) -> bool:
        shutil.copy(output, self.kept)
        self.ended.append("completed")
        self.done.set()
        return True

    def fail(self, lease: Lease, message: str, *, retry: bool) -> bool:
        self.ended.append(f"failed: {message}")
        self.done.set()
        return True

    def release(self, lease: Lease) -> bool:
        return True


class Previewing(Recording):
    def __init__(self, tmp_path: Path, *, broken: bool = False) -> None:
        super().__init__(tmp_path)
        self.previews: list[tuple[bytes, int, int]] = []
        self.broken = broken

    def preview(self, lease: Lease, data: bytes, width: int, height: int) -> None:
        assert lease.task_id == "task_p"
        self.previews.append((data, width, height))
        if self.broken:
            raise OSError("the blob store is full")


def run_worker(tmp_path: Path, source: Recording, interval_s: float) -> Worker:
    settings = Settings(
        data_dir=tmp_path / "data",
        x264_preset="ultrafast",
        engine="preview",
        preview_interval_s=interval_s,
    )
    stop = threading.Event()
    worker = Worker(settings, source, tmp_path / "scratch", stop, claim_wait_s=0.05)
    worker.start()
    try:
        assert source.done.wait(60)
    finally:
        stop.set()
        worker.join(30)
    assert source.ended == ["completed"]
    return worker


def thumbnail(picture: Image.Image) -> numpy.ndarray:
    return numpy.asarray(picture.convert("L").resize((64, 36), Image.Resampling.BOX), float)


def last_frame(path: Path) -> Image.Image:
    with av.open(str(path)) as container:
        return list(container.decode(container.streams.video[0]))[-1].to_image()


def decoded(preview: tuple[bytes, int, int]) -> Image.Image:
    picture = Image.open(io.BytesIO(preview[0]))
    picture.load()
    assert picture.format == "WEBP" and picture.size == preview[1:]
    return picture


@pytest.mark.timeout(120)
def test_every_preview_reaches_the_source_when_the_interval_is_zero(tmp_path: Path) -> None:
    source = Previewing(tmp_path)
    worker = run_worker(tmp_path, source, 0.0)
    assert len(source.previews) == FRAMES // preview_every(FRAMES) == worker.previews_sent
    pictures = [decoded(p) for p in source.previews]
    assert all(p.width <= 320 for p in pictures)
    final = thumbnail(last_frame(source.kept))
    assert numpy.abs(thumbnail(pictures[-1]) - final).mean() <= 4.0
    assert numpy.abs(thumbnail(pictures[0]) - final).mean() > 4.0


@pytest.mark.timeout(120)
def test_a_long_interval_sends_the_first_and_the_last(tmp_path: Path) -> None:
    source = Previewing(tmp_path)
    worker = run_worker(tmp_path, source, 60.0)
    # The first goes at once; the rest wait their turn, each replacing the one before,
    # and the newest goes when the engine is done: the video's last frame.
    assert len(source.previews) == 2 == worker.previews_sent
    final = thumbnail(last_frame(source.kept))
    assert numpy.abs(thumbnail(decoded(source.previews[-1])) - final).mean() <= 4.0


@pytest.mark.timeout(120)
def test_a_source_that_cannot_store_previews_still_completes_the_task(tmp_path: Path) -> None:
    source = Previewing(tmp_path, broken=True)
    worker = run_worker(tmp_path, source, 0.0)
    assert worker.preview_errors == len(source.previews) > 0
    assert worker.previews_sent == 0 and worker.completed == 1


@pytest.mark.timeout(120)
def test_a_source_without_previews_is_not_sent_any(tmp_path: Path) -> None:
    worker = run_worker(tmp_path, Recording(tmp_path), 0.0)
    assert worker.completed == 1 and worker.previews_sent == worker.preview_errors == 0


@pytest.mark.timeout(120)
def test_a_negative_interval_turns_previews_off(tmp_path: Path) -> None:
    source = Previewing(tmp_path)
    worker = run_worker(tmp_path, source, -1.0)
    assert worker.completed == 1 and source.previews == []


def test_previews_are_held_one_at_a_time_and_never_queued() -> None:
    sent: list[tuple[bytes, int, int]] = []
    previews = Previews(lambda data, w, h: sent.append((data, w, h)), 2.0)
    previews.offer((b"a", 1, 1), now=10.0)
    previews.offer((b"b", 1, 1), now=10.5)
    previews.offer((b"c", 1, 1), now=11.0)
    previews.tick(11.9)
    assert sent == [(b"a", 1, 1)] and previews.dropped == 1
    previews.tick(12.0)
    assert sent[-1] == (b"c", 1, 1)
    previews.offer((b"d", 1, 1), now=12.5)
    previews.flush(12.6)
    assert [s[0] for s in sent] == [b"a", b"c", b"d"] and previews.sent == 3
    previews.flush(12.7)
    assert previews.sent == 3, "nothing held, nothing sent"


def test_no_source_method_means_no_previews_wanted() -> None:
    previews = Previews(None, 2.0)
    assert not previews.wanted
    previews.offer((b"a", 1, 1), now=1.0)
    previews.flush(2.0)
    assert previews.sent == 0 and previews.held is None


def test_the_engine_makes_previews_only_when_asked(tmp_path: Path) -> None:
    """The payload's ``previews`` decides whether the engine's job has a preview callback."""
    from omniflash.worker.child import _run_job

    class Showing:
        name = "showing"

        def __init__(self) -> None:
            self.asked: list[bool] = []

        def generate(self, job: Any, progress: Any, cancelled: Any) -> Any:
            self.asked.append(job.preview is not None)
            if job.preview is not None:
                job.preview(Image.new("RGB", (640, 360), (200, 30, 30)))
            raise OSError("no video today")

    class Pipe:
        def __init__(self) -> None:
            self.sent: list[tuple[Any, ...]] = []

        def send(self, message: tuple[Any, ...]) -> None:
            self.sent.append(message)

    class Cancel:
        def is_set(self) -> bool:
            return False

    engine, pipe = Showing(), Pipe()
    for wanted in (True, False):
        payload = {
            "task_id": "task_1",
            "spec": SPEC.to_json(),
            "seed": 1,
            "workdir": str(tmp_path / "w"),
            "output_path": str(tmp_path / "w" / "out.mp4"),
            "previews": wanted,
        }
        _run_job(engine, payload, pipe, Cancel(), Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    assert engine.asked == [True, False]
    assert [(m[0], m[2], m[3]) for m in pipe.sent] == [("preview", 320, 180)]
    assert decoded(pipe.sent[0][1:]).size == (320, 180)
