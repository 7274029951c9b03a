"""The OpenAI videos dialect: ``/v1/videos`` as the official ``openai`` SDK calls it.

Requests are parsed by ``requests`` (with ``omniflash.contract``'s rules) into the same
``GenerationSpec`` as the Omni-Flash-Ext dialect and submitted through
``submission.submit_spec``: a video is a task, visible (and charged once) in both
dialects.  Shapes and errors: ``shapes``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from omniflash.api.bodies import off_loop
from omniflash.api.deps import Reader, Services, ServicesDep, Submitter, Writer
from omniflash.api.files.downloads import NOSNIFF
from omniflash.api.openai.requests import parse_openai_video_request, parse_remix_request
from omniflash.api.openai.shapes import OpenAIRoute, poll_after_ms, video_object
from omniflash.api.responses import JSONResponse
from omniflash.api.submission import (
    counted_if_refused,
    counted_if_refused_async,
    idempotency_request,
    read_json,
    submit_spec,
)
from omniflash.contract import GenerationSpec
from omniflash.errors import Conflict, InvalidParam, NotFound
from omniflash.image_types import by_pillow_format
from omniflash.input_blobs import BLOB_SCHEME, blob_inputs
from omniflash.store import IdempotencyRequest, KeyInfo, TaskRow, TaskStatus
from omniflash.store.videos import VideoStore
from omniflash.text import check_text, cursor, shown, task_id
from omniflash.worker.sweep import delete_previews

__all__ = ["router"]

router = APIRouter(prefix="/v1/videos", route_class=OpenAIRoute, tags=["OpenAI videos"])


def _video(services: Services, key: KeyInfo, video_id: str) -> TaskRow:
    task = services.store.tasks.get(task_id(video_id, "video"), key.id)
    return _not_deleted(task, VideoStore(services.store.db).is_deleted(task.id))


async def _polled_video(services: Services, key: KeyInfo, video_id: str) -> TaskRow:
    """``_video`` for polls: one read awaited on the event loop."""
    found = await services.reads.video(task_id(video_id, "video"), key.id)
    if found is None:
        raise NotFound(f"No video {shown(video_id)} for this API key")
    return _not_deleted(*found)


def _not_deleted(task: TaskRow, deleted: bool) -> TaskRow:
    if deleted:
        raise NotFound(f"No video {task.id!r}: it was deleted")
    return task


def _image_data_uri(data: bytes) -> str:
    # Imaging libraries load on first use: most API processes never see an upload.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = by_pillow_format(image.format or "")
    except (UnidentifiedImageError, OSError, ValueError):
        kind = None
    if kind is None:
        raise InvalidParam(
            "`input_reference` must be an image file (PNG, JPEG, WebP)", "input_reference"
        )
    return f"data:{kind.media_type};base64," + base64.b64encode(data).decode("ascii")


async def _read_create(request: Request, limit: int) -> tuple[dict[str, Any], str | None]:
    """The create request's fields and its ``input_reference`` (as a data URI), from either body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        body = await read_json(request, limit)
        if not isinstance(body, dict):
            raise InvalidParam("The request body must be a JSON object", None)
        reference = body.get("input_reference")
        if isinstance(reference, dict):
            # OpenAI's {"file_id": …} names a file in its own store; there is none here.
            reference = reference.get("image_url", False)
        if reference is not None and not isinstance(reference, str):
            raise InvalidParam(
                "`input_reference` must be an image URL, a data URI or {image_url}",
                "input_reference",
            )
        return body, reference
    # ``BodyLimit`` bounds a multipart body to one image and its envelope while it
    # streams, so the form's spooled file never grows past that.
    form = await request.form(max_files=1, max_fields=20, max_part_size=limit)
    fields: dict[str, Any] = {}
    image = None
    try:
        for name, value in form.multi_items():
            check_text(name, "multipart field name")
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise InvalidParam(f"unexpected file field {shown(name)}", name)
                check_text(value.filename or "", "input_reference")
                image = await value.read()
            else:
                fields[name] = value
    finally:
        await form.close()
    if image is None:
        return fields, None
    return fields, await off_loop(len(image), _image_data_uri, image)


def _parsed_create(
    fields: dict[str, Any], reference: str | None, idem_key: str | None
) -> tuple[GenerationSpec, IdempotencyRequest | None]:
    """The create's spec and idempotency hash: heavy with an inline image (call in a thread)."""
    spec = parse_openai_video_request(fields, input_reference=reference)
    return spec, idempotency_request(idem_key, {**fields, "input_reference": reference})


@router.post("", summary="Create a video (OpenAI videos API)")
async def create_video(request: Request, key: Submitter, services: ServicesDep) -> JSONResponse:
    """Multipart (as the ``openai`` SDK sends it) or JSON; ``input_reference`` is a first frame."""
    async with counted_if_refused_async(services, key):
        fields, reference = await _read_create(request, services.settings.max_body_bytes)
        spec, idempotency = await off_loop(
            len(reference or ""),
            _parsed_create,
            fields,
            reference,
            request.headers.get("idempotency-key"),
        )
    submitted = await run_in_threadpool(submit_spec, services, key, spec, idempotency)
    headers = {"Idempotency-Replayed": "true"} if submitted.replayed else None
    return JSONResponse(video_object(submitted.task), headers=headers)


