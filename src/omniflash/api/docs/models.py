"""Discovery, as APIMart's clients ask it: models, a model's documentation, its request schema.

No key needed: these describe the server, not an account.  The documentation is this
server's own, generated from the contract and the running configuration (engine modes,
prices, limits, URL lifetimes); the schema is ``request_schema.request_json_schema()``, the
same one the OpenAPI document uses, without ``model``.
"""

from __future__ import annotations

import html
import time
import tomllib
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from omniflash import __version__
from omniflash.api.deps import Services, ServicesDep
from omniflash.api.docs.request_schema import request_json_schema
from omniflash.api.omni.apimart import V2026_07_27, with_request_id
from omniflash.api.submission import IDEMPOTENCY_KEY_MAX
from omniflash.contract import (
    ASPECT_RATIOS,
    DURATIONS,
    FPS,
    MAX_PROMPT_CHARS,
    MODEL_NAME,
    RESOLUTIONS,
    VIDEO_SECONDS_RANGE,
    Mode,
    geometry,
)
from omniflash.errors import InvalidRequest, NotFound
from omniflash.settings import Settings

__all__ = ["model_docs", "model_markdown", "model_object", "model_schema", "router"]

router = APIRouter(tags=["Discovery"])

OPERATION = "video_generation"
ENDPOINT = "/v1/videos/generations"
DOCS_TTL_S = 3600
CREATED = 1_779_148_800  # 2026-05-19, when the seed's model was published
_MODE_TEXT = {
    Mode.TEXT: "text-to-video: a prompt alone",
    Mode.FRAME: "first frame: 1 image in `image_urls` starts the video",
    Mode.REFERENCE: "reference images: 1 or 3 images guide subjects and composition",
    Mode.VIDEO: "reference video: 1 video in `video_urls` gives motion and structure",
}


def _known(model: str | None) -> str:
    if model is None or model.strip().lower() != MODEL_NAME.lower():
        raise NotFound(f"No model {model!r}: this server offers {MODEL_NAME!r}")
    return MODEL_NAME


def model_object() -> dict[str, Any]:
    """The one model, as ``GET /v1/models`` lists it (OpenAI's ``Model`` fields too)."""
    return {
        "id": MODEL_NAME,
        "object": "model",
        "type": "video",
        "created": CREATED,
        "owned_by": "omniflash",
        "name": MODEL_NAME,
        "description": "Text, image and video to video: 4-10 s at 720p, 1080p or 4k.",
        "operations": [OPERATION],
        "endpoint": ENDPOINT,
    }


def engine_modes(settings: Settings) -> list[Mode]:
    """The modes this server's engine serves (a diffusers recipes file may leave some out)."""
    if settings.engine != "diffusers":
        return list(Mode)
    try:
        if settings.recipes_path is not None:
            data = tomllib.loads(settings.recipes_path.read_text())
        else:
            text = resources.files("omniflash.engines").joinpath("recipes.toml").read_text()
            data = tomllib.loads(text)
        names = set(data.get("modes", {}))
    except (OSError, tomllib.TOMLDecodeError):
        return list(Mode)
    return [mode for mode in Mode if mode.value in names]


def model_markdown(settings: Settings, base_url: str) -> str:
    """This server's documentation of the model, in Markdown."""
    pricing = settings.pricing
    rows = "\n".join(
        f"| {res} | {pricing.per_second[res]:g} | "
        + ", ".join(f"{d} s: {pricing.per_second[res] * d:g}" for d in DURATIONS)
        + " |"
        for res in RESOLUTIONS
    )
    sizes = "\n".join(
        f"| {ratio} | "
        + " | ".join("{}×{}".format(*geometry(res, ratio)) for res in RESOLUTIONS)
        + " |"
        for ratio in ASPECT_RATIOS
    )
    modes = "\n".join(f"- `{m.value}`: {_MODE_TEXT[m]}" for m in engine_modes(settings))
    hours = settings.result_ttl_s / 3600
    upload_hours = settings.upload_ttl_s / 3600
    base = base_url.rstrip("/")
    return f"""# {MODEL_NAME}

Video generation on this server (omniflash {__version__}, engine `{settings.engine}`).
Submit `POST {base}{ENDPOINT}` with `Authorization: Bearer YOUR_API_KEY`; poll
`GET {base}/v1/tasks/{{task_id}}` every 5-10 s until `completed`, `failed` or `cancelled`.

## Parameters

| field | type | values | default |
| --- | --- | --- | --- |
| `model` | string | `{MODEL_NAME}` | required |
| `prompt` | string | 1 to {MAX_PROMPT_CHARS} characters | required |
| `duration` | integer | {", ".join(str(d) for d in DURATIONS)} (not with `video_urls`) | 6 |
| `resolution` | string | {", ".join(RESOLUTIONS)} (the short side) | 720p |
| `aspect_ratio` | string | {", ".join(ASPECT_RATIOS)} | 16:9 |
| `size` | string | the same as `aspect_ratio` | |
| `generation_type` | string | `frame` (1 image) or `reference` (1 or 3 images) | by count |
| `image_urls` | array | 0, 1 or 3 http(s) URLs or `data:image/…;base64,` URIs | [] |
| `video_urls` | array | 0 or 1 http(s) URL; its length ({VIDEO_SECONDS_RANGE[0]}-\
{VIDEO_SECONDS_RANGE[1]} s) decides | [] |
| `seed` | integer | 0 to 4294967295, for a reproducible result | random |
| `callback_url` | string | receives a signed webhook when the task ends | |

Output: H.264 mp4 at {FPS} fps, exactly `duration × {FPS}` frames.

| aspect ratio | {" | ".join(RESOLUTIONS)} |
| --- | --- | --- | --- |
{sizes}

## Modes this server offers

{modes}

## Prices (credits per second)

| resolution | per second | by duration |
| --- | --- | --- |
{rows}

One credit costs {pricing.credit_price:g}. A reference video is held at {VIDEO_SECONDS_RANGE[1]} s
and settled at its length. Failed and cancelled tasks are refunded (`cost: 0`).

## Limits

- Images: at most {settings.max_image_bytes // (1024 * 1024)} MB and \
{settings.max_image_pixels:,} pixels; a reference video at most \
{settings.max_video_bytes // (1024 * 1024)} MB and {settings.max_video_seconds:g} s.
- A request body: at most {settings.max_body_bytes // (1024 * 1024)} MB.
- Submits: the key's requests per minute and concurrent tasks (`GET /v1/account`).
- `Idempotency-Key`: 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters; a replay answers
  the same task with `Idempotency-Replayed: true`.

## URLs

- Result URLs last {hours:g} h (`expires_at`).
- `POST {base}/v1/uploads/images` (multipart `file`: JPEG, PNG, GIF or WebP, at most
  {settings.max_upload_bytes // (1024 * 1024)} MB) answers a signed URL lasting \
{upload_hours:g} h, usable in `image_urls`.

## Response versions

Send `X-APIMart-Response-Version: {V2026_07_27}` for the submit's `data` as a task object
(`{{"id", "object": "generation.task", "status", …}}`); without it, the seed's
`[{{"status": "submitted", "task_id"}}]`.
"""


