"""The preview engine against x264 alone, on this machine, in one run.

For each case the engine's frames are first rendered into memory; then, timed, x264
encodes exactly those frames with the engine's settings (the baseline), and the engine
runs the whole task (render + encode).  The target is a ratio of at most 1.5.

    python bench/preview_engine.py [--repeat 2] [--duration 6] [--preset veryfast]

Prints a Markdown table; exits 1 if a case misses the target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from omniflash.contract import GenerationSpec, parse_generation_request
from omniflash.engines import Job
from omniflash.engines.preview import PreviewEngine
from omniflash.media.encode import Mp4Writer, YuvFrame, probe_mp4
from omniflash.settings import Settings

TARGET = 1.5
CASES = [
    ("720p", "16:9", "text"),
    ("1080p", "16:9", "text"),
    ("4k", "16:9", "text"),
    ("720p", "16:9", "frame"),
    ("720p", "16:9", "reference ×3"),
]


def make_job(resolution: str, aspect: str, mode: str, duration: int, out: Path) -> Job:
    body: dict[str, object] = {
        "model": "Omni-Flash-Ext",
        "prompt": "a lighthouse on a cliff at dusk, waves below",
        "duration": duration,
        "resolution": resolution,
        "aspect_ratio": aspect,
    }
    photo = Image.radial_gradient("L").convert("RGB").resize((1600, 1200))
    images: list[Image.Image] = []
    if mode == "frame":
        body["image_urls"], images = ["https://example.com/a.png"], [photo]
    elif mode.startswith("reference"):
        body["image_urls"] = ["https://example.com/a.png"] * 3
        body["generation_type"] = "reference"
        images = [photo] * 3
    spec = parse_generation_request(body)
    return Job("task_bench", spec, 7, images, None, out)


def best_of(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs (default 2)")
    parser.add_argument("--duration", type=int, default=6, choices=(4, 6, 8, 10))
    parser.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    parser.add_argument("--only", help="run the cases whose name contains this text")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), x264_preset=args.preset)
        engine = PreviewEngine(settings)
        engine.load()
        for resolution, aspect, mode in CASES:
            if args.only and args.only not in f"{resolution} {mode}":
                continue
            out = Path(tmp) / "out.mp4"
            job = make_job(resolution, aspect, mode, args.duration, out)
            spec = job.spec
            frames = list(engine.frames(job))

            def encode_only(frames: list[YuvFrame] = frames, spec: GenerationSpec = spec) -> None:
                with Mp4Writer(
                    Path(tmp) / "x264.mp4", spec.width, spec.height, preset=args.preset
                ) as writer:
                    for frame in frames:
                        writer.write_frame(frame)

            def whole_task(job: Job = job) -> None:
                engine.generate(job, lambda _: None, lambda: False)

            baseline = best_of(args.repeat, encode_only)
            del frames
            task = best_of(args.repeat, whole_task)
            info = probe_mp4(out)
            assert (info.width, info.height, info.frames) == (
                spec.width,
                spec.height,
                spec.frames,
            )
            rows.append((resolution, mode, spec, baseline, task))

    cpus = os.cpu_count()
    print(f"preview engine vs x264 alone ({args.preset}, {args.duration} s at 24 fps, "
          f"best of {args.repeat}, {cpus} CPUs)\n")  # fmt: skip
    print("| case | size | frames | x264 alone | preview task | ratio | target ≤ 1.5 |")
    print("|---|---|---|---|---|---|---|")
    failed = 0
    for resolution, mode, spec, baseline, task in rows:
        ratio = task / baseline
        ok = ratio <= TARGET
        failed += not ok
        print(
            f"| {resolution} {mode} | {spec.width}×{spec.height} | {spec.frames} "
            f"| {baseline:.2f} s | {task:.2f} s | {ratio:.2f} | {'yes' if ok else 'NO'} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
