"""What previews cost the preview engine: a task with previews against one without.

For each case, in one run and on the same job: the whole task without previews (the
baseline), then with them, each preview made by the engine (the frame just rendered,
scaled to at most 320 px wide) and encoded as the engine process encodes it (WebP,
``worker.child.encode_preview``).  Each preview's time is also measured on its own:
making it (inside the engine) and encoding it; their sum over the task's previews,
against the task's time, is the steadier figure on a busy machine.

    python bench/previews.py [--repeat 3] [--duration 6] [--preset veryfast]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from omniflash.contract import parse_generation_request
from omniflash.engines import Job
from omniflash.engines.preview import PreviewEngine, _show
from omniflash.settings import Settings
from omniflash.worker.child import encode_preview

CASES = [("720p", "16:9"), ("1080p", "16:9"), ("720p", "9:16"), ("4k", "16:9")]


class Recorder:
    """The job's preview callback, as the engine process has it, with its clock."""

    def __init__(self) -> None:
        self.count = 0
        self.encode_s = 0.0
        self.bytes = 0

    def __call__(self, picture: Image.Image) -> None:
        started = time.perf_counter()
        data, _, _ = encode_preview(picture)
        self.encode_s += time.perf_counter() - started
        self.bytes += len(data)
        self.count += 1


def task(engine: PreviewEngine, job: Job) -> float:
    started = time.perf_counter()
    engine.generate(job, lambda _: None, lambda: False)
    return time.perf_counter() - started


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
            # Making one preview, alone: the frame scaled by swscale to an RGB picture.
            frame = next(iter(engine.frames(plain)))

            probe = Job("task_bench", spec, 7, [], None, out, lambda _p: None)
            started = time.perf_counter()
            for _ in range(20):
                _show(probe, frame)
            make_ms = (time.perf_counter() - started) / 20 * 1e3
            rows.append(
                (resolution, aspect, spec, min(without), min(with_previews), recorder, make_ms)
            )

    print(
        f"preview engine, previews against none ({args.preset}, {args.duration} s at 24 fps, "
        f"best of {args.repeat}, {os.cpu_count()} CPUs)\n"
    )
    print(
        "| case | size | previews | task, none | task, previews | added | per preview: made "
        "| encoded (WebP q70) | size | previews' own time, of the task |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for resolution, aspect, spec, base, shown, rec, make_ms in rows:
        per_encode = rec.encode_s / max(1, rec.count) * 1e3
        print(
            f"| {resolution} {aspect} | {spec.width}×{spec.height} | {rec.count} | {base:.3f} s "
            f"| {shown:.3f} s | {(shown - base) / base * 100:+.1f} % | {make_ms:.2f} ms "
            f"| {per_encode:.2f} ms | {rec.bytes / max(1, rec.count) / 1024:.1f} KiB "
            f"| {rec.count * (make_ms + per_encode) / 1e3 / base * 100:.2f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
