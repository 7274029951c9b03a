"""A submit's inputs made the task's own: the two steps between the parsed spec and the
store's submit, for every dialect.

- An inline image (a ``data:image/…;base64,`` URI) is refused past the upload limit
  (``check_inline_sizes``, before anything is charged or written), then decoded into a
  blob (``store_inline_inputs``).
- An image named by one of this server's upload URLs (``/v1/files/uploads/…``, signed) is
  copied from its upload (``own_upload_inputs``): workers, in-process or remote, read it
  from storage and never fetch this server over the network (which may be a private
  address they refuse).

Either way the spec keeps a ``blob:inputs/…`` reference (``omniflash.input_blobs``) in the
image's place, so a task row holds a few bytes per image, and the copy is the task's:
it lives and is swept with the task, whatever becomes of the upload.  ``own_inputs`` runs
both steps under one prefix; ``submission.submit_spec`` calls it and deletes what it wrote
when no task is made of it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from omniflash.contract import GenerationSpec
from omniflash.data_uris import decoded, image_subtype, inline_size, is_data_uri
from omniflash.errors import InvalidRequest, PayloadTooLarge
from omniflash.image_types import sniff_image
from omniflash.input_blobs import BLOB_SCHEME, image_label

if TYPE_CHECKING:
    from omniflash.blobs import Storage, UrlSigner

__all__ = [
    "UPLOADS",
    "check_inline_sizes",
    "own_inputs",
    "own_upload_inputs",
    "store_inline_inputs",
]

UPLOADS = "uploads/"
"""Blob keys of uploaded images start with this."""
_FILES = "/v1/files/"


def check_inline_sizes(spec: GenerationSpec, limit: int) -> None:
    """Refuse, with ``PayloadTooLarge``, an inline image larger than ``limit`` bytes: the
    same limit as an uploaded one, checked at submit rather than when a worker decodes it."""
    for index, url in enumerate(spec.image_urls):
        if is_data_uri(url) and inline_size(url) > limit:
            raise PayloadTooLarge(
                f"{image_label(index)}: the inline image is larger than "
                f"{limit / (1024 * 1024):.3g} MB"
            )


def _inline_blob(url: str, storage: Storage, key: str) -> str:
    subtype = image_subtype(url) or "bin"
    key = f"{key}.{''.join(c for c in subtype if c.isalnum())[:8] or 'bin'}"
    storage.put_bytes(key, decoded(url.partition(",")[2]), f"image/{subtype}")
    return key


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


def _upload_blob(source: str, storage: Storage, key: str, label: str) -> str:
    if not storage.exists(source):
        raise InvalidRequest(f"{label}: this upload no longer exists")
    data = b"".join(storage.iter_bytes(source))
    media_type, extension = sniff_image(data[:16]) or ("application/octet-stream", "bin")
    key = f"{key}.{extension}"
    storage.put_bytes(key, data, media_type)
    return key


def _owned(
    spec: GenerationSpec, storage: Storage, own: Callable[[int, str], str | None]
) -> tuple[GenerationSpec, list[str]]:
    """``spec`` with each image that ``own(index, url)`` stored (returning the blob it
    wrote, or ``None`` to leave the URL as it is) replaced by its ``blob:`` reference.

    Returns the new spec and the blobs written; when one fails, those already written
    are deleted again.
    """
    urls = list(spec.image_urls)
    written: list[str] = []
    try:
        for index, url in enumerate(spec.image_urls):
            blob = own(index, url)
            if blob is not None:
                written.append(blob)
                urls[index] = BLOB_SCHEME + blob
    except BaseException:
        for blob in written:
            storage.delete(blob)
        raise
    if not written:
        return spec, []
    return dataclasses.replace(spec, image_urls=tuple(urls)), written


def store_inline_inputs(
    spec: GenerationSpec, storage: Storage, prefix: str
) -> tuple[GenerationSpec, list[str]]:
    """Move inline (``data:``) images into blob storage under ``prefix``.

    Returns the spec with ``blob:`` references in their place, and the keys written.  The
    contract has validated the URIs, and ``check_inline_sizes`` their sizes, already.
    """

    def own(index: int, url: str) -> str | None:
        if not is_data_uri(url):
            return None
        return _inline_blob(url, storage, f"{prefix}/{index}")

    return _owned(spec, storage, own)


def own_upload_inputs(
    spec: GenerationSpec, storage: Storage, signer: UrlSigner, prefix: str
) -> tuple[GenerationSpec, list[str]]:
    """Copy images named by this server's upload URLs to ``prefix``; ``blob:`` in their place.

    Returns the new spec and the keys written, like ``store_inline_inputs``.
    """

    def own(index: int, url: str) -> str | None:
        source = _upload_key(url, signer, image_label(index))
        if source is None:
            return None
        return _upload_blob(source, storage, f"{prefix}/{index}", image_label(index))

    return _owned(spec, storage, own)


def own_inputs(
    spec: GenerationSpec, storage: Storage, signer: UrlSigner, prefix: str
) -> tuple[GenerationSpec, list[str]]:
    """Both steps: inline images, then this server's upload URLs, stored under ``prefix``.

    Returns the spec the store is given and every blob written (the caller deletes them
    when no task is made of them); when a step fails, nothing written here is left.
    """
    spec, written = store_inline_inputs(spec, storage, prefix)
    try:
        spec, copied = own_upload_inputs(spec, storage, signer, prefix)
    except BaseException:
        for blob in written:
            storage.delete(blob)
        raise
    return spec, written + copied
