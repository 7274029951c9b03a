"""What routes need: the app's services, and the caller's key (authenticated, rate-counted).

Three ways a key is checked:

- ``authenticate_read_limited``, held to the per-process read limit (``ReadLimiter``, no
  database write): ``Reader`` for reads (a poll, a list, the account, a download), and
  ``Writer`` for the writes that charge nothing and touch one row of the caller's own
  (cancel, delete, rotating the webhook secret);
- ``authenticate_upload`` (``Uploader``): counted against the key's ``rpm`` at once;
- ``authenticate_submit`` (``Submitter``): authenticated only: the submit's own
  transaction counts the request against ``rpm``, and ``submission.counted_if_refused``
  counts one that fails before it gets there.

A poll's route is a ``DirectRoute``: the same dependencies, called without FastAPI's
dependency solving.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from omniflash.api.limits import KeyCache, ReadLimiter
from omniflash.api.responses import encode
from omniflash.blobs import Storage, UrlSigner
from omniflash.engines.estimates import Estimator
from omniflash.errors import AuthenticationFailed, RateLimited
from omniflash.settings import Settings
from omniflash.store import KeyInfo, Store, TaskRow
from omniflash.store.reads import HotReads
from omniflash.task_view import task_public
from omniflash.text import bearer_token
from omniflash.worker import WorkerPool
from omniflash.worker.wake import Waker

__all__ = [
    "DirectRoute",
    "Reader",
    "Services",
    "ServicesDep",
    "Submitter",
    "Uploader",
    "Writer",
    "authenticate_read_limited",
    "authenticate_submit",
    "authenticate_upload",
    "get_services",
    "services_of",
]


@dataclasses.dataclass
class Services:
    settings: Settings
    store: Store
    storage: Storage
    signer: UrlSigner
    pool: WorkerPool | None
    estimator: Estimator
    waker: Waker
    key_cache: KeyCache
    reads: HotReads
    read_limiter: ReadLimiter
    _base_urls: dict[tuple[Any, ...], str] = dataclasses.field(default_factory=dict)
    _rendered: dict[tuple[Any, ...], tuple[TaskRow, bytes]] = dataclasses.field(
        default_factory=dict
    )

    @property
    def presigner(self) -> Storage | None:
        """The storage that signs result URLs itself, when results are presigned."""
        return self.storage if self.settings.presign_results else None

    def task_view(self, task: TaskRow, base_url: str) -> dict[str, Any]:
        """The one view of ``task`` (``task_view.task_public``) with this app's signer,
        prices and presigner: what every dialect starts from."""
        return task_public(
            task,
            base_url=base_url,
            signer=self.signer,
            pricing=self.settings.pricing,
            presigner=self.presigner,
        )

    def rendered(self, task: TaskRow, how: tuple[Any, ...], render: Callable[[], Any]) -> bytes:
        """``render()``, a view of ``task`` (``how`` names the view), as JSON, remembered
        while ``task`` is the same object: the hot reads answer one object per unchanged
        row (``store.reads``), so a poll of a task that has not moved renders nothing."""
        if self.presigner is not None:  # the bucket signs its URLs anew each time
            return encode(render())
        key = (id(task), *how)
        hit = self._rendered.get(key)
        if hit is not None and hit[0] is task:
            return hit[1]
        data = encode(render())
        if len(self._rendered) >= 4096:
            self._rendered.clear()
        self._rendered[key] = (task, data)
        return data

    def base_url(self, request: Request) -> str:
        """``OMNIFLASH_PUBLIC_URL``, else the URL the request came to (remembered per host:
        building it from the request costs more than the rest of a poll's answer)."""
        if self.settings.public_url:
            return self.settings.public_url
        scope = request.scope
        seen = (
            scope.get("scheme"),
            request.headers.get("host"),
            tuple(scope.get("server") or ()),
            scope.get("root_path"),
        )
        url = self._base_urls.get(seen)
        if url is None:
            if len(self._base_urls) >= 256:  # the Host header is the client's to choose
                self._base_urls.clear()
            url = self._base_urls[seen] = str(request.base_url)
        return url


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    """The ``ServicesDep`` dependency.  ``async`` on purpose: FastAPI runs a plain ``def``
    dependency in a worker thread, a hop that cost a poll a sixth of its time."""
    return services_of(request)


def _token(request: Request) -> str:
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise AuthenticationFailed(
            "Authentication failed: send your API key as `Authorization: Bearer YOUR_API_KEY`"
        )
    return token


async def _key(request: Request, services: Services) -> KeyInfo:
    # A cached key costs no query; a miss is one read awaited on the event loop.
    key = await services.key_cache.authenticate(_token(request))
    if key is None:
        raise AuthenticationFailed()
    return key


async def authenticate_read_limited(request: Request) -> KeyInfo:
    """The caller's key, counted against its per-process read limit (no database write):
    for reads, for the writes that charge nothing (cancel, delete, secret rotation), and
    for each MCP request."""
    services = services_of(request)
    key = await _key(request, services)
    wait = services.read_limiter.take(key.id)
    if wait:
        raise RateLimited(
            f"Too many requests: this key allows {services.settings.read_rpm} reads per "
            f"minute. Try again in {max(1, math.ceil(wait))} s",
            retry_after=max(1, math.ceil(wait)),
        )
    return key


async def authenticate_submit(request: Request) -> KeyInfo:
    """The caller's key, for submits, which count themselves against its ``rpm``."""
    return await _key(request, services_of(request))


async def authenticate_upload(request: Request) -> KeyInfo:
    """The caller's key, for uploads: counted against its ``rpm``, exactly, on every replica."""
    services = services_of(request)
    key = await _key(request, services)
    await run_in_threadpool(services.store.keys.hit, key)
    return key


ServicesDep = Annotated[Services, Depends(get_services)]
Reader = Annotated[KeyInfo, Depends(authenticate_read_limited)]
"""A read's key: a poll, a list, the account, a download."""
Writer = Annotated[KeyInfo, Depends(authenticate_read_limited)]
"""The key of a write that charges nothing and touches one task or secret of the caller's
own (cancel, delete, secret rotation): held, like a read, to the per-process read limit."""
Submitter = Annotated[KeyInfo, Depends(authenticate_submit)]
Uploader = Annotated[KeyInfo, Depends(authenticate_upload)]


def _request_only(dependant: Dependant) -> bool:
    """Whether ``dependant`` is an ``async`` function of the ``Request`` alone."""
    return (
        inspect.iscoroutinefunction(dependant.call)
        and dependant.request_param_name is not None
        and not (
            dependant.dependencies
            or dependant.path_params
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or dependant.body_params
        )
    )


class DirectRoute(APIRoute):
    """An ``APIRoute`` whose endpoint is called without FastAPI's dependency solving.

    For polls, most of an API's traffic: solving a route's parameters and dependencies
    cost a poll a fifth of its time.  The endpoint is written as any other (its signature
    documents the route in the OpenAPI schema), within these bounds, checked when the
    route is built: it is ``async`` and returns a ``Response``; it takes the ``Request``,
    ``str`` path parameters, query parameters typed ``str | None`` with a default of
    ``None``, and dependencies that are ``async`` functions of the ``Request`` alone
    (``Reader``, ``ServicesDep``), each called once per request, in the order of the
    signature::

        router.add_api_route(
            "/v1/tasks/{task_id}", get_task, methods=["GET"], route_class_override=DirectRoute
        )
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        dependant = self.dependant
        endpoint = self.endpoint
        request_name = dependant.request_param_name
        fits = (
            inspect.iscoroutinefunction(endpoint)
            and not (dependant.header_params or dependant.cookie_params or dependant.body_params)
            and all(f.field_info.annotation is str for f in dependant.path_params)
            and all(
                f.field_info.annotation == str | None and f.default is None
                for f in dependant.query_params
            )
            and all(d.name is not None and _request_only(d) for d in dependant.dependencies)
        )
        if not fits:
            raise TypeError(
                f"{self.path}: a DirectRoute's endpoint is async and takes the Request, "
                "str path parameters, str | None query parameters and async "
                "dependencies of the Request alone"
            )
        path = [f.name for f in dependant.path_params]
        query = [(f.name, f.alias) for f in dependant.query_params]
        needs = [(str(d.name), d.call) for d in dependant.dependencies]

        async def handler(request: Request) -> Response:
            kwargs: dict[str, Any] = {}
            for name, call in needs:
                kwargs[name] = await call(request)  # type: ignore[misc]
            matched = request.path_params
            for name in path:
                kwargs[name] = matched[name]
            if query:
                given = request.query_params if request.scope["query_string"] else {}
                for name, alias in query:
                    kwargs[name] = given.get(alias)
            if request_name is not None:
                kwargs[request_name] = request
            response: Response = await endpoint(**kwargs)
            return response

        return handler

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.max_body_size is None:
            # FastAPI's wrapper opens two exit stacks (for dependencies that ``yield``:
            # none here) and renders errors with the app's handlers, which the app's own
            # exception middleware does for what this route raises.
            handler = self.get_route_handler()

            async def app(scope: Scope, receive: Receive, send: Send) -> None:
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)

            self.app = app
