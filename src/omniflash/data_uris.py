"""Inline images: the ``data:image/…;base64,`` URIs a request may hold in ``image_urls``.

The one pattern of such a URI, the strict check of its base64, its size counted without
decoding it, and its decoding, a slice at a time.  Pure functions, no I/O; the contract
checks the URIs, the API's intake stores them as blobs::

    >>> is_data_image("data:image/png;base64,AAAA"), inline_size("data:image/png;base64,AA==")
    (True, 1)
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = [
    "DATA_IMAGE",
    "decoded",
    "image_subtype",
    "inline_size",
    "is_data_image",
    "is_data_uri",
    "valid_base64",
]

# URI schemes and MIME types are case-insensitive (RFC 3986, RFC 2045); the fetcher agrees.
DATA_IMAGE = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII | re.IGNORECASE)
_STEP = 1024 * 1024
"""Base64 is checked and decoded in slices of this many characters (a multiple of 4): one
call on a 20 MB image would hold the GIL, and with it the API's event loop, for a tenth
of a second."""


def is_data_uri(url: str) -> bool:
    """Whether ``url`` is a ``data:`` URI at all (any case)."""
    return url[:5].lower() == "data:"


def is_data_image(value: str) -> bool:
    """Whether ``value`` is a ``data:image/…;base64,`` URI with strict, non-empty base64."""
    if not DATA_IMAGE.match(value):
        return False
    payload = value.split(",", 1)[1]
    return len(payload) > 0 and valid_base64(payload)


def valid_base64(payload: str) -> bool:
    """Strict base64, checked a slice at a time."""
    if payload.find("=", 0, len(payload) - 2) != -1:
        return False  # padding only at the end, as one strict decode of the whole wants
    ends = list(range(_STEP, len(payload), _STEP))
    if ends and len(payload) - ends[-1] < 4:
        ends.pop()  # the padding stays with the data before it
    starts = [0, *ends]
    try:
        for start, end in zip(starts, [*ends, len(payload)], strict=True):
            base64.b64decode(payload[start:end], validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def inline_size(url: str) -> int:
    """The bytes a ``data:…;base64,`` URI decodes to, counted without decoding it::

    >>> inline_size("data:image/png;base64,AAAA"), inline_size("data:image/png;base64,AA==")
    (3, 1)
    """
    payload = url.partition(",")[2].rstrip("= \t\r\n")
    return len(payload) * 3 // 4


def image_subtype(url: str) -> str:
    """The ``png`` of ``data:image/png;base64,…`` (lower case; empty when it has none)."""
    header = url.partition(",")[0]
    return header[len("data:image/") :].split(";", 1)[0].lower()


def decoded(payload: str) -> bytes:
    """Base64 decoded a slice at a time; the payload has been checked as strict base64
    (``valid_base64``), so slices of whole quanta decode alike."""
    return b"".join(
        base64.b64decode(payload[start : start + _STEP]) for start in range(0, len(payload), _STEP)
    )
