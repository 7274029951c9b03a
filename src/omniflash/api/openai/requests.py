"""The OpenAI dialect's wire rules: ``POST /v1/videos`` fields and a remix's body in, the
same ``GenerationSpec`` as the seed's out.

Pure functions, no I/O.  The fields are mapped onto the seed's body and checked by
``omniflash.contract``'s rules; errors are ``InvalidParam`` naming the field (OpenAI's
``param``)::

    >>> parse_openai_video_request({"prompt": "a cat", "size": "720x1280"}).height
    1280
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from omniflash.contract import (
    MAX_PROMPT_CHARS,
    MODEL_NAME,
    GenerationSpec,
    parse_callback_url,
    parse_generation_request,
)
from omniflash.errors import InvalidParam, InvalidRequest
from omniflash.text import check_tree, shown

__all__ = [
    "OPENAI_SECONDS",
    "OPENAI_SIZES",
    "parse_openai_video_request",
    "parse_remix_request",
]

OPENAI_SECONDS = ("4", "6", "8", "10")
OPENAI_SIZES: Mapping[str, tuple[str, str]] = {
    "1280x720": ("720p", "16:9"),
    "720x1280": ("720p", "9:16"),
    "1920x1080": ("1080p", "16:9"),
    "1080x1920": ("1080p", "9:16"),
    "3840x2160": ("4k", "16:9"),
    "2160x3840": ("4k", "9:16"),
}
_OPENAI_PARAMS = (("image_urls", "input_reference"), ("prompt", "prompt"), ("seed", "seed"))
OPENAI_DEFAULT_SECONDS = "4"
OPENAI_DEFAULT_SIZE = "1280x720"


_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)


def _choice(value: object) -> str:
    """A multipart string or a JSON string or integer, as the text of a choice (``"4"``)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() <= 64:
        return str(value)
    return ""


def parse_openai_video_request(
    fields: Mapping[str, Any], *, input_reference: str | None = None
) -> GenerationSpec:
    """Validate ``POST /v1/videos`` fields (JSON, or multipart form values as strings).

    ``input_reference`` is the uploaded image as a ``data:image/…;base64,`` URI: it
    becomes the first frame.  Errors are ``InvalidParam`` naming the field::

        >>> parse_openai_video_request({"prompt": "a cat", "size": "720x1280"}).height
        1280
    """
    if not isinstance(fields, Mapping):
        raise InvalidParam("The request body must be a JSON object", None)
    check_tree(fields)
    model = fields.get("model")
    if model not in (None, "", MODEL_NAME):
        raise InvalidParam(f"`model` must be {MODEL_NAME!r}, got {shown(model)}", "model")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidParam("`prompt` is required and must be a non-empty string", "prompt")
    given = fields.get("seconds")
    seconds = OPENAI_DEFAULT_SECONDS if given in (None, "") else _choice(given)
    if seconds not in OPENAI_SECONDS:
        raise InvalidParam(
            f"invalid seconds {shown(given)}: must be one of {', '.join(OPENAI_SECONDS)}",
            "seconds",
        )
    given = fields.get("size")
    size = OPENAI_DEFAULT_SIZE if given in (None, "") else _choice(given).lower()
    if size not in OPENAI_SIZES:
        raise InvalidParam(
            f"invalid size {shown(given)}: must be one of {', '.join(OPENAI_SIZES)}", "size"
        )
    seed = fields.get("seed")
    if isinstance(seed, str) and _DIGITS.fullmatch(seed.strip()):
        seed = int(seed)
    resolution, aspect_ratio = OPENAI_SIZES[size]
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "duration": int(seconds),
        "resolution": resolution,
        "aspect_ratio": aspect_ratio,
        "seed": seed,
        "callback_url": parse_callback_url(fields.get("callback_url")),
    }
    if input_reference is not None:
        body["image_urls"] = [input_reference]
        body["generation_type"] = "frame"
    try:
        return parse_generation_request(body)
    except InvalidParam:
        raise
    except InvalidRequest as exc:
        # The remaining rules name their field in the message; OpenAI names it in ``param``.
        param = next(
            (p for f, p in _OPENAI_PARAMS if f"`{f}`" in exc.message or f"{f}[" in exc.message),
            None,
        )
        raise InvalidParam(exc.message, param) from exc


def parse_remix_request(source: GenerationSpec, source_id: str, body: object) -> GenerationSpec:
    """``POST /v1/videos/{id}/remix``: the source's settings (inputs, size, seed) and a new prompt.

    A ``callback_url`` in ``body`` replaces the source's; without one the source's is kept.
    """
    if not isinstance(body, Mapping):
        raise InvalidParam("The request body must be a JSON object", None)
    check_tree(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidParam("`prompt` is required and must be a non-empty string", "prompt")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidParam(f"`prompt` is too long: at most {MAX_PROMPT_CHARS} characters", "prompt")
    callback = parse_callback_url(body.get("callback_url"))
    return dataclasses.replace(
        source,
        prompt=prompt,
        remix_of=source_id,
        callback_url=callback or source.callback_url,
    )
