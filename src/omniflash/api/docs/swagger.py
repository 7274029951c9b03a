"""``/docs`` and ``/redoc`` without a CDN, and an OpenAPI document that tells the truth.

The Swagger UI and ReDoc assets come from the ``fastapi-offline`` package and are served
by omniflash itself under ``/docs/assets/``.  The document FastAPI generates is then
corrected: the submit's request body is the contract's JSON Schema; authenticated
operations name the Bearer scheme; each operation lists the error statuses it can
answer, with the envelope its dialect uses; FastAPI's own 422 (which this API never
sends: it answers 400) is gone.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles

from omniflash.api.deps import authenticate_read_limited, authenticate_submit, authenticate_upload
from omniflash.api.docs.request_schema import request_json_schema
from omniflash.api.openai.requests import OPENAI_SECONDS, OPENAI_SIZES
from omniflash.api.openai.shapes import OpenAIRoute
from omniflash.contract import (
    MAX_CALLBACK_URL_CHARS,
    MAX_PROMPT_CHARS,
    MODEL_NAME,
)

__all__ = ["api_routes", "error_statuses", "install_docs", "is_authenticated"]

ASSETS = "/docs/assets"
BEARER = "bearerAuth"

_EXTRA_ERRORS: dict[tuple[str, str], set[int]] = {
    ("POST", "/v1/videos/generations"): {402, 409, 422},
    ("GET", "/v1/tasks/{task_id}"): {404},
    ("POST", "/v1/tasks/{task_id}/cancel"): {404, 409},
    ("GET", "/v1/files/{blob_key}"): {403, 404},
    ("POST", "/v1/videos"): {402, 409, 422},
    ("GET", "/v1/videos/{video_id}"): {404},
    ("DELETE", "/v1/videos/{video_id}"): {404},
    ("GET", "/v1/videos/{video_id}/content"): {404, 409},
    ("POST", "/v1/videos/{video_id}/remix"): {402, 404, 409},
    ("GET", "/v1/models/{model_id}"): {404},
    ("GET", "/v1/model-docs"): {404},
    ("GET", "/v1/model-docs/{document}"): {404},
    ("GET", "/v1/model-schema"): {404},
    ("POST", "/v1/uploads/images"): {400, 413},
}
"""Statuses beyond the ones every operation of its kind can answer (see ``error_statuses``)."""

_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing or wrong API key",
    402: "Balance too small",
    403: "Invalid or expired link",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Too large",
    422: "Idempotency-Key reused with another body",
    429: "Too many requests (Retry-After)",
    500: "Server error",
}


def api_routes(app: FastAPI) -> list[tuple[APIRoute, str]]:
    """Every documented API route with its full path, included routers' routes too."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            found.append((route, context.path_format or route.path_format))
    return found


def static_dir() -> Path:
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def _walk(dependant: Dependant) -> Iterable[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)


def is_authenticated(route: APIRoute) -> bool:
    """Whether the route takes an API key (it depends on one of ``deps``' three key checks)."""
    checks = (authenticate_read_limited, authenticate_submit, authenticate_upload)
    return any(d.call in checks for d in _walk(route.dependant))


def error_statuses(route: APIRoute, method: str, path: str) -> set[int]:
    """Every error status the operation ``method path`` can answer."""
    statuses = {500}
    walked = list(_walk(route.dependant))
    if (method, path) in _BODIES or any(d.query_params or d.body_params for d in walked):
        statuses.add(400)
    if is_authenticated(route):
        statuses |= {401, 429}
    statuses |= _EXTRA_ERRORS.get((method, path), set())
    return statuses


def _schemas() -> dict[str, Any]:
    submit = request_json_schema()
    submit.pop("$schema", None)
    envelope = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "type"],
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status."},
                    "message": {"type": "string"},
                    "type": {"type": "string", "examples": ["invalid_request_error"]},
                },
            }
        },
    }
    openai_envelope = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"], "description": "The field at fault."},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }
    prompt = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
    callback = {"type": "string", "format": "uri", "maxLength": MAX_CALLBACK_URL_CHARS}
    openai_fields = {
        "prompt": prompt,
        "model": {"type": "string", "enum": [MODEL_NAME], "default": MODEL_NAME},
        "seconds": {"type": "string", "enum": list(OPENAI_SECONDS), "default": "4"},
        "size": {"type": "string", "enum": list(OPENAI_SIZES), "default": "1280x720"},
        "seed": {"type": "integer", "minimum": 0},
        "callback_url": callback,
    }
    return {
        "GenerationRequest": submit,
        "Error": envelope,
        "OpenAIError": openai_envelope,
        "VideoCreateMultipart": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                **openai_fields,
                "input_reference": {
                    "type": "string",
                    "format": "binary",
                    "description": "An image: the first frame.",
                },
            },
        },
        "VideoCreateJson": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                **openai_fields,
                "input_reference": {
                    "anyOf": [
                        {"type": "string", "description": "An image URL or data URI."},
                        {"type": "object", "properties": {"image_url": {"type": "string"}}},
                    ]
                },
            },
        },
        "ImageUpload": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "description": "A JPEG, PNG, GIF or WebP image (judged from its bytes).",
                }
            },
        },
        "VideoRemix": {
            "type": "object",
            "required": ["prompt"],
            "properties": {"prompt": prompt, "callback_url": callback},
        },
    }


_BODIES = {
    ("POST", "/v1/videos/generations"): {"application/json": "GenerationRequest"},
    ("POST", "/v1/videos"): {
        "multipart/form-data": "VideoCreateMultipart",
        "application/json": "VideoCreateJson",
    },
    ("POST", "/v1/videos/{video_id}/remix"): {"application/json": "VideoRemix"},
    ("POST", "/v1/uploads/images"): {"multipart/form-data": "ImageUpload"},
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, corrected (see the module docstring)."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_schemas())
    components["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "Your API key"}
    }
    for route, path in api_routes(app):
        for method in sorted(route.methods or ()):
            operation = document["paths"][path][method.lower()]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            envelope = "OpenAIError" if isinstance(route, OpenAIRoute) else "Error"
            for status in sorted(error_statuses(route, method, path)):
                responses[str(status)] = {
                    "description": _DESCRIPTIONS[status],
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{envelope}"}}
                    },
                }
            if is_authenticated(route):
                operation["security"] = [{BEARER: []}]
            body = _BODIES.get((method, path))
            if body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        media: {"schema": {"$ref": f"#/components/schemas/{name}"}}
                        for media, name in body.items()
                    },
                }
    return document


def install_docs(app: FastAPI) -> None:
    """``/docs``, ``/redoc`` and their assets; the corrected document at ``/openapi.json``."""
    app.mount(ASSETS, StaticFiles(directory=static_dir()), name="docs-assets")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title}: API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
