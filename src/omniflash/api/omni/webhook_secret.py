"""Rotating the caller's webhook signing secret (``GET /v1/account`` shows the current one)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from omniflash.api.deps import ServicesDep, Writer
from omniflash.api.omni.apimart import with_request_id
from omniflash.webhooks import ROTATION_GRACE_S, WebhookSecrets

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/account/webhook-secret", summary="Rotate the caller's webhook signing secret")
def rotate_webhook_secret(key: Writer, services: ServicesDep) -> dict[str, Any]:
    """A new ``whsec_…`` secret; the previous one keeps signing beside it for 24 h."""
    secret, previous_expires = WebhookSecrets(services.store.db).rotate(
        key.id, grace_s=ROTATION_GRACE_S
    )
    return with_request_id(
        {
            "code": 200,
            "data": {
                "webhook_secret": secret,
                "previous_secret_expires_at": int(previous_expires) if previous_expires else None,
            },
        }
    )
