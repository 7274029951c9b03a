"""Submitting a task, whatever the dialect: read the body, price, store inputs, charge, queue.

Every dialect (Omni-Flash-Ext, OpenAI videos, MCP tools) parses its own wire format into a
``GenerationSpec`` (``omniflash.contract``, ``api.openai.requests``) and then calls
``submit_spec``, so that the charge, the idempotency rules and the inputs' storage are the
same for all of them.  The path goes down: the route's spec, ``intake.own_inputs`` (the
inputs made the task's own blobs), then ``store.tasks.submit``.

Each submit-type request counts once against its key's ``rpm``: the submit's transaction
counts it (``TaskStore.submit``); a request refused before it gets there, for a body that
does not parse or an image that cannot be stored, is counted by ``counted_if_refused``,
and a key over its limit then gets the 429 rather than the other error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from omniflash.api.bodies import mb, off_loop
from omniflash.api.deps import Services
from omniflash.api.intake import check_inline_sizes, own_inputs
from omniflash.contract import MAX_SEED, GenerationSpec
from omniflash.errors import InvalidRequest, OmniflashError, PayloadTooLarge
from omniflash.ids import ulid
from omniflash.store import IdempotencyRequest, KeyInfo, Submission

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "counted_if_refused",
    "counted_if_refused_async",
    "idempotency_request",
    "parse_json",
    "read_json",
    "submit_spec",
]

IDEMPOTENCY_KEY_MAX = 191
"""APIMart's limit: 1 to 191 visible ASCII characters (``!`` to ``~``)."""


@contextlib.contextmanager
def counted_if_refused(services: Services, key: KeyInfo) -> Iterator[None]:
    """Around work before the submit's transaction: if it fails, count the request against
    the key's ``rpm`` here (a key over its limit gets the 429 instead).  Blocking."""
    try:
        yield
    except Exception:
        services.store.keys.hit(key)
        raise


@contextlib.asynccontextmanager
async def counted_if_refused_async(services: Services, key: KeyInfo) -> AsyncIterator[None]:
    """``counted_if_refused`` for work on the event loop (reading the body)."""
    try:
        yield
    except Exception:
        await run_in_threadpool(services.store.keys.hit, key)
        raise


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refused with ``PayloadTooLarge`` past ``limit`` bytes or
    ``InvalidRequest`` when malformed.

    ``BodyLimit`` has bounded the stream already (this count holds the same line for a
    caller that names a smaller limit); a large body is parsed in a thread.
    """
    # One growing buffer: a list of chunks joined at the end would hold the body twice.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {mb(limit)} MB")
    return await off_loop(len(body), parse_json, body)


def parse_json(data: bytes | bytearray) -> Any:
    """``data`` as JSON, or ``InvalidRequest`` saying why not."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The request body is not valid JSON: it is not UTF-8") from exc
    except RecursionError as exc:
        raise InvalidRequest("The request body is not valid JSON: it is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc


def idempotency_request(idem_key: str | None, body: Any) -> IdempotencyRequest | None:
    """The ``Idempotency-Key`` header's request for ``body``, or ``None`` without the header.

    Hashing a large body takes a while: call it in a thread (the routes do).
    """
    if idem_key is None:
        return None
    idem_key = idem_key.strip()
    visible = all("!" <= c <= "~" for c in idem_key)
    if not idem_key or len(idem_key) > IDEMPOTENCY_KEY_MAX or not visible:
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"
        )
    try:
        canonical = json.dumps(_digested(body), sort_keys=True, separators=(",", ":"))
    except (RecursionError, ValueError) as exc:
        raise InvalidRequest("The request body cannot be hashed for its Idempotency-Key") from exc
    return IdempotencyRequest(idem_key, hashlib.sha256(canonical.encode()).hexdigest())


_LONG = 64 * 1024


def _digested(value: Any) -> Any:
    """``value`` with each string over 64 KiB (an inline image) put as its SHA-256.

    hashlib lets go of the GIL while it hashes; ``json.dumps`` of a 20 MB string would
    hold it, and with it the API's event loop, for a tenth of a second.
    """
    if isinstance(value, str):
        if len(value) <= _LONG:
            return value
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    if isinstance(value, dict):
        return {key: _digested(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_digested(item) for item in value]
    return value


def submit_spec(
    services: Services,
    key: KeyInfo,
    spec: GenerationSpec,
    idempotency: IdempotencyRequest | None = None,
) -> Submission:
    """Price, store inline inputs, charge and queue ``spec``; blocking (call it in a thread).

    Raises the store's ``PaymentRequired``, ``RateLimited``, ``IdempotencyMismatch`` or
    ``AuthenticationFailed`` (a key revoked since its lookup was cached).
    """
    if spec.image_urls:
        # Before anything else: an inline image past the upload limit is the client's
        # mistake, refused without a charge or a write.
        with counted_if_refused(services, key):
            check_inline_sizes(spec, services.settings.max_upload_bytes)
    if spec.image_urls or spec.video_url:
        # Inputs may be copied into storage below: a key whose minute is used up gets its
        # 429 first, from a read, instead of after the copies (the count stays exact: the
        # submit's transaction counts and checks again).
        services.store.keys.check_rate(key)
    # Inline images, and images uploaded here, go to blob storage before the transaction,
    # under a name of their own; they are deleted again if the submit makes no task of them.
    prefix = f"inputs/{ulid()}"
    written: list[str] = []
    submitted = None
    # Whether no task can hold the inputs written here: true until the store is asked,
    # and again when it refused (our own errors); a failure of another kind (a connection
    # lost during the commit) may have committed the task, so its inputs stay, and the
    # orphan sweep collects them by age if no task names them.
    unused = True
    try:
        with counted_if_refused(services, key):
            estimate = max(1, round(services.estimator(spec)))
            spec, written = own_inputs(spec, services.storage, services.signer, prefix)
            millicredits = services.settings.pricing.hold(spec)
        unused = False
        try:
            submitted = services.store.tasks.submit(
                key,
                spec,
                millicredits=millicredits,
                estimated_time=estimate,
                seed=spec.seed if spec.seed is not None else secrets.randbelow(MAX_SEED + 1),
                idempotency_key=idempotency,
            )
        except OmniflashError:
            unused = True
            raise
        unused = submitted.replayed
    finally:
        if written and unused:
            for blob in written:
                services.storage.delete(blob)
    if not submitted.replayed:
        services.waker.notify()
    return submitted
