"""Each API key's webhook signing secrets: the current one, and those rotated out recently.

A key's secret is made the first time it is needed (its owner reads ``GET /v1/account``,
or a webhook is sent).  Rotating makes a new current secret and gives the old one an
expiry; until then webhooks are signed with both, so receivers can switch at leisure.

Making and rotating lock the key's ``api_keys`` row first (and nothing else), so two
replicas can neither make two current secrets nor rotate one twice at once.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from omniflash.errors import NotFound
from omniflash.store import Database
from omniflash.store.schema import api_keys, webhook_secrets
from omniflash.webhooks.signing import new_secret

__all__ = ["ROTATION_GRACE_S", "WebhookSecrets"]

ROTATION_GRACE_S = 24 * 3600
"""How long a rotated-out secret keeps signing beside the new one."""


class WebhookSecrets:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _lock_key(self, conn: sa.Connection, key_id: int) -> None:
        found = conn.execute(
            self.db.for_update(sa.select(api_keys.c.id).where(api_keys.c.id == key_id))
        ).scalar_one_or_none()
        if found is None:
            raise NotFound(f"No API key {key_id}")

    @staticmethod
    def _current(conn: sa.Connection, key_id: int) -> str | None:
        return conn.execute(
            sa.select(webhook_secrets.c.secret)
            .where(webhook_secrets.c.key_id == key_id, webhook_secrets.c.expires_at.is_(None))
            .order_by(webhook_secrets.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()

    def current(self, key_id: int) -> str:
        """The key's current secret, made now if it has none."""
        with self.db.read() as conn:
            found = self._current(conn, key_id)
        if found is not None:
            return found
        with self.db.write() as conn:
            self._lock_key(conn, key_id)
            found = self._current(conn, key_id)
            if found is not None:  # made by another process meanwhile
                return found
            secret = new_secret()
            conn.execute(
                webhook_secrets.insert().values(
                    key_id=key_id, secret=secret, created_at=time.time(), expires_at=None
                )
            )
            return secret

    def rotate(self, key_id: int, grace_s: float = ROTATION_GRACE_S) -> tuple[str, float | None]:
        """Make a new current secret; the old one signs beside it for ``grace_s``.

        Returns the new secret and when the old one stops signing (``None`` without one).
        """
        now = time.time()
        with self.db.write() as conn:
            self._lock_key(conn, key_id)
            old_expires: float | None = None
            if self._current(conn, key_id) is not None:
                old_expires = now + grace_s
                conn.execute(
                    webhook_secrets.update()
                    .where(
                        webhook_secrets.c.key_id == key_id, webhook_secrets.c.expires_at.is_(None)
                    )
                    .values(expires_at=old_expires)
                )
            secret = new_secret()
            conn.execute(
                webhook_secrets.insert().values(
                    key_id=key_id, secret=secret, created_at=now, expires_at=None
                )
            )
            # Secrets past their time are of no use to anyone: tidy them up here.
            conn.execute(
                webhook_secrets.delete().where(
                    webhook_secrets.c.key_id == key_id, webhook_secrets.c.expires_at < now
                )
            )
        return secret, old_expires

    def signing(self, key_id: int) -> list[str]:
        """The secrets that sign the key's webhooks now: the current one first."""
        current = self.current(key_id)
        with self.db.read() as conn:
            older = conn.execute(
                sa.select(webhook_secrets.c.secret)
                .where(
                    webhook_secrets.c.key_id == key_id,
                    webhook_secrets.c.expires_at > time.time(),
                )
                .order_by(webhook_secrets.c.id.desc())
            ).scalars()
            return [current, *(s for s in older if s != current)]
