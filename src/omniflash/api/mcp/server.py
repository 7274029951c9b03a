"""The MCP tools for agents: APIMart's tools, served over streamable HTTP at ``/mcp``.

Stateless, built on the official ``mcp`` SDK; ``endpoint`` mounts it in the API app and
checks the caller's Bearer key before any MCP message is read (and answers a call that
asked for progress as a stream, any other as JSON).  Each tool is a thin dialect: it
calls the same functions as the HTTP routes (``contract`` to parse, ``submit_spec`` to
charge and queue, ``task_data`` to show a task), so every rule is the HTTP API's.

Tools: ``list_models``, ``get_model_docs``, ``get_model_schema``, ``upload_image``,
``generate_video``, ``get_task``, ``wait_for_task`` (MCP progress notifications while
the task runs, woken by the task events of the caller's key) and ``cancel_task``.  Each
answers structured content (a JSON object) and the same object as text; an API error is
a tool error (``isError``) whose structured content is ``{"error": {"code", "type",
"message"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ResourceLink, TextContent
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from omniflash import __version__
from omniflash.api.bodies import off_loop
from omniflash.api.deps import Services, authenticate_read_limited
from omniflash.api.docs.models import model_docs, model_object, model_schema
from omniflash.api.files.uploads import store_upload
from omniflash.api.omni.apimart import parse_language, task_data
from omniflash.api.submission import counted_if_refused, idempotency_request, submit_spec
from omniflash.contract import MODEL_NAME, parse_generation_request
from omniflash.data_uris import is_data_uri
from omniflash.errors import (
    AuthenticationFailed,
    InvalidParam,
    InvalidRequest,
    NotFound,
    OmniflashError,
    UploadTooLarge,
)
from omniflash.store import KeyInfo, TaskRow
from omniflash.text import check_text, scrub, shown
from omniflash.text import task_id as checked_task_id

__all__ = ["MAX_WAIT_S", "POLL_AFTER_S", "build_server", "tool_error"]

POLL_AFTER_S = 5
"""What ``next_poll_after_seconds`` says while a task runs."""
MAX_WAIT_S = 600.0
"""The longest ``timeout_s`` of ``wait_for_task``: one tool call holds one request."""
LOOK_AGAIN_S = 5.0
"""How long ``wait_for_task`` waits for news before it looks at the task anyway."""

_INSTRUCTIONS = (
    "Generate videos with Omni-Flash-Ext. Read get_model_schema for the input; upload local "
    "images with upload_image and pass the URL in input.image_urls; call generate_video with "
    "an idempotency_key (retrying with the same key never charges twice); then wait_for_task "
    "(progress notifications while it runs), or get_task every few seconds, until terminal "
    "is true. A completed task links its mp4."
)


def _result(data: dict[str, Any], links: list[ResourceLink] | None = None) -> CallToolResult:
    # A prompt stored before the text rules may hold a lone surrogate, which UTF-8 cannot
    # carry: the round trip through ``scrub`` makes the answer encodable.
    encoded = json.dumps(data, ensure_ascii=False, indent=1)
    if scrub(encoded) != encoded:
        data = json.loads(scrub(json.dumps(data, ensure_ascii=False)))
        encoded = json.dumps(data, ensure_ascii=False, indent=1)
    text = TextContent(type="text", text=encoded)
    return CallToolResult(content=[text, *(links or [])], structured_content=data)


def _texts(**arguments: str | None) -> None:
    """The tool's text arguments follow the text rules (``omniflash.text``): a 400 otherwise."""
    for name, value in arguments.items():
        if value is not None:
            check_text(value, name)


def tool_error(exc: OmniflashError) -> CallToolResult:
    """``exc`` as a tool error: this dialect's one rendering of ``omniflash.errors``' tree."""
    data = {"error": {"code": exc.status, "type": exc.type, "message": exc.message}}
    text = TextContent(type="text", text=f"{exc.type}: {exc.message}")
    return CallToolResult(content=[text], structured_content=data, is_error=True)


