"""What routes need: the app's services, and the caller's key (authenticated, rate-counted)."""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated

from fastapi import Depends, Request

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

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _key(request: Request, services: Services) -> KeyInfo:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "Authentication failed: send your API key as `Authorization: Bearer YOUR_API_KEY`"
        )
    key = services.key_cache.authenticate(token)
    if key is None:
        raise AuthenticationFailed()
    return key


def authenticate(request: Request) -> KeyInfo:
    """The caller's key, for reads: counted against its per-process read limit, no writes."""
    services = get_services(request)
    key = _key(request, services)
    wait = services.read_limiter.take(key.id)
    if wait:
        raise RateLimited(
            f"Too many requests: this key allows {services.settings.read_rpm} reads per "
            f"minute. Try again in {max(1, math.ceil(wait))} s",
            retry_after=max(1, math.ceil(wait)),
        )
    return key


def authenticate_submit(request: Request) -> KeyInfo:
    """The caller's key, for submits: counted against its ``rpm``, exactly, on every replica."""
    services = get_services(request)
    key = _key(request, services)
    services.store.keys.hit(key)
    return key


ServicesDep = Annotated[Services, Depends(get_services)]
Caller = Annotated[KeyInfo, Depends(authenticate)]
Submitter = Annotated[KeyInfo, Depends(authenticate_submit)]
