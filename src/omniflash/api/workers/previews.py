"""``POST /worker/v1/tasks/{id}/previews?epoch=E``: a remote worker's preview frame.

The body is the image itself (WebP or JPEG), at most ``MAX_PREVIEW_BYTES``.  The lease is
checked exactly as a heartbeat's: another token's task is a 404, a stale epoch answers
``{"held": false}`` and stores nothing.  The image must decode, at most
``MAX_PREVIEW_WIDTH`` wide and ``MAX_PREVIEW_HEIGHT`` high (a 9:16 preview is taller than
wide); the server reads its size from the image, not from the worker.  It is stored as
the task's next preview blob and ``preview`` event (``worker.source.store_preview``).
"""

from __future__ import annotations

import io
import warnings

from fastapi import APIRouter, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from omniflash.api.bodies import PREVIEW_BYTES
from omniflash.api.deps import Services, ServicesDep
from omniflash.api.workers.bodies import EpochQuery
from omniflash.api.workers.routes import WorkerDep, _held, _holds, _lease, _task
from omniflash.errors import InvalidRequest
from omniflash.store import WorkerInfo
from omniflash.worker.source import PREVIEW_TYPES, store_preview

__all__ = [
    "MAX_PREVIEW_BYTES",
    "MAX_PREVIEW_HEIGHT",
    "MAX_PREVIEW_WIDTH",
    "preview_image",
    "router",
]

router = APIRouter(prefix="/worker/v1", include_in_schema=False)

MAX_PREVIEW_BYTES = PREVIEW_BYTES
MAX_PREVIEW_WIDTH = 320
MAX_PREVIEW_HEIGHT = 640


def preview_image(data: bytes) -> tuple[str, int, int]:
    """The format, width and height of a preview frame; ``InvalidRequest`` (400) when it
    is not a WebP or JPEG image that decodes, or is larger than a preview may be."""
    if not data:
        raise InvalidRequest("The preview is empty: send the image as the request body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image_format = str(image.format)
            width, height = image.size
            if image_format in PREVIEW_TYPES and (
                width <= MAX_PREVIEW_WIDTH and height <= MAX_PREVIEW_HEIGHT
            ):
                image.load()  # the whole image decodes, not only its header
    except Exception as exc:  # PIL raises many kinds for bytes that are not an image
        raise InvalidRequest("The preview is not an image that decodes (WebP or JPEG)") from exc
    if image_format not in PREVIEW_TYPES:
        raise InvalidRequest(f"The preview is {image_format}; send WebP or JPEG")
    if width > MAX_PREVIEW_WIDTH or height > MAX_PREVIEW_HEIGHT:
        raise InvalidRequest(
            f"The preview is {width}x{height}; at most {MAX_PREVIEW_WIDTH} wide and "
            f"{MAX_PREVIEW_HEIGHT} high"
        )
    return image_format, width, height


def _store(services: Services, task_id: str, epoch: int, data: bytes, worker: WorkerInfo) -> bool:
    task = _task(services, task_id, worker)
    image_format, width, height = preview_image(data)
    if not _holds(task, epoch):
        return False
    return store_preview(
        services.store,
        services.storage,
        _lease(task, epoch),
        data,
        width=width,
        height=height,
        image_format=image_format,
        worker_id=worker.id,
    )


@router.post("/tasks/{task_id}/previews")
async def add_preview(
    task_id: str, epoch: EpochQuery, request: Request, worker: WorkerDep, services: ServicesDep
) -> dict[str, bool]:
    """Store a preview frame of the task under this lease: ``held``."""
    await run_in_threadpool(_task, services, task_id, worker)  # another's task: 404 first
    data = await request.body()  # BodyLimit bounds it to MAX_PREVIEW_BYTES as it streams
    return _held(await run_in_threadpool(_store, services, task_id, epoch, data, worker))
