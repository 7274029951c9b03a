"""Images for ``generate``: URLs pass through; local files and bytes become ``data:`` URIs."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TypeAlias

from omniflash.client.errors import InputError

__all__ = ["ImageInput", "data_uri", "image_reference", "sniff_image_type"]

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes"
"""An ``http(s)://`` URL, a ``data:`` URI, a local path, or the image's bytes."""

MAX_IMAGE_BYTES = 20 * 1024 * 1024


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type from an image's first bytes, or ``None`` when it is not a known image.

    >>> sniff_image_type(b"\\x89PNG\\r\\n\\x1a\\n...")
    'image/png'
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:2] == b"BM":
        return "image/bmp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "image/heic"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def data_uri(content: bytes, *, source: str = "image bytes") -> str:
    """``content`` as a base64 ``data:`` URI with its sniffed type."""
    if len(content) > MAX_IMAGE_BYTES:
        raise InputError(f"{source} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    mime = sniff_image_type(content[:16])
    if mime is None:
        raise InputError(f"{source} is not a PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF or HEIC image")
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def image_reference(image: str | os.PathLike[str] | bytes) -> str:
    """What goes into ``image_urls``: the URL itself, or the file's or bytes' data URI."""
    if isinstance(image, bytes | bytearray | memoryview):
        return data_uri(bytes(image))
    if isinstance(image, str) and image.split(":", 1)[0].lower() in ("http", "https", "data"):
        return image
    path = Path(image)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from exc
    return data_uri(content, source=f"image {str(path)!r}")
