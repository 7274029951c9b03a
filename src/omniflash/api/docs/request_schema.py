"""The seed's submit body as JSON Schema 2020-12: the OpenAPI document's request body and
the MCP ``get_model_schema`` tool's answer.

The schema describes the shape; ``omniflash.contract.parse_generation_request`` is the
authority (it also checks combinations: 2 images, ``duration`` with ``video_urls``,
``size`` against ``aspect_ratio``).
"""

from __future__ import annotations

from typing import Any

from omniflash.contract import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_DURATION,
    DEFAULT_RESOLUTION,
    DURATIONS,
    MAX_CALLBACK_URL_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MODEL_NAME,
)
from omniflash.data_uris import DATA_IMAGE

__all__ = ["request_json_schema"]


def request_json_schema() -> dict[str, Any]:
    """``POST /v1/videos/generations``'s body as JSON Schema 2020-12."""
    http_url = {"type": "string", "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}
    data_image = {"type": "string", "pattern": DATA_IMAGE.pattern}
    ratio = {"type": "string", "enum": list(ASPECT_RATIOS)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "GenerationRequest",
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": {"const": MODEL_NAME, "description": "Always `Omni-Flash-Ext`."},
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PROMPT_CHARS,
                "description": "What the video shows: scene, subject, action, camera, style.",
            },
            "duration": {
                "type": "integer",
                "enum": list(DURATIONS),
                "default": DEFAULT_DURATION,
                "description": "Seconds. Not with `video_urls`: the video's length decides.",
            },
            "resolution": {
                "type": "string",
                "pattern": "^(720[pP]|1080[pP]|4[kK])$",
                "default": DEFAULT_RESOLUTION,
                "description": "720p, 1080p or 4k (any case): the short side.",
            },
            "aspect_ratio": {**ratio, "default": DEFAULT_ASPECT_RATIO},
            "size": {**ratio, "description": "The same as `aspect_ratio` (compatibility)."},
            "generation_type": {
                "type": "string",
                "enum": ["frame", "reference"],
                "description": "How images are used: first frame (1) or references (1 or 3).",
            },
            "image_urls": {
                "type": "array",
                "items": {"anyOf": [http_url, data_image]},
                "maxItems": 3,
                "description": "0, 1 or 3 images: http(s) URLs or data:image/…;base64, URIs.",
            },
            "video_urls": {
                "type": "array",
                "items": http_url,
                "maxItems": 1,
                "description": "One reference video (http or https).",
            },
            "seed": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_SEED,
                "description": "Makes a generation reproducible (extension).",
            },
            "callback_url": {
                **http_url,
                "maxLength": MAX_CALLBACK_URL_CHARS,
                "description": "Receives a signed webhook when the task ends (extension).",
            },
        },
        "additionalProperties": True,
        "examples": [
            {
                "model": MODEL_NAME,
                "prompt": "a girl is dancing happily in a sunny garden",
                "duration": 10,
                "resolution": "1080p",
                "aspect_ratio": "9:16",
            }
        ],
    }
