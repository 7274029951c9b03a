"""Signed webhooks (Standard Webhooks) for tasks that end: the outbox, the secrets, the sender.

::

    webhooks.install(store, settings, signer)   # outbox rows, written as tasks end
    sender = WebhookSender(settings, store)     # a thread in every API replica
    sender.start()
"""

from __future__ import annotations

from omniflash.store.outbox import Delivery, Outbox, retry_delay
from omniflash.webhooks.delivery import DeliveryRefused, post_webhook
from omniflash.webhooks.events import event_body, install, webhook_base_url
from omniflash.webhooks.secret_store import ROTATION_GRACE_S, WebhookSecrets
from omniflash.webhooks.sender import OUTCOMES, WebhookSender, parse_delays
from omniflash.webhooks.signing import SECRET_PREFIX, new_secret, signature_header

__all__ = [
    "OUTCOMES",
    "ROTATION_GRACE_S",
    "SECRET_PREFIX",
    "Delivery",
    "DeliveryRefused",
    "Outbox",
    "WebhookSecrets",
    "WebhookSender",
    "event_body",
    "install",
    "new_secret",
    "parse_delays",
    "post_webhook",
    "retry_delay",
    "signature_header",
    "webhook_base_url",
]