def model_docs(services: Services, base_url: str, model: str | None) -> dict[str, Any]:
    """``GET /v1/model-docs``'s answer."""
    name = _known(model)
    base = base_url.rstrip("/")
    return {
        "object": "model.documentation",
        "model": name,
        "doc_url": f"{base}/v1/model-docs/{name}.html",
        "markdown_url": f"{base}/v1/model-docs/{name}.md",
        "markdown": model_markdown(services.settings, base_url),
        "fetched_at": int(time.time()),
        "cache_ttl_seconds": DOCS_TTL_S,
        "stale": False,
    }


def model_schema(model: str | None, operation: str | None) -> dict[str, Any]:
    """``GET /v1/model-schema``'s answer: the submit body's schema without ``model``."""
    name = _known(model)
    if operation not in (None, "", OPERATION):
        raise InvalidRequest(
            f"operation {operation!r} is not offered: {name} does {OPERATION} only "
            "(this server generates video, not images)"
        )
    schema = request_json_schema()
    schema["title"] = "GenerationInput"
    schema["properties"].pop("model")
    schema["required"] = [r for r in schema["required"] if r != "model"]
    schema["examples"] = [
        {k: v for k, v in example.items() if k != "model"} for example in schema["examples"]
    ]
    return {
        "model": name,
        "operation": OPERATION,
        "endpoint": ENDPOINT,
        "method": "POST",
        "schema_version": V2026_07_27,
        "input_schema": schema,
        "idempotency": {
            "header": "Idempotency-Key",
            "min_length": 1,
            "max_length": IDEMPOTENCY_KEY_MAX,
            "charset": "visible ASCII (0x21-0x7E)",
            "window_seconds": 24 * 3600,
            "replay_header": "Idempotency-Replayed",
        },
        "response_contract": {
            "version_header": "X-APIMart-Response-Version",
            "version": V2026_07_27,
            "submit": {"data": "object", "object": "generation.task", "id_field": "id"},
            "poll": {
                "endpoint": "/v1/tasks/{task_id}",
                "statuses": ["pending", "processing", "completed", "failed", "cancelled"],
                "terminal": ["completed", "failed", "cancelled"],
                "result": "data.result.videos[0].url[0]",
                "poll_interval_seconds": 5,
            },
        },
    }


@router.get("/v1/models", summary="The models this server offers")
def list_models() -> dict[str, Any]:
    return with_request_id({"object": "list", "data": [model_object()]})


@router.get("/v1/models/{model_id}", summary="One model")
def get_model(model_id: str) -> dict[str, Any]:
    _known(model_id)
    return with_request_id(model_object())


@router.get("/v1/model-docs", summary="A model's documentation, as Markdown")
def get_model_docs(
    request: Request,
    services: ServicesDep,
    model: Annotated[str, Query(description="Omni-Flash-Ext")] = MODEL_NAME,
) -> dict[str, Any]:
    return with_request_id(model_docs(services, services.base_url(request), model))


@router.get("/v1/model-docs/{document}", summary="A model's documentation page (.html or .md)")
def get_model_document(document: str, request: Request, services: ServicesDep) -> Any:
    name, _, kind = document.rpartition(".")
    if kind not in ("html", "md"):
        raise NotFound(f"No document {document!r}: ask {MODEL_NAME}.html or {MODEL_NAME}.md")
    markdown = model_markdown(services.settings, services.base_url(request))
    _known(name)
    if kind == "md":
        return PlainTextResponse(markdown, media_type="text/markdown; charset=utf-8")
    page = (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{MODEL_NAME}</title>"
        '<body style="font-family:system-ui;max-width:60rem;margin:2rem auto">'
        f"<pre style=white-space:pre-wrap>{html.escape(markdown)}</pre></body></html>"
    )
    return HTMLResponse(page)


@router.get("/v1/model-schema", summary="A model's request body as JSON Schema 2020-12")
def get_model_schema(
    model: Annotated[str, Query(description="Omni-Flash-Ext")] = MODEL_NAME,
    operation: Annotated[str | None, Query(description="video_generation")] = None,
) -> dict[str, Any]:
    return with_request_id(model_schema(model, operation))
