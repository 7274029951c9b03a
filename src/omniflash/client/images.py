"""Images for ``generate``: URLs pass through; local files and bytes become ``data:`` URIs.

An omniflash server decodes PNG, JPEG, WebP, GIF, BMP, TIFF and AVIF (the formats of
``omniflash.media.decode``).  Anything else, HEIC above all (what phones save), is
refused here, before the submit: the server would charge, fail the task and refund it.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import TypeAlias

from omniflash.client.errors import InputError

__all__ = [
    "ACCEPTED_TYPES",
    "UPLOAD_TYPES",
    "ImageInput",
    "data_uri",
    "image_reference",
    "is_url",
    "sniff_image_type",
    "upload_content",
]

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes"
"""An ``http(s)://`` URL, a ``data:`` URI, a local path, or the image's bytes."""

MAX_IMAGE_BYTES = 20 * 1024 * 1024
ACCEPTED_TYPES = (
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "image/avif",
)
"""The image types an omniflash server decodes; ``data_uri`` refuses every other."""
UPLOAD_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
"""The image types ``POST /v1/uploads/images`` takes."""
ACCEPTED_NAMES = "PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF"
# Enough of the head for an ISO-BMFF ``ftyp`` box and its list of compatible brands.
HEAD_BYTES = 64
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_TIFF_PREFIXES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _ftyp_brands(head: bytes) -> set[bytes]:
    """The major and compatible brands of an ISO-BMFF ``ftyp`` box at the start of ``head``."""
    if head[4:8] != b"ftyp":
        return set()
    size = int.from_bytes(head[:4], "big")
    end = min(max(size, 16), len(head))
    brands = {head[8:12]}
    brands.update(head[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type from an image's first bytes, or ``None`` when it is not a known image.

    HEIC/HEIF is recognised (as ``image/heic``) so that it can be refused by name.

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
    if head.startswith(_TIFF_PREFIXES):
        return "image/tiff"
    brands = _ftyp_brands(head)
    if brands & _AVIF_BRANDS:
        return "image/avif"
    if brands & _HEIF_BRANDS:
        return "image/heic"
    return None


def _refusal(mime: str | None, source: str) -> InputError | None:
    if mime in ACCEPTED_TYPES:
        return None
    if mime == "image/heic":
        return InputError(
            f"{source} is HEIC/HEIF, which the server cannot decode; "
            f"convert it to JPEG or PNG (it takes {ACCEPTED_NAMES})"
        )
    return InputError(f"{source} is not a {ACCEPTED_NAMES} image")


def data_uri(content: bytes, *, source: str = "image bytes") -> str:
    """``content`` as a base64 ``data:`` URI with its sniffed type.

    Raises ``InputError`` for an image the server would refuse (HEIC, or not an image).
    """
    if len(content) > MAX_IMAGE_BYTES:
        raise InputError(f"{source} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    mime = sniff_image_type(content[:HEAD_BYTES])
    refusal = _refusal(mime, source)
    if refusal is not None:
        raise refusal
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def _check_data_uri(uri: str, source: str) -> None:
    """A ``data:`` URI given as is: its bytes, not its declared type, must be an accepted image."""
    _, _, encoded = uri.partition(",")
    # 88 base64 characters decode to 66 bytes, at least ``HEAD_BYTES``.
    head = encoded[:88].strip()
    try:
        decoded = base64.b64decode(head[: len(head) - len(head) % 4], validate=True)
    except (binascii.Error, ValueError):
        return  # the server words a malformed URI better than a guess here
    refusal = _refusal(sniff_image_type(decoded[:HEAD_BYTES]), source)
    if refusal is not None:
        raise refusal


def image_reference(image: str | os.PathLike[str] | bytes, *, index: int = 0) -> str:
    """What goes into ``image_urls``: the URL itself, or the file's or bytes' data URI."""
    if isinstance(image, bytes | bytearray | memoryview):
        return data_uri(bytes(image), source=f"image {index} (bytes)")
    if isinstance(image, str):
        scheme = image.split(":", 1)[0].lower()
        if scheme in ("http", "https"):
            return image
        if scheme == "data":
            _check_data_uri(image, f"image {index} (data URI)")
            return image
    path = Path(image)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from exc
    return data_uri(content, source=f"image {str(path)!r}")


def is_url(image: object) -> bool:
    """Whether ``image`` is an ``http(s)://`` URL or a ``data:`` URI (sent as it is)."""
    if not isinstance(image, str):
        return False
    return image.split(":", 1)[0].lower() in ("http", "https", "data")


def upload_content(
    image: str | os.PathLike[str] | bytes, filename: str | None = None
) -> tuple[str, bytes, str]:
    """``(filename, content, content type)`` of a local image to upload.

    Raises ``InputError`` for what the upload endpoint refuses: not JPEG, PNG, GIF or WebP,
    or larger than 20 MB.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        content, source = bytes(image), "image bytes"
    else:
        path = Path(image)
        source = f"image {str(path)!r}"
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from exc
        filename = filename or path.name
    if len(content) > MAX_IMAGE_BYTES:
        raise InputError(f"{source} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    mime = sniff_image_type(content[:HEAD_BYTES])
    if mime not in UPLOAD_TYPES:
        raise _refusal(mime, source) or InputError(
            f"{source} is {mime}: uploads take JPEG, PNG, GIF or WebP"
        )
    return filename or f"image.{UPLOAD_TYPES[mime]}", content, mime
