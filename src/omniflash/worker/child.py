"""The engine's process: loads the engine once, then runs one job at a time.

It talks to its supervisor over a pipe.  Messages in: ``("job", {...})``.  Messages out:
``("ready", info)``, ``("progress", fraction)``, ``("preview", webp, width, height)``,
``("done", result)``, ``("error", kind, message)``.  A preview is encoded here, in the
engine's process, so the supervisor only passes small bytes on.
A soft cancel is the shared ``cancel`` event, checked by the engine between steps; the
supervisor kills the process when that is not enough (or the task timed out).
"""

from __future__ import annotations

import io
import logging
import signal
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omniflash.contract import GenerationSpec, Mode
from omniflash.errors import BadInput, EngineBroken, GenerationError, TaskCancelled
from omniflash.procs import die_with_parent
from omniflash.settings import Settings

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["child_main", "encode_preview"]

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.25
PREVIEW_QUALITY = 70
"""WebP quality of a preview: a 320 px frame in a few KiB, still clear enough to judge."""


def encode_preview(image: Image.Image) -> tuple[bytes, int, int]:
    """``image`` as a WebP preview, scaled down to fit ``preview_size``: (bytes, width, height)."""
    from omniflash.engines.base import preview_size

    size = preview_size(image.width, image.height)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if size != image.size:
        image = image.resize(size)
    out = io.BytesIO()
    # method 2 of 0-6: a quarter of the default's time for a few percent more bytes.
    image.save(out, "WEBP", quality=PREVIEW_QUALITY, method=2)
    return out.getvalue(), image.width, image.height


def child_main(conn: Connection, cancel: Event, settings: Settings, log_level: int) -> None:
    # A SIGKILLed supervisor takes its engine processes with it.
    die_with_parent()
    from omniflash.logs import configure_logging, task_context

    configure_logging(
        logging.getLevelName(log_level),
        settings.log_format,
        text_format="%(asctime)s %(levelname)s [engine] %(name)s: %(message)s",
    )
    # Ctrl-C goes to the whole process group; the supervisor decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from omniflash.engines import create_engine

    try:
        engine = create_engine(settings.engine, settings)
        engine.load()
        engine.warmup()
    except Exception as exc:
        log.exception("engine %s failed to load", settings.engine)
        conn.send(("error", "load", f"engine {settings.engine!r} failed to load: {exc}"))
        return
    grace = getattr(engine, "cancel_grace_s", None)
    conn.send(("ready", {"engine": engine.name, **({"cancel_grace_s": grace} if grace else {})}))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "job":
            continue
        try:
            with task_context(str(message[1].get("task_id"))):
                conn.send(_run_job(engine, message[1], conn, cancel, settings))
        except (BrokenPipeError, OSError):
            return
        except EngineBroken as exc:
            # The reply first (the task fails and is refunded), then a fresh process.
            conn.send(("error", "engine", str(exc)))
            log.error("the engine cannot go on (%s); its process exits to be restarted", exc)
            return


def _run_job(
    engine: Any, payload: dict[str, Any], conn: Connection, cancel: Event, settings: Settings
) -> tuple[Any, ...]:
    from omniflash.engines import Job
    from omniflash.media.task_inputs import clip_seconds, fetch_inputs

    spec = GenerationSpec.from_json(payload["spec"])
    workdir = Path(payload["workdir"])  # made by ``fetch_inputs`` when an input needs it
    Path(payload["output_path"]).parent.mkdir(parents=True, exist_ok=True)
    last = [0.0, -1.0]

    def progress(fraction: float) -> None:
        now = time.monotonic()
        if fraction > last[1] and (now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0):
            last[0], last[1] = now, fraction
            conn.send(("progress", float(fraction)))

    def preview(image: Image.Image) -> None:
        data, width, height = encode_preview(image)
        conn.send(("preview", data, width, height))

    try:
        local = {label: Path(path) for label, path in payload.get("inputs", {}).items()}
        images, video = fetch_inputs(spec, workdir, settings, local)
        if cancel.is_set():
            raise TaskCancelled("cancelled")
        if spec.mode is Mode.VIDEO and video is not None:
            spec = spec.with_duration(clip_seconds(video))
        job = Job(
            task_id=payload["task_id"],
            spec=spec,
            seed=int(payload["seed"]),
            images=images,
            video=video,
            output_path=Path(payload["output_path"]),
            preview=preview if payload.get("previews", True) else None,
        )
        started = time.monotonic()
        result = engine.generate(job, progress, cancel.is_set)
        info = dict(result.info)
        info.setdefault("engine", engine.name)
        info["generate_seconds"] = round(time.monotonic() - started, 3)
        return (
            "done",
            {
                "frames": result.frames,
                "width": result.width,
                "height": result.height,
                "fps": result.fps,
                "duration": spec.duration,
                "info": info,
            },
        )
    except TaskCancelled:
        return ("error", "cancelled", "cancelled")
    except EngineBroken:
        raise
    except BadInput as exc:
        # A transient one (HTTP 503, a refused connection) fails the attempt, not the task.
        return ("error", "transient" if exc.retryable else "input", str(exc))
    except GenerationError as exc:
        return ("error", "engine", str(exc))
    except MemoryError:
        return ("error", "engine", "the engine ran out of memory")
    except Exception as exc:
        log.error("task %s: engine error\n%s", payload["task_id"], traceback.format_exc())
        # The user sees the error, not this machine's directories.
        detail = str(exc)
        scratch = Path(payload["output_path"]).parent  # the result is written beside workdir
        for place in (workdir, scratch):
            for prefix in sorted({str(place.resolve()), str(place)}, key=len, reverse=True):
                detail = detail.replace(prefix + "/", "").replace(prefix, "")
        return ("error", "engine", f"generation failed: {type(exc).__name__}: {detail}")
