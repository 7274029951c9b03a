"""A task's inputs kept as blobs: the ``blob:`` references a spec holds instead of data.

Images sent inline (``data:`` URIs) are moved into blob storage at submit, and the spec
keeps ``blob:inputs/…`` in their place, so a task row holds a few bytes per image
rather than megabytes of base64.  Workers download these blobs before the engine runs
(``omniflash.worker.source``); the sweep deletes them with the task's other files.

This module is light on purpose (no imaging libraries): the API process imports it.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import TYPE_CHECKING

from omniflash.contract import GenerationSpec
from omniflash.errors import PayloadTooLarge

if TYPE_CHECKING:
    from omniflash.blobs import Storage

__all__ = [
    "BLOB_SCHEME",
    "VIDEO_LABEL",
    "blob_inputs",
    "check_inline_sizes",
    "image_label",
    "inline_size",
    "store_inline_inputs",
]

VIDEO_LABEL = "video_urls[0]"


def image_label(index: int) -> str:
    return f"image_urls[{index}]"


BLOB_SCHEME = "blob:"
"""An input URL ``blob:inputs/…`` names a blob the server stored at submit."""


def blob_inputs(spec: GenerationSpec) -> dict[str, str]:
    """The inputs stored as blobs, by label: ``{"image_urls[0]": "inputs/…/0.png", …}``."""
    found = {
        image_label(i): url[len(BLOB_SCHEME) :]
        for i, url in enumerate(spec.image_urls)
        if url.startswith(BLOB_SCHEME)
    }
    if spec.video_url and spec.video_url.startswith(BLOB_SCHEME):
        found[VIDEO_LABEL] = spec.video_url[len(BLOB_SCHEME) :]
    return found


def inline_size(url: str) -> int:
    """The bytes a ``data:…;base64,`` URI decodes to, counted without decoding it::

    >>> inline_size("data:image/png;base64,AAAA"), inline_size("data:image/png;base64,AA==")
    (3, 1)
    """
    payload = url.partition(",")[2].rstrip("= \t\r\n")
    return len(payload) * 3 // 4


def check_inline_sizes(spec: GenerationSpec, limit: int) -> None:
    """Refuse, with ``PayloadTooLarge``, an inline image larger than ``limit`` bytes: the
    same limit as an uploaded one, checked at submit rather than when a worker decodes it."""
    for index, url in enumerate(spec.image_urls):
        if url[:5].lower() == "data:" and inline_size(url) > limit:
            raise PayloadTooLarge(
                f"{image_label(index)}: the inline image is larger than "
                f"{limit / (1024 * 1024):.3g} MB"
            )


def _decoded(payload: str) -> bytes:
    """Base64 decoded a slice at a time: one call on a 20 MB image would hold the GIL, and
    with it the API's event loop, for most of a tenth of a second.  The contract has
    checked that the payload is strict base64, so slices of whole quanta decode alike."""
    step = 1024 * 1024  # a multiple of 4
    return b"".join(
        base64.b64decode(payload[start : start + step]) for start in range(0, len(payload), step)
    )


def store_inline_inputs(
    spec: GenerationSpec, storage: Storage, prefix: str
) -> tuple[GenerationSpec, list[str]]:
    """Move inline (``data:``) images into blob storage under ``prefix``.

    Returns the spec with ``blob:`` references in their place, and the keys written, so
    that a task row holds a few bytes per image instead of megabytes of base64.  The
    contract has validated the URIs, and ``check_inline_sizes`` their sizes, already.
    When storing one fails, those already stored are deleted again.
    """
    urls: list[str] = []
    written: list[str] = []
    try:
        for index, url in enumerate(spec.image_urls):
            if url[:5].lower() != "data:":
                urls.append(url)
                continue
            header, _, payload = url.partition(",")
            subtype = header[len("data:image/") :].split(";", 1)[0].lower() or "bin"
            key = f"{prefix}/{index}.{''.join(c for c in subtype if c.isalnum())[:8] or 'bin'}"
            storage.put_bytes(key, _decoded(payload), f"image/{subtype}")
            written.append(key)
            urls.append(BLOB_SCHEME + key)
    except BaseException:
        for blob in written:
            storage.delete(blob)
        raise
    if not written:
        return spec, []
    return dataclasses.replace(spec, image_urls=tuple(urls)), written
