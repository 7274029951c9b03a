"""What routes need: the app's services, and the caller's key (authenticated, rate-counted)."""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from omniflash.api.limits import KeyCache, ReadLimiter
from omniflash.engines.estimates import Estimator
from omniflash.errors import AuthenticationFailed, RateLimited
from omniflash.settings import Settings
from omniflash.storage import Storage, UrlSigner
from omniflash.store import KeyInfo, Store
from omniflash.worker import WorkerPool
from omniflash.worker.wake import Waker

__all__ = [
    "Caller",
    "Services",
    "ServicesDep",
    "Submitter",
    "authenticate",
    "authenticate_submit",
    "get_services",
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
    read_limiter: ReadLimiter

    @property
    def presigner(self) -> Storage | None:
        """The storage that signs result URLs itself, when results are presigned."""
        return self.storage if self.settings.presign_results else None

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "Authentication failed: send your API key as `Authorization: Bearer YOUR_API_KEY`"
        )
    return token


async def _key(request: Request, services: Services) -> KeyInfo:
    token = _token(request)
    # A cached key costs no thread hop and no query; a miss looks it up off the event loop.
    key = services.key_cache.cached(token)
    if key is None:
        key = await run_in_threadpool(services.key_cache.authenticate, token)
    if key is None:
        raise AuthenticationFailed()
    return key


async def authenticate(request: Request) -> KeyInfo:
    """The caller's key, for reads: counted against its per-process read limit, no writes."""
    services = get_services(request)
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
    """The caller's key, for submits: counted against its ``rpm``, exactly, on every replica."""
    services = get_services(request)
    key = await _key(request, services)
    await run_in_threadpool(services.store.keys.hit, key)
    return key


ServicesDep = Annotated[Services, Depends(get_services)]
Caller = Annotated[KeyInfo, Depends(authenticate)]
Submitter = Annotated[KeyInfo, Depends(authenticate_submit)]