@router.get("", summary="List videos (OpenAI videos API)")
async def list_videos(
    key: Reader,
    services: ServicesDep,
    after: Annotated[str | None, Query(description="the last id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> dict[str, Any]:
    rows = await services.reads.videos(key.id, limit=limit + 1, after=cursor(after), order=order)
    page = rows[:limit]
    return {
        "object": "list",
        "data": [video_object(t) for t in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(rows) > limit,
    }


@router.get("/{video_id}", summary="Retrieve a video (OpenAI videos API)")
async def retrieve_video(video_id: str, key: Reader, services: ServicesDep) -> JSONResponse:
    task = await _polled_video(services, key, video_id)
    return JSONResponse(
        video_object(task),
        headers={"openai-poll-after-ms": str(poll_after_ms(task, services.settings.read_rpm))},
    )


@router.delete("/{video_id}", summary="Delete a video and its files (OpenAI videos API)")
def delete_video(video_id: str, key: Writer, services: ServicesDep) -> dict[str, Any]:
    """A queued or running video is cancelled (and refunded) first; then its files go."""
    task = _video(services, key, video_id)
    if not task.status.terminal:
        try:
            task = services.store.tasks.cancel(task.id, key.id)
        except Conflict:  # it ended meanwhile
            task = services.store.tasks.get(task.id, key.id)
    if not VideoStore(services.store.db).mark_deleted(task.id):
        raise NotFound(f"No video {video_id!r}: it was deleted")
    for blob in [task.result_key, *blob_inputs(task.spec).values()]:
        if blob:
            services.storage.delete(blob)
    delete_previews(services.storage, task.id)
    services.store.tasks.mark_result_deleted(task.id)
    return {"id": task.id, "object": "video.deleted", "deleted": True}


def _result(services: Services, task: TaskRow) -> str:
    if task.status is not TaskStatus.COMPLETED or not task.result_key:
        raise Conflict(
            f"Video {task.id} is {video_object(task)['status']}: "
            "its content can be downloaded once it is completed"
        )
    if task.result_deleted or not services.storage.exists(task.result_key):
        raise NotFound(f"The content of video {task.id} has expired")
    return task.result_key


def _thumbnail(path: Path) -> bytes:
    """The first frame, as WebP."""
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        image = frame.to_image()  # type: ignore[no-untyped-call]
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=85)
    return out.getvalue()


@router.get("/{video_id}/content", summary="Download a video or its thumbnail (OpenAI videos API)")
def video_content(
    video_id: str, key: Reader, services: ServicesDep, variant: str = "video"
) -> Response:
    if variant not in ("video", "thumbnail"):
        raise InvalidParam(
            f"variant {shown(variant)} is not supported: use video or thumbnail", "variant"
        )
    blob = _result(services, _video(services, key, video_id))
    local = services.storage.local_path(blob)
    if variant == "thumbnail":
        if local is not None:
            return Response(_thumbnail(local), media_type="image/webp", headers=NOSNIFF)
        with tempfile.TemporaryDirectory(prefix="omniflash-thumb-") as tmp:
            copy = Path(tmp) / "video.mp4"
            services.storage.download(blob, copy)
            return Response(_thumbnail(copy), media_type="image/webp", headers=NOSNIFF)
    if local is not None:
        return FileResponse(
            local, media_type="video/mp4", filename=f"{video_id}.mp4", headers=NOSNIFF
        )
    return StreamingResponse(
        services.storage.iter_bytes(blob),
        media_type="video/mp4",
        headers={"Content-Length": str(services.storage.size(blob)), **NOSNIFF},
    )


def _reinline(services: Services, task: TaskRow) -> list[str]:
    """The source's stored images as data URIs, so the remix stores copies of its own."""
    images = []
    for url in task.spec.image_urls:
        if url.startswith(BLOB_SCHEME):
            with tempfile.TemporaryDirectory(prefix="omniflash-remix-") as tmp:
                copy = Path(tmp) / "image"
                try:
                    services.storage.download(url[len(BLOB_SCHEME) :], copy)
                except FileNotFoundError as exc:
                    raise Conflict(f"The inputs of video {task.id} have expired") from exc
                url = _image_data_uri(copy.read_bytes())
        images.append(url)
    return images


def _remix(services: Services, key: KeyInfo, video_id: str, body: object) -> TaskRow:
    with counted_if_refused(services, key):
        source = _video(services, key, video_id)
        if source.status is not TaskStatus.COMPLETED:
            raise Conflict(f"Only a completed video can be remixed; {video_id} is {source.status}")
        if source.spec.video_url and source.spec.video_url.startswith(BLOB_SCHEME):
            raise Conflict("A video made from an uploaded reference video cannot be remixed")
        spec = parse_remix_request(source.spec, source.id, body)
        # The seed the source ran with (chosen at its submit when it had none) keeps the look.
        spec = dataclasses.replace(
            spec, image_urls=tuple(_reinline(services, source)), seed=source.seed
        )
    return submit_spec(services, key, spec).task


@router.post("/{video_id}/remix", summary="Remix a video with a new prompt (OpenAI videos API)")
async def remix_video(
    video_id: str, request: Request, key: Submitter, services: ServicesDep
) -> dict[str, Any]:
    """The same settings (size, length, inputs, seed) and a new prompt."""
    async with counted_if_refused_async(services, key):
        body = await read_json(request, services.settings.max_body_bytes)
    task = await run_in_threadpool(_remix, services, key, video_id, body)
    return video_object(task)
