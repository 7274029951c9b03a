"""Each API key's webhook signing secrets: the current one, and those rotated out recently.

A key's secret is made the first time it is needed (its owner reads ``GET /v1/account``,
or a webhook is sent).  Rotating makes a new current secret and gives the old one an
expiry; until then webhooks are signed with both, so receivers can switch at leisure.
The rows, and the locks that keep two replicas from making two current secrets or
rotating one twice, are the store's (``omniflash.store.webhook_secrets``).
"""

from __future__ import annotations

import time

from omniflash.store import Database
from omniflash.store.webhook_secrets import WebhookSecretRows
from omniflash.webhooks.signing import new_secret

__all__ = ["ROTATION_GRACE_S", "WebhookSecrets"]

ROTATION_GRACE_S = 24 * 3600
"""How long a rotated-out secret keeps signing beside the new one."""


class WebhookSecrets:
    def __init__(self, db: Database) -> None:
        self.rows = WebhookSecretRows(db)

    def current(self, key_id: int) -> str:
        """The key's current secret, made now if it has none."""
        found = self.rows.current(key_id)
        if found is not None:
            return found
        return self.rows.make_current(key_id, new_secret(), time.time())

    def rotate(self, key_id: int, grace_s: float = ROTATION_GRACE_S) -> tuple[str, float | None]:
        """Make a new current secret; the old one signs beside it for ``grace_s``.

        Returns the new secret and when the old one stops signing (``None`` without one).
        """
        now = time.time()
        secret = new_secret()
        return secret, self.rows.rotate(key_id, secret, now, now + grace_s)

    def signing(self, key_id: int) -> list[str]:
        """The secrets that sign the key's webhooks now: the current one first."""
        current = self.current(key_id)
        older = self.rows.unexpired(key_id, time.time())
        return [current, *(s for s in older if s != current)]
