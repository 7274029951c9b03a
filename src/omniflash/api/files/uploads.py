"""Image uploads: ``POST /v1/uploads/images``, and this server's upload URLs used as inputs.

An upload is a blob (``uploads/<id>.<ext>``) with a signed URL that needs no key and
lasts ``Settings.upload_ttl_s`` (72 h).  Its type is judged from its first bytes (JPEG,
PNG, GIF, WebP), never from its name or header, and no imaging library is loaded::

    >>> sniff_image(b"\\x89PNG\\r\\n\\x1a\\n...")
    ('image/png', 'png')

When a submit names such a URL in ``image_urls``, ``own_upload_inputs`` (called by
``submission.submit_spec``, for every dialect) copies the blob to the task's own inputs
and puts a ``blob:`` reference in its place: workers, in-process or remote, read it from
storage and never fetch this server over the network (which may be a private address
they refuse).  The copy is the task's, so it lives and is swept with the task,
whatever becomes of the upload.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from omniflash.api.deps import Services, ServicesDep, Uploader
from omniflash.api.omni.apimart import with_request_id
from omniflash.api.responses import JSONResponse
from omniflash.errors import InvalidRequest, UploadTooLarge
from omniflash.ids import ulid
from omniflash.input_blobs import BLOB_SCHEME, image_label
from omniflash.text import check_text

if TYPE_CHECKING:
    from omniflash.blobs import Storage, UrlSigner
    from omniflash.contract import GenerationSpec

__all__ = [
    "UPLOADS",
    "own_upload_inputs",
    "router",
    "sniff_image",
    "store_upload",
]

router = APIRouter(tags=["Uploads"])
UPLOADS = "uploads/"
"""Blob keys of uploaded images start with this."""
_FILES = "/v1/files/"
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def sniff_image(head: bytes) -> tuple[str, str] | None:
    """``(content type, extension)`` of an image by its magic bytes, or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif", "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None


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


def _upload_key(url: str, signer: UrlSigner, label: str) -> str | None:
    """The blob an upload URL of this server names; ``None`` for any other URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or _FILES + UPLOADS not in parts.path:
        return None
    key = unquote(parts.path.split(_FILES, 1)[1])
    query = parse_qs(parts.query)
    expires, sig = query.get("expires", [""])[0], query.get("sig", [""])[0]
    # The query is the client's text: ``"²".isdigit()`` holds, and ``int`` refuses
    # thousands of digits; a signer's expiry is a plain number of at most 19 digits.
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 19) or not sig:
        return None
    if not signer.verify(key, int(expires), sig, now=time.time()):
        if signer.verify(key, int(expires), sig, now=0):
            raise InvalidRequest(f"{label} is an upload URL that has expired: upload it again")
        return None  # another server's URL of the same shape: fetched like any URL
    return key


def own_upload_inputs(
    spec: GenerationSpec, storage: Storage, signer: UrlSigner, prefix: str
) -> tuple[GenerationSpec, list[str]]:
    """Copy images named by this server's upload URLs to ``prefix``; ``blob:`` in their place.

    Returns the new spec and the keys written (the caller deletes them when no task is
    made of them), like ``inputs.store_inline_inputs``.
    """
    urls = list(spec.image_urls)
    written: list[str] = []
    try:
        for index, url in enumerate(spec.image_urls):
            source = _upload_key(url, signer, image_label(index))
            if source is None:
                continue
            if not storage.exists(source):
                raise InvalidRequest(f"{image_label(index)}: this upload no longer exists")
            data = b"".join(storage.iter_bytes(source))
            kind = sniff_image(data[:16]) or ("application/octet-stream", "bin")
            target = f"{prefix}/{index}.{kind[1]}"
            storage.put_bytes(target, data, kind[0])
            written.append(target)
            urls[index] = BLOB_SCHEME + target
    except BaseException:
        for blob in written:
            storage.delete(blob)
        raise
    if not written:
        return spec, []
    return dataclasses.replace(spec, image_urls=tuple(urls)), written
