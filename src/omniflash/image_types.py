"""The image types the server knows: one table of names, media types and magic bytes.

Uploads are judged from their first bytes (``sniff_image``), never from a name or a
header; downloads of an uploaded image keep its type (``by_extension``); an image read
with Pillow becomes a data URI of its type (``by_pillow_format``).  Light on purpose (no
imaging libraries): the API process imports it.  (The SDK, ``omniflash.client.images``,
keeps a table of its own: it must not import the server.)

    >>> sniff_image(b"\\x89PNG\\r\\n\\x1a\\n...")
    ('image/png', 'png')
    >>> by_extension("jpg").media_type, by_pillow_format("JPEG").media_type
    ('image/jpeg', 'image/jpeg')
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["IMAGE_TYPES", "ImageType", "by_extension", "by_pillow_format", "sniff_image"]


class ImageType(NamedTuple):
    extension: str
    """The file name's extension for a blob of this type (``uploads/<id>.png``)."""
    media_type: str
    pillow_format: str
    """``PIL.Image.format`` of an image of this type."""
    uploadable: bool
    """Whether ``POST /v1/uploads/images`` takes it (judged by ``sniff_image``)."""


IMAGE_TYPES = (
    ImageType("jpg", "image/jpeg", "JPEG", uploadable=True),
    ImageType("png", "image/png", "PNG", uploadable=True),
    ImageType("gif", "image/gif", "GIF", uploadable=True),
    ImageType("webp", "image/webp", "WEBP", uploadable=True),
    ImageType("bmp", "image/bmp", "BMP", uploadable=False),
)
_BY_EXTENSION = {t.extension: t for t in IMAGE_TYPES}
_BY_PILLOW = {t.pillow_format: t for t in IMAGE_TYPES}


def by_extension(extension: str) -> ImageType | None:
    return _BY_EXTENSION.get(extension)


def by_pillow_format(name: str) -> ImageType | None:
    return _BY_PILLOW.get(name)


def _sniffed(head: bytes) -> str | None:
    """The extension of an uploadable image by its magic bytes."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def sniff_image(head: bytes) -> tuple[str, str] | None:
    """``(media type, extension)`` of an uploadable image by its magic bytes, or ``None``."""
    extension = _sniffed(head)
    if extension is None:
        return None
    return _BY_EXTENSION[extension].media_type, extension