def _decoded_image(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("`image_base64` is not valid base64") from exc


class _Tools:
    """The tools, bound to one app's services."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def _caller(self, ctx: Context) -> tuple[KeyInfo, str]:
        """The key of the Bearer token (checked again: each tool call is a request) and base URL."""
        request = ctx.request_context.request
        if not isinstance(request, Request):
            raise AuthenticationFailed("MCP tools are served over HTTP with a Bearer API key")
        key = getattr(request.state, "omniflash_key", None)
        if not isinstance(key, KeyInfo):
            key = await authenticate_read_limited(request)
        return key, self.services.base_url(request)

    async def _run(
        self, ctx: Context, work: Callable[[KeyInfo, str], Awaitable[CallToolResult]]
    ) -> CallToolResult:
        try:
            key, base_url = await self._caller(ctx)
            return await work(key, base_url)
        except OmniflashError as exc:
            return tool_error(exc)

    def _task(
        self, task: TaskRow, base_url: str, language: str | None = None
    ) -> tuple[dict[str, Any], list[ResourceLink]]:
        public = task_data(self.services, task, base_url, language)
        terminal = task.status.terminal
        data: dict[str, Any] = {
            "kind": "task",
            "task_id": task.id,
            "status": task.status.value,
            "terminal": terminal,
            "should_poll": not terminal,
            "next_poll_after_seconds": 0 if terminal else POLL_AFTER_S,
            "task": public,
        }
        links = []
        if "result" in public:
            url = public["result"]["videos"][0]["url"][0]
            data["video_url"] = url
            links.append(
                ResourceLink(
                    type="resource_link",
                    uri=url,
                    name=f"{task.id}.mp4",
                    mime_type="video/mp4",
                    description="The generated video (a signed URL; it expires)",
                )
            )
        return data, links

    # -- the tools ------------------------------------------------------------------------

    async def list_models(
        self,
        ctx: Context,
        query: Annotated[str | None, Field(description="Words to filter models by")] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Models per page")] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor of the last page")] = None,
    ) -> CallToolResult:
        """List the models this server generates with."""

        async def work(_key: KeyInfo, _base: str) -> CallToolResult:
            _texts(query=query, cursor=cursor)
            models = [model_object()]
            if query:
                words = query.lower().split()
                models = [
                    m
                    for m in models
                    if all(w in f"{m['id']} {m['description']} video".lower() for w in words)
                ]
            start = int(cursor) if cursor and cursor.isascii() and cursor.isdigit() else 0
            page = models[start : start + limit]
            more = start + limit < len(models)
            data = {
                "object": "list",
                "data": page,
                "has_more": more,
                "next_cursor": str(start + limit) if more else None,
            }
            return _result(data)

        return await self._run(ctx, work)

    async def get_model_docs(
        self, ctx: Context, model: Annotated[str, Field(description="Omni-Flash-Ext")]
    ) -> CallToolResult:
        """The model's documentation (Markdown): parameters, modes, prices, limits."""

        async def work(_key: KeyInfo, base_url: str) -> CallToolResult:
            _texts(model=model)
            return _result(model_docs(self.services, base_url, model))

        return await self._run(ctx, work)

    async def get_model_schema(
        self,
        ctx: Context,
        model: Annotated[str, Field(description="Omni-Flash-Ext")],
        operation: Annotated[str | None, Field(description="video_generation")] = None,
    ) -> CallToolResult:
        """The JSON Schema of generate_video's `input` (the request body without `model`)."""

        async def work(_key: KeyInfo, _base: str) -> CallToolResult:
            _texts(model=model, operation=operation)
            return _result(model_schema(model, operation))

        return await self._run(ctx, work)

    async def upload_image(
        self,
        ctx: Context,
        image_base64: Annotated[str, Field(description="The image's bytes, base64")],
        filename: Annotated[str, Field(description="A name for it, e.g. cat.png")],
    ) -> CallToolResult:
        """Upload a JPEG, PNG, GIF or WebP; answers a URL to pass in input.image_urls."""

        async def work(key: KeyInfo, base_url: str) -> CallToolResult:
            await run_in_threadpool(self.services.store.keys.hit, key)
            _texts(filename=filename)
            payload = image_base64.strip()
            if is_data_uri(payload):
                payload = payload.partition(",")[2]
            limit = self.services.settings.max_upload_bytes
            if len(payload) > (limit // 3 + 1) * 4:
                raise UploadTooLarge(f"The image is larger than {limit // (1024 * 1024)} MB")
            # Decoding 20 MB takes a tenth of a second: not on the event loop.
            data = await off_loop(len(payload), _decoded_image, payload)
            answer = await run_in_threadpool(store_upload, self.services, data, filename, base_url)
            return _result(answer)

        return await self._run(ctx, work)

    async def generate_video(
        self,
        ctx: Context,
        model: Annotated[str, Field(description="Omni-Flash-Ext")],
        input: Annotated[
            dict[str, Any],
            Field(description="The request body without `model` (see get_model_schema)"),
        ],
        idempotency_key: Annotated[
            str, Field(description="1-191 visible ASCII; the same key returns the same task")
        ],
    ) -> CallToolResult:
        """Submit a video generation; answers the task to poll with get_task."""

        async def work(key: KeyInfo, base_url: str) -> CallToolResult:
            services = self.services
            body = {**input, "model": model}

            def submit() -> Any:
                with counted_if_refused(services, key):
                    _texts(model=model, idempotency_key=idempotency_key)
                    request = idempotency_request(idempotency_key, body)
                    spec = parse_generation_request(body)
                return submit_spec(services, key, spec, request)

            submitted = await run_in_threadpool(submit)
            task = submitted.task
            data = {
                "kind": "task",
                "task_id": task.id,
                "status": task.status.value,
                "model": MODEL_NAME,
                "should_poll": not task.status.terminal,
                "next_poll_after_seconds": POLL_AFTER_S,
                "idempotency_key": idempotency_key,
                "replayed": submitted.replayed,
                "estimated_time": task.estimated_time,
            }
            return _result(data)

        return await self._run(ctx, work)

    async def get_task(
        self,
        ctx: Context,
        task_id: Annotated[str, Field(description="The id generate_video answered")],
        language: Annotated[str | None, Field(description="zh, en, ko or ja")] = None,
    ) -> CallToolResult:
        """A task's status, progress, cost and, once completed, its video URL."""

        async def work(key: KeyInfo, base_url: str) -> CallToolResult:
            _texts(language=language)
            lang = parse_language(language)
            task = await run_in_threadpool(
                self.services.store.tasks.get, checked_task_id(task_id), key.id
            )
            return _result(*self._task(task, base_url, lang))

        return await self._run(ctx, work)

    async def wait_for_task(
        self,
        ctx: Context,
        task_id: Annotated[str, Field(description="The id generate_video answered")],
        timeout_s: Annotated[
            float, Field(description="Seconds to wait at most: more than 0, at most 600")
        ] = 300.0,
        language: Annotated[str | None, Field(description="zh, en, ko or ja")] = None,
    ) -> CallToolResult:
        """Wait until a task ends, sending progress notifications as it runs; returns the
        task as get_task does (terminal false when timeout_s passed first)."""

        async def work(key: KeyInfo, base_url: str) -> CallToolResult:
            _texts(language=language)
            lang = parse_language(language)
            wanted = checked_task_id(task_id)
            if not (isinstance(timeout_s, int | float) and 0 < timeout_s <= MAX_WAIT_S):
                raise InvalidParam(
                    f"`timeout_s` must be more than 0 and at most {MAX_WAIT_S:g}", "timeout_s"
                )
            deadline = time.monotonic() + float(timeout_s)
            request = ctx.request_context.request
            app = request.app if isinstance(request, Request) else None
            hub = getattr(app.state, "event_hub", None) if app is not None else None
            news = hub.subscribe(key.id) if hub is not None else None
            reported: tuple[str, int] | None = None
            try:
                while True:
                    task = await self.services.reads.task(wanted, key.id)
                    if task is None:
                        raise NotFound(f"No task {shown(task_id)} for this API key")
                    seen = (task.status.value, task.progress)
                    if seen != reported:
                        reported = seen
                        message = f"{task.status.value} {task.progress}%"
                        await ctx.report_progress(task.progress, 100, message)
                    remaining = deadline - time.monotonic()
                    if task.status.terminal or remaining <= 0:
                        return _result(*self._task(task, base_url, lang))
                    # The key's news wakes this at once; a look every few seconds anyway
                    # covers a server whose notifications are down.
                    pause = min(remaining, LOOK_AGAIN_S)
                    if news is not None:
                        await news.wait(pause)
                    else:
                        await asyncio.sleep(pause)
            finally:
                if news is not None:
                    news.close()

        return await self._run(ctx, work)

    async def cancel_task(
        self,
        ctx: Context,
        task_id: Annotated[str, Field(description="A pending or processing task")],
    ) -> CallToolResult:
        """Cancel a pending or processing task; it is refunded."""

        async def work(key: KeyInfo, base_url: str) -> CallToolResult:
            task = await run_in_threadpool(
                self.services.store.tasks.cancel, checked_task_id(task_id), key.id
            )
            return _result(*self._task(task, base_url))

        return await self._run(ctx, work)


def build_server(services: Services) -> MCPServer:
    server = MCPServer(
        "omniflash", version=__version__, instructions=_INSTRUCTIONS, log_level="WARNING"
    )
    tools = _Tools(services)
    for name in (
        "list_models",
        "get_model_docs",
        "get_model_schema",
        "upload_image",
        "generate_video",
        "get_task",
        "wait_for_task",
        "cancel_task",
    ):
        server.add_tool(getattr(tools, name), name=name, structured_output=False)
    return server
