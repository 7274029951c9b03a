"""A task's inputs: its images and reference video, fetched and decoded under the settings' limits.

>>> images, clip = fetch_inputs(spec, workdir, settings)   # doctest: +SKIP
>>> clip_seconds(clip) if clip else spec.duration           # doctest: +SKIP
7
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from omniflash.contract import VIDEO_SECONDS_RANGE, GenerationSpec
from omniflash.errors import BadInput
from omniflash.input_blobs import VIDEO_LABEL, image_label
from omniflash.media.decode import VideoClip, decode_image, probe_video
from omniflash.media.fetch import FetchPolicy, fetch_bytes, fetch_to_file
from omniflash.settings import Settings

__all__ = [
    "VIDEO_LABEL",
    "clip_seconds",
    "fetch_inputs",
    "image_label",
]


def fetch_inputs(
    spec: GenerationSpec,
    workdir: Path,
    settings: Settings,
    local: Mapping[str, Path] | None = None,
) -> tuple[list[Image.Image], VideoClip | None]:
    """Fetch every input at once, then decode them in order; the first failure (by input) wins.

    Images come back as RGB ``PIL`` images in ``spec.image_urls`` order; the video is
    downloaded into ``workdir`` and probed.  ``local`` maps labels of inputs already on
    disk (blob inputs the worker downloaded) to their files.  Any failure is an
    ``BadInput`` naming its input, e.g. ``image_urls[1]: HTTP 404``.
    """
    local = local or {}
    image_policy = FetchPolicy(
        allow_private=settings.allow_private_urls,
        timeout_s=settings.fetch_timeout_s,
        max_bytes=settings.max_image_bytes,
    )
    video_policy = FetchPolicy(
        allow_private=settings.allow_private_urls,
        timeout_s=settings.fetch_timeout_s,
        max_bytes=settings.max_video_bytes,
    )
    jobs = len(spec.image_urls) + (1 if spec.video_url else 0)
    if not jobs:
        return [], None
    workdir.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="omniflash-fetch")
    try:
        image_jobs = [
            pool.submit(_read_local, local[image_label(index)], image_label(index))
            if image_label(index) in local
            else pool.submit(fetch_bytes, url, label=image_label(index), policy=image_policy)
            for index, url in enumerate(spec.image_urls)
        ]
        video_job: Future[Path] | None = None
        if VIDEO_LABEL in local:
            video_job = pool.submit(lambda: local[VIDEO_LABEL])
        elif spec.video_url:
            video_job = pool.submit(
                fetch_to_file,
                spec.video_url,
                workdir / "reference-video",
                label=VIDEO_LABEL,
                policy=video_policy,
            )
        images = [
            decode_image(
                job.result(), label=image_label(index), max_pixels=settings.max_image_pixels
            )
            for index, job in enumerate(image_jobs)
        ]
        clip = None
        if video_job is not None:
            clip = probe_video(
                video_job.result(),
                label=VIDEO_LABEL,
                max_seconds=settings.max_video_seconds,
                max_pixels=settings.max_image_pixels,
            )
    finally:
        # After a failure, fetches still running end at their own deadline; don't wait for them.
        pool.shutdown(wait=False, cancel_futures=True)
    return images, clip


def _read_local(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{label}: the stored input could not be read") from exc


def clip_seconds(clip: VideoClip) -> int:
    """Output seconds for a reference-video task: the clip's length rounded, held to 4–10.

    >>> clip_seconds(VideoClip(Path("v.mp4"), 640, 360, 24.0, 6.5, 156))
    7
    """
    low, high = VIDEO_SECONDS_RANGE
    return min(high, max(low, math.floor(clip.duration + 0.5)))
