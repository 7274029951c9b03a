"""Result downloads by signed, expiring URL; no API key needed.

``GET`` and ``HEAD`` on ``/v1/files/{key}?expires=…&sig=…`` answer from any backend: a
local file is sent as a file (ranges, ``ETag``); any other blob is streamed from storage,
honouring one ``Range`` (``206``, ``Content-Range``).  ``byte_range`` is the sans-I/O
part: the range a header asks of a blob of a given size.
"""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from omniflash.api.deps import ServicesDep
from omniflash.api.intake import UPLOADS
from omniflash.api.omni.errors import seed_error
from omniflash.blobs import Storage, StorageUnavailable
from omniflash.errors import (
    Forbidden,
    NotFound,
    OmniflashError,
    RangeNotSatisfiable,
    ServiceUnavailable,
)
from omniflash.image_types import by_extension
from omniflash.store import PREVIEWS_PREFIX

__all__ = ["NOSNIFF", "byte_range", "router"]

router = APIRouter()
PATH = "/v1/files/{blob_key:path}"
MEDIA_TYPE = "video/mp4"
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
"""On every served blob: a browser takes the type we judged from the bytes, and never
sniffs an uploaded image that is also HTML (a polyglot) into a page of this origin."""


def _media(blob_key: str) -> tuple[str, str]:
    """The media type and download filename of a blob: uploaded images (``uploads/…``)
    and preview frames (``previews/…``) keep their type; every other blob is a video."""
    stem, _, ext = blob_key.rsplit("/", 1)[-1].partition(".")
    image = by_extension(ext) if blob_key.startswith((UPLOADS, PREVIEWS_PREFIX)) else None
    if image is not None:
        return image.media_type, f"{stem}.{ext}"
    return MEDIA_TYPE, stem + ".mp4"


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` bytes a ``Range`` header asks for; ``None``: all.

    One range only: several ranges, other units or a malformed header get the whole
    file, as RFC 9110 lets a server do.  A range that starts past the end raises
    ``RangeNotSatisfiable``::

        >>> byte_range("bytes=0-99", 1000), byte_range("bytes=900-", 1000)
        ((0, 99), (900, 999))
        >>> byte_range("bytes=-100", 1000), byte_range("bytes=500-5000", 1000)
        ((900, 999), (500, 999))
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size=size)
        return max(0, size - suffix), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size=size)
    return start, end


def _unavailable() -> OmniflashError:
    return ServiceUnavailable("The file store cannot be reached just now; try again shortly")


@router.get(PATH, summary="Download a result by its signed URL")
def download(
    blob_key: str, request: Request, services: ServicesDep, expires: int = 0, sig: str = ""
) -> Response:
    """No API key needed: the signature is the permission, until it expires."""
    if not sig or not services.signer.verify(blob_key, expires, sig, now=time.time()):
        raise Forbidden()
    storage = services.storage
    headers = {
        "Cache-Control": f"private, max-age={max(0, int(expires - time.time()))}",
        **NOSNIFF,
    }
    media_type, filename = _media(blob_key)
    try:
        path = storage.local_path(blob_key)
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(blob_key)
            return FileResponse(
                path,
                media_type=media_type,
                filename=filename,
                headers=headers,
                content_disposition_type="inline",
            )
        size = storage.size(blob_key)
    except (FileNotFoundError, ValueError) as exc:
        raise NotFound("This result file no longer exists") from exc
    except StorageUnavailable as exc:
        raise _unavailable() from exc
    headers["Content-Disposition"] = f'inline; filename="{filename}"'
    return _streamed(storage, blob_key, size, request, headers, media_type)


def _streamed(
    storage: Storage,
    key: str,
    size: int,
    request: Request,
    headers: dict[str, str],
    media_type: str = MEDIA_TYPE,
) -> Response:
    """The blob, or the one range asked for, streamed from storage (no body for ``HEAD``)."""
    headers["Accept-Ranges"] = "bytes"
    # Without the object's validators at hand, a conditional range gets the whole file.
    asked = None if "if-range" in request.headers else request.headers.get("range")
    try:
        span = byte_range(asked, size)
    except RangeNotSatisfiable as exc:
        return seed_error(exc, headers=headers)
    status, (start, end) = 200, (0, size - 1)
    if span is not None:
        status, (start, end) = 206, span
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        storage.iter_bytes(key, start, end),
        status_code=status,
        headers=headers,
        media_type=media_type,
    )


# HEAD answers like GET without the body (``curl -I``, download managers); kept out of
# the schema, where it would repeat GET's operation.
router.add_api_route(PATH, download, methods=["HEAD"], include_in_schema=False)
