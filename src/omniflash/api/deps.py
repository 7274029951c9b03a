"""What routes need: the app's services, and the caller's key (authenticated, rate-counted)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Request

from omniflash.engines import Engine
from omniflash.errors import AuthenticationFailed
from omniflash.settings import Settings
from omniflash.storage import Storage, UrlSigner
from omniflash.store import KeyInfo, Store
from omniflash.worker import WorkerPool
from omniflash.worker.wake import Waker

__all__ = ["Caller", "Services", "authenticate", "get_services"]


@dataclasses.dataclass
class Services:
    settings: Settings
    store: Store
    storage: Storage
    signer: UrlSigner
    pool: WorkerPool | None
    estimator: Engine | None
    waker: Waker

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def authenticate(request: Request) -> KeyInfo:
    services = get_services(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "Authentication failed: send your API key as `Authorization: Bearer YOUR_API_KEY`"
        )
    key = services.store.keys.authenticate(token)
    if key is None:
        raise AuthenticationFailed()
    services.store.keys.hit(key)
    return key


ServicesDep = Annotated[Services, Depends(get_services)]
Caller = Annotated[KeyInfo, Depends(authenticate)]
