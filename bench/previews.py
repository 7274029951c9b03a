"""What previews cost the preview engine: a task with previews against one without.

For each case, in one run and on the same job: the whole task without previews (the
baseline), then with them, each preview made by the engine (the frame just rendered,
scaled to at most 320 px wide) and encoded as the engine process encodes it (WebP,
``worker.child.encode_preview``).  Each preview's time is also measured on its own:
making it (inside the engine) and encoding it; their sum over the task's previews,
against the task's time, is the steadier figure on a busy machine.  Last, storing one
preview as an in-process worker does (``StoreTaskSource.preview`` on SQLite: the blob,
then the ``preview`` event under the lease), which happens at most once per
``preview_interval_s``.

    python bench/previews.py [--repeat 3] [--duration 6] [--preset veryfast]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from omniflash.blobs import LocalStorage
from omniflash.contract import GenerationSpec, parse_generation_request
from omniflash.engines import Job
from omniflash.engines.preview import PreviewEngine, _show
from omniflash.pricing import Pricing
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.worker import StoreTaskSource, Waker
from omniflash.worker.child import encode_preview

CASES = [("720p", "16:9"), ("1080p", "16:9"), ("720p", "9:16"), ("4k", "16:9")]


class Recorder:
    """The job's preview callback as the engine process has it: each picture encoded."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def __call__(self, picture: Image.Image) -> None:
        data, _, _ = encode_preview(picture)
        self.bytes += len(data)
        self.count += 1


def task(engine: PreviewEngine, job: Job) -> float:
    started = time.perf_counter()
    engine.generate(job, lambda _: None, lambda: False)
    return time.perf_counter() - started


def storing_ms(root: Path, spec: GenerationSpec, data: bytes, repeat: int = 50) -> float:
    """Milliseconds of one ``StoreTaskSource.preview`` on SQLite, under a held lease."""
    settings = Settings(data_dir=root)
    store = Store(settings.database_url)
    try:
        source = StoreTaskSource(settings, store, LocalStorage(settings.blobs_dir), Waker())
        _, key = store.keys.create("bench", 10_000, 60, 4)
        store.tasks.submit(key, spec, millicredits=Pricing().hold(spec), estimated_time=1, seed=1)
        lease = source.claim("bench", 0)
        assert lease is not None
        started = time.perf_counter()
        for _ in range(repeat):
            source.preview(lease, data, 320, 180)
        return (time.perf_counter() - started) / repeat * 1e3
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--duration", type=int, default=6, choices=(4, 6, 8, 10))
    parser.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = PreviewEngine(Settings(data_dir=Path(tmp), x264_preset=args.preset))
        engine.load()
        for resolution, aspect in CASES:
            spec = parse_generation_request(
                {
                    "model": "Omni-Flash-Ext",
                    "prompt": "a lighthouse on a cliff at dusk, waves below",
                    "duration": args.duration,
                    "resolution": resolution,
                    "aspect_ratio": aspect,
                }
            )
            out = Path(tmp) / "out.mp4"
            plain = Job("task_bench", spec, 7, [], None, out)
            without, with_previews = [], []
            recorder = Recorder()
            for _ in range(args.repeat):  # interleaved: both see the same machine
                without.append(task(engine, plain))
                recorder = Recorder()
                job = Job("task_bench", spec, 7, [], None, out, recorder)
                with_previews.append(task(engine, job))
            # One preview alone, the median of many: the frame scaled by swscale to an RGB
            # picture (made), then that picture as WebP (encoded).
            frame = next(iter(engine.frames(plain)))
            made: list[Image.Image] = []
            probe = Job("task_bench", spec, 7, [], None, out, made.append)
            make_times, encode_times = [], []
            for _ in range(30):
                started = time.perf_counter()
                _show(probe, frame)
                make_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                encode_preview(made[-1])
                encode_times.append(time.perf_counter() - started)
            per_preview = statistics.median(make_times), statistics.median(encode_times)
            best = min(without), min(with_previews)
            rows.append((resolution, aspect, spec, *best, recorder, *per_preview))

        sample = encode_preview(Image.new("RGB", (320, 180)))[0]
        stored = storing_ms(Path(tmp) / "store", rows[0][2], sample)

    print(
        f"preview engine, previews against none ({args.preset}, {args.duration} s at 24 fps, "
        f"best of {args.repeat}, {os.cpu_count()} CPUs)\n"
    )
    print(
        "| case | size | previews | task, none | task, previews | added | per preview: made "
        "| encoded (WebP q70) | size | previews' own time, of the task |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for resolution, aspect, spec, base, shown, rec, make_s, encode_s in rows:
        make_ms, per_encode = make_s * 1e3, encode_s * 1e3
        print(
            f"| {resolution} {aspect} | {spec.width}×{spec.height} | {rec.count} | {base:.3f} s "
            f"| {shown:.3f} s | {(shown - base) / base * 100:+.1f} % | {make_ms:.2f} ms "
            f"| {per_encode:.2f} ms | {rec.bytes / max(1, rec.count) / 1024:.1f} KiB "
            f"| {rec.count * (make_ms + per_encode) / 1e3 / base * 100:.2f} % |"
        )
    print(f"\nstoring one preview (StoreTaskSource.preview, SQLite, local blobs): {stored:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
