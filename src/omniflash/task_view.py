"""A task as clients see it: the seed's ``GET /v1/tasks/{id}`` body, the one view that every
dialect and the webhook events start from."""

from __future__ import annotations

from typing import Any

from omniflash.blobs import Storage, UrlSigner
from omniflash.pricing import Pricing, credits
from omniflash.store import TaskRow, TaskStatus

__all__ = ["number", "task_public"]


def number(value: float) -> int | float:
    """A whole number as an ``int`` (written ``4``), a fraction unchanged (``0.4``)."""
    return int(value) if float(value).is_integer() else value


def task_public(
    task: TaskRow,
    *,
    base_url: str,
    signer: UrlSigner,
    pricing: Pricing,
    presigner: Storage | None = None,
) -> dict[str, Any]:
    """``GET /v1/tasks/{id}``'s ``data``: the seed's fields, then a few documented extras.

    A result's URL is the API's signed download URL, or, given a ``presigner`` (the
    storage, when ``OMNIFLASH_PRESIGN_RESULTS`` is on), the bucket's own presigned URL;
    either expires at the result's ``expires_at``.
    """
    completed = int(task.completed_at) if task.completed_at is not None else None
    created = int(task.created_at)
    data: dict[str, Any] = {
        "id": task.id,
        "status": task.status.value,
        "progress": task.progress,
        "created": created,
        "completed": completed,
        "actual_time": completed - created if completed is not None else None,
        "estimated_time": task.estimated_time,
        "cost": number(pricing.cost(task.credits)),
        "credits_cost": number(credits(task.credits)),
    }
    if task.status is TaskStatus.COMPLETED and task.result_key and task.result_expires_at:
        expires_at = int(task.result_expires_at)
        url = presigner.presigned_url(task.result_key, expires_at) if presigner else None
        if url is None:
            url = base_url.rstrip("/") + signer.path(task.result_key, expires_at)
        data["result"] = {"videos": [{"url": [url], "expires_at": expires_at}]}
    elif task.status is TaskStatus.FAILED:
        data["error"] = {"message": task.error or "generation failed", "code": "task_failed"}
    elif task.status is TaskStatus.CANCELLED:
        data["error"] = {"message": task.error or "cancelled", "code": "task_cancelled"}
    spec = task.spec
    data["request"] = {
        "model": "Omni-Flash-Ext",
        "prompt": spec.prompt,
        "mode": spec.mode.value,
        "duration": spec.duration,
        "resolution": spec.resolution,
        "aspect_ratio": spec.aspect_ratio,
        "width": spec.width,
        "height": spec.height,
        "image_count": len(spec.image_urls),
        "video_count": 1 if spec.video_url else 0,
        "seed": task.seed,
    }
    return data
