"""The preview engine: real mp4 files from a fast synthetic renderer, no model and no GPU.

It obeys every parameter of a request, so the whole service can be used and tested on
any machine, and it is quick: frames are made in the encoder's own yuv420p planes with
little more than memory copies, so a task costs not much more than x264 encoding the
same frames (``bench/preview_engine.py`` measures the ratio).

- text: a landscape seeded by the prompt (and the seed), a camera panning over it,
  a sun drifting across and the prompt written at the bottom;
- frame: the first frame is the image fitted to the frame; the camera then pushes in;
- reference: the 1 or 3 images as cards floating over a scene seeded by the prompt;
- video: the reference video re-timed to the output length and fitted to the frame,
  with reference images, if any, as cards in a corner.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageFont

from omniflash.contract import GenerationSpec, Mode
from omniflash.engines import preview_drawing as drawing
from omniflash.engines.base import (
    CancelCheck,
    GenerationResult,
    Job,
    ProgressCallback,
    preview_size,
)
from omniflash.engines.estimates import preview_seconds
from omniflash.errors import BadInput, TaskCancelled
from omniflash.media.encode import Mp4Writer, YuvFrame

if TYPE_CHECKING:
    from omniflash.media.decode import VideoClip
    from omniflash.settings import Settings

__all__ = ["PreviewEngine"]

log = logging.getLogger(__name__)

PAN = 0.10
"""How far the camera travels over a scene, as a fraction of the frame."""
PUSH_IN = 1.10
"""How far the camera zooms into a first frame by the end of the video."""
_ZOOM_STEP = 8
"""Crop widths are multiples of this: swscale rebuilds its context only when they change."""
PREVIEWS_PER_TASK = 8
"""About how many previews a task shows, evenly spread, the last frame always among them."""

FrameSource = Callable[[int], YuvFrame]


class _Pan:
    """A camera panning over a canvas larger than the frame (offsets eased in and out)."""

    def __init__(self, canvas: YuvFrame, width: int, height: int, frames: int, sign: int) -> None:
        self.canvas, self.width, self.height = canvas, width, height
        self.travel_x = canvas.y.shape[1] - width
        self.travel_y = canvas.y.shape[0] - height
        self.frames, self.sign = frames, sign

    def frame(self, index: int) -> YuvFrame:
        t = drawing.ease(index / max(1, self.frames - 1))
        if self.sign < 0:
            t = 1 - t
        x = round(self.travel_x * t) // 2 * 2
        y = round(self.travel_y * (1 - t) * 0.5) // 2 * 2
        w, h = self.width, self.height
        out = YuvFrame.blank(w, h)
        out.y[...] = self.canvas.y[y : y + h, x : x + w]
        out.u[...] = self.canvas.u[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2]
        out.v[...] = self.canvas.v[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2]
        return out


def _scene_pan(rng: numpy.random.Generator, width: int, height: int, frames: int) -> _Pan:
    canvas_w, canvas_h = drawing.even(width * (1 + PAN)), drawing.even(height * (1 + PAN / 2))
    canvas = YuvFrame.from_rgb(numpy.asarray(drawing.landscape(rng, canvas_w, canvas_h)))
    return _Pan(canvas, width, height, frames, sign=1 if rng.random() < 0.5 else -1)


class _PushIn:
    """The camera zooming into an image: frame 0 is the whole image fitted to the frame."""

    def __init__(self, image: Image.Image, width: int, height: int, frames: int) -> None:
        self.width, self.height, self.frames = width, height, frames
        big_w, big_h = drawing.even(width * PUSH_IN), drawing.even(height * PUSH_IN)
        self.source = YuvFrame.from_rgb(numpy.asarray(drawing.cover(image, big_w, big_h)))
        self.scaler = VideoReformatter()

    def frame(self, index: int) -> YuvFrame:
        big_h, big_w = self.source.y.shape
        zoom = 1 + (PUSH_IN - 1) * drawing.ease(index / max(1, self.frames - 1))
        crop_w = max(self.width, int(big_w / zoom) // _ZOOM_STEP * _ZOOM_STEP)
        crop_w = big_w if index == 0 else min(big_w, crop_w)
        crop_h = min(big_h, drawing.even(crop_w * self.height / self.width))
        x, y = (big_w - crop_w) // 4 * 2, (big_h - crop_h) // 4 * 2
        crop = YuvFrame.blank(crop_w, crop_h)
        crop.y[...] = self.source.y[y : y + crop_h, x : x + crop_w]
        crop.u[...] = self.source.u[y // 2 : (y + crop_h) // 2, x // 2 : (x + crop_w) // 2]
        crop.v[...] = self.source.v[y // 2 : (y + crop_h) // 2, x // 2 : (x + crop_w) // 2]
        scaled = self.scaler.reformat(
            crop.frame, width=self.width, height=self.height, interpolation="BICUBIC"
        )
        return YuvFrame.wrap(scaled)


def _retimed(clip: VideoClip, width: int, height: int, frames: int) -> Iterator[YuvFrame]:
    """The clip's frames spread evenly over ``frames`` output frames, fitted to the frame."""
    available = max(1, clip.frame_count)
    source = clip.iter_frames((width, height))
    current: YuvFrame | None = None
    position = -1
    for index in range(frames):
        wanted = min(available - 1, index * available // frames)
        while position < wanted:
            rgb = next(source, None)
            if rgb is None:  # fewer frames than the container promised: hold the last
                available = position + 1
                break
            current, position = YuvFrame.from_rgb(rgb), position + 1
        if current is None:
            raise BadInput("video_urls[0]: the video has no frames")
        out = YuvFrame.blank(width, height)
        out.y[...], out.u[...], out.v[...] = current.y, current.u, current.v
        yield out


def _ahead(frames: Iterator[YuvFrame], depth: int = 3) -> Iterator[YuvFrame]:
    """Render up to ``depth`` frames ahead in a thread while the encoder works.

    numpy copies and swscale release the GIL, so rendering overlaps x264's own threads.
    Leaving the loop early (cancel, error) stops the thread at its next frame.
    """
    slots: queue.Queue[tuple[YuvFrame | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def offer(item: tuple[YuvFrame | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def render() -> None:
        try:
            for frame in frames:
                if not offer((frame, None)):
                    return
            offer((None, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer((None, exc))

    thread = threading.Thread(target=render, name="preview-render", daemon=True)
    thread.start()
    try:
        while True:
            frame, error = slots.get()
            if error is not None:
                raise error
            if frame is None:
                return
            yield frame
    finally:
        stop.set()
        thread.join()


def preview_every(frames: int) -> int:
    """Every how many frames a preview is shown (and always at the last one)."""
    return max(1, frames // PREVIEWS_PER_TASK)


def _show(job: Job, frame: YuvFrame) -> None:
    """The frame just rendered, scaled down by swscale, as the job's preview."""
    assert job.preview is not None
    width, height = preview_size(frame.y.shape[1], frame.y.shape[0])
    small = frame.frame.reformat(width=width, height=height, format="rgb24")
    try:
        job.preview(small.to_image())
    except Exception:  # a preview is a look, never a reason to fail the video
        log.warning("task %s: a preview could not be shown", job.task_id, exc_info=True)


def _rng(job: Job) -> numpy.random.Generator:
    digest = hashlib.sha256(job.spec.prompt.encode()).digest()
    return numpy.random.default_rng([int.from_bytes(digest[:8], "big"), job.seed])


class PreviewEngine:
    """Synthetic video at the requested geometry, length and mode (see the module doc)."""

    name = "preview"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def load(self) -> None:
        ImageFont.load_default(size=24)
        log.info(
            "preview engine: synthetic video from a CPU renderer, no model; "
            "serve with --engine diffusers on an NVIDIA GPU for generated video"
        )

    def warmup(self) -> None:
        pass

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        return preview_seconds(spec)

    def generate(
        self, job: Job, progress: ProgressCallback, cancelled: CancelCheck
    ) -> GenerationResult:
        spec = job.spec
        width, height, frames = spec.width, spec.height, spec.frames
        if frames is None:
            raise ValueError("the job's spec has no duration")
        progress(0.0)
        every = preview_every(frames)
        with Mp4Writer(
            job.output_path, width, height, fps=spec.fps, preset=self.settings.x264_preset
        ) as writer:
            for index, frame in enumerate(_ahead(self.frames(job)), start=1):
                if cancelled():
                    raise TaskCancelled("cancelled")
                if job.preview is not None and (index % every == 0 or index == frames):
                    _show(job, frame)
                writer.write_frame(frame)
                progress(index / frames)
        return GenerationResult(
            frames=frames,
            width=width,
            height=height,
            fps=spec.fps,
            info={"engine": self.name, "mode": spec.mode.value},
        )

    def frames(self, job: Job) -> Iterator[YuvFrame]:
        """The job's frames, in order, each a new yuv420p frame of the output size."""
        spec = job.spec
        if spec.frames is None:
            raise ValueError("the job's spec has no duration")
        source = self._source(job, spec.width, spec.height, spec.frames)
        for index in range(spec.frames):
            yield source(index)

    def _source(self, job: Job, width: int, height: int, frames: int) -> FrameSource:
        spec, rng = job.spec, _rng(job)
        if spec.mode is Mode.FRAME:
            return _PushIn(job.images[0], width, height, frames).frame
        if spec.mode is Mode.VIDEO:
            if job.video is None:
                raise BadInput("video_urls[0]: the video is missing")
            stream = _retimed(job.video, width, height, frames)
            corner = self._corner_cards(job.images, width, height)

            def from_video(index: int) -> YuvFrame:
                out = next(stream)
                for sprite, x, y in corner:
                    sprite.paste(out, x, y)
                return out

            return from_video
        pan = _scene_pan(rng, width, height, frames)
        caption = drawing.caption_sprite(spec.prompt, width, height)
        caption_x = (width - caption.width) // 2
        caption_y = height - caption.height - height // 20
        floaters = self._floaters(job.images, rng, width, height, frames)

        def scene(index: int) -> YuvFrame:
            out = pan.frame(index)
            for paste in floaters:
                paste(out, index)
            caption.paste(out, caption_x, caption_y)
            return out

        return scene

    def _floaters(
        self,
        images: list[Image.Image],
        rng: numpy.random.Generator,
        width: int,
        height: int,
        frames: int,
    ) -> list[Callable[[YuvFrame, int], None]]:
        """Things that move over the scene: a sun for text, the cards for reference images."""
        if not images:
            sun = drawing.sun_sprite(rng, height)
            start_x, end_x = width * 0.1, width * 0.8
            start_y, end_y = height * 0.28, height * 0.1

            def move_sun(out: YuvFrame, index: int) -> None:
                t = index / max(1, frames - 1)
                x = start_x + (end_x - start_x) * t
                y = start_y + (end_y - start_y) * math.sin(t * math.pi / 2)
                sun.paste(out, round(x), round(y))

            return [move_sun]
        slots = len(images)
        box_w, box_h = width * 0.8 / slots * 0.85, height * (0.6 if slots == 1 else 0.45)
        cards = [drawing.card_sprite(image, round(box_w), round(box_h)) for image in images]
        period = frames / (1.5 if frames > 48 else 1.0)
        moves: list[Callable[[YuvFrame, int], None]] = []
        for slot, card in enumerate(cards):
            centre_x = width * (0.1 + 0.8 * (slot + 0.5) / slots)
            centre_y = height * 0.42
            phase = slot * math.tau / 3 + rng.random()

            def move_card(
                out: YuvFrame, index: int, card: drawing.Sprite = card, cx: float = centre_x,
                cy: float = centre_y, phase: float = phase,
            ) -> None:  # fmt: skip
                angle = index / period * math.tau + phase
                x = cx - card.width / 2 + math.cos(angle) * height * 0.02
                y = cy - card.height / 2 + math.sin(angle) * height * 0.035
                card.paste(out, round(x), round(y))

            moves.append(move_card)
        return moves

    def _corner_cards(
        self, images: list[Image.Image], width: int, height: int
    ) -> list[tuple[drawing.Sprite, int, int]]:
        """Reference images beside a video: small cards along the top-right corner."""
        placed = []
        right = width - height // 30
        for image in images:
            card = drawing.card_sprite(image, round(width * 0.16), round(height * 0.2))
            right -= card.width
            placed.append((card, right, height // 30))
            right -= height // 60
        return placed
