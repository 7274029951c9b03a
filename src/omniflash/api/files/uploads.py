"""Image uploads: ``POST /v1/uploads/images`` (and the MCP ``upload_image`` tool).

An upload is a blob (``uploads/<id>.<ext>``) with a signed URL that needs no key and
lasts ``Settings.upload_ttl_s`` (72 h).  Its type is judged from its first bytes (JPEG,
PNG, GIF, WebP: ``omniflash.image_types.sniff_image``), never from its name or header,
and no imaging library is loaded.  When a submit names such a URL in ``image_urls``,
the API's intake (``omniflash.api.intake``) copies it to the task's own inputs.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from omniflash.api.deps import Services, ServicesDep, Uploader
from omniflash.api.intake import UPLOADS
from omniflash.api.omni.apimart import with_request_id
from omniflash.api.responses import JSONResponse
from omniflash.errors import InvalidRequest, UploadTooLarge
from omniflash.ids import ulid
from omniflash.image_types import sniff_image
from omniflash.text import check_text

__all__ = ["router", "store_upload"]

router = APIRouter(tags=["Uploads"])
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _filename(given: str | None, ext: str) -> str:
    stem = _NAME.sub("-", (given or "").rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("-.")
    return f"{stem[:100] or 'image'}.{ext}"


async def _read_file(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The ``file`` field's bytes and name.  ``BodyLimit`` has bounded the whole body (the
    file and its envelope), so no more than that reaches the form's spooled file."""
    too_large = UploadTooLarge(f"The image is larger than {limit // (1024 * 1024)} MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Send the image as multipart/form-data with one `file` field")
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The multipart body needs one `file` field holding the image")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise too_large
        return data, upload.filename
    finally:
        await form.close()


def store_upload(
    services: Services, data: bytes, given: str | None, base_url: str
) -> dict[str, Any]:
    """Check and store an uploaded image; its answer (without ``request_id``). Blocking.

    The HTTP route and the MCP ``upload_image`` tool both call this.
    """
    settings = services.settings
    if given:
        check_text(given, "filename")
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(
            f"The image is larger than {settings.max_upload_bytes // (1024 * 1024)} MB"
        )
    kind = sniff_image(data[:16])
    if kind is None:
        raise InvalidRequest("The file is not an image: upload a JPEG, PNG, GIF or WebP")
    content_type, ext = kind
    blob = f"{UPLOADS}{ulid()}.{ext}"
    services.storage.put_bytes(blob, data, content_type)
    now = int(time.time())
    expires_at = now + settings.upload_ttl_s
    return {
        "url": base_url.rstrip("/") + services.signer.path(blob, expires_at),
        "filename": _filename(given, ext),
        "content_type": content_type,
        "bytes": len(data),
        "created_at": now,
        "expires_at": expires_at,
    }


@router.post("/v1/uploads/images", summary="Upload an image; answers a signed URL for image_urls")
async def upload_image(request: Request, key: Uploader, services: ServicesDep) -> JSONResponse:
    """Multipart ``file``: JPEG, PNG, GIF or WebP, judged from its bytes."""
    data, given = await _read_file(request, services.settings.max_upload_bytes)
    body = await run_in_threadpool(store_upload, services, data, given, services.base_url(request))
    return JSONResponse(with_request_id(body))
