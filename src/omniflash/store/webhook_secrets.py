"""Each API key's webhook signing secrets, as rows: the current one, and those rotated out.

Making and rotating lock the key's ``api_keys`` row first (and nothing else), so two
replicas can neither make two current secrets nor rotate one twice at once.  What a
secret looks like and how long a rotated one keeps signing is ``webhooks.secret_store``'s.
"""

from __future__ import annotations

import sqlalchemy as sa

from omniflash.errors import NotFound
from omniflash.store.db import Database
from omniflash.store.schema import api_keys, webhook_secrets

__all__ = ["WebhookSecretRows"]


class WebhookSecretRows:
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

    def current(self, key_id: int) -> str | None:
        """The key's current secret, if it has one."""
        with self.db.read() as conn:
            return self._current(conn, key_id)

    def make_current(self, key_id: int, secret: str, now: float) -> str:
        """Store ``secret`` as the key's current one, unless another process made one
        meanwhile: the current secret either way."""
        with self.db.write() as conn:
            self._lock_key(conn, key_id)
            found = self._current(conn, key_id)
            if found is not None:
                return found
            conn.execute(
                webhook_secrets.insert().values(
                    key_id=key_id, secret=secret, created_at=now, expires_at=None
                )
            )
            return secret

    def rotate(self, key_id: int, secret: str, now: float, old_expires: float) -> float | None:
        """Make ``secret`` current; the old one (if any) expires at ``old_expires``.

        Returns when the old one stops signing (``None`` without one).  Secrets past
        their time are of no use to anyone: they are tidied up here.
        """
        with self.db.write() as conn:
            self._lock_key(conn, key_id)
            expires: float | None = None
            if self._current(conn, key_id) is not None:
                expires = old_expires
                conn.execute(
                    webhook_secrets.update()
                    .where(
                        webhook_secrets.c.key_id == key_id, webhook_secrets.c.expires_at.is_(None)
                    )
                    .values(expires_at=old_expires)
                )
            conn.execute(
                webhook_secrets.insert().values(
                    key_id=key_id, secret=secret, created_at=now, expires_at=None
                )
            )
            conn.execute(
                webhook_secrets.delete().where(
                    webhook_secrets.c.key_id == key_id, webhook_secrets.c.expires_at < now
                )
            )
        return expires

    def unexpired(self, key_id: int, now: float) -> list[str]:
        """The key's rotated-out secrets that still sign at ``now``, newest first."""
        with self.db.read() as conn:
            return list(
                conn.execute(
                    sa.select(webhook_secrets.c.secret)
                    .where(
                        webhook_secrets.c.key_id == key_id,
                        webhook_secrets.c.expires_at > now,
                    )
                    .order_by(webhook_secrets.c.id.desc())
                ).scalars()
            )
