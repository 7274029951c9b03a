"""Result downloads by signed, expiring URL; no API key needed."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import FileResponse

from omniflash.api.deps import ServicesDep
from omniflash.errors import Forbidden, NotFound

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/files/{blob_key:path}", summary="Download a result by its signed URL")
def download(blob_key: str, services: ServicesDep, expires: int = 0, sig: str = "") -> FileResponse:
    """No API key needed: the signature is the permission, until it expires."""
    if not sig or not services.signer.verify(blob_key, expires, sig, now=time.time()):
        raise Forbidden()
    try:
        path = services.storage.local_path(blob_key)
    except ValueError as exc:
        raise NotFound("This result file no longer exists") from exc
    if path is None or not path.is_file():
        raise NotFound("This result file no longer exists")
    max_age = max(0, int(expires - time.time()))
    return FileResponse(
        path,
        media_type="video/mp4",
        filename=blob_key.rsplit("/", 1)[-1].split(".", 1)[0] + ".mp4",
        headers={"Cache-Control": f"private, max-age={max_age}"},
        content_disposition_type="inline",
    )
