"""Values every process of a deployment shares, kept in the database (table ``meta``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import sqlalchemy as sa

from omniflash.store.db import Database
from omniflash.store.schema import meta

__all__ = ["MetaStore"]

URL_SECRET = "url_signing_secret"


class MetaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get_or_create(self, name: str, make: Callable[[], str]) -> str:
        """The value stored under ``name``; the first caller anywhere stores ``make()``.

        Processes racing here all get the value of the one insert that won.
        """
        with self.db.write() as conn:
            # The write lock (SQLite) or the primary key's wait for the winner
            # (PostgreSQL) makes the losers' inserts no-ops.
            conn.execute(self.db.insert_ignore(meta).values(name=name, value=make()))
        with self.db.read() as conn:
            return str(
                conn.execute(sa.select(meta.c.value).where(meta.c.name == name)).scalar_one()
            )

    def url_secret(self) -> bytes:
        """The key that signs result URLs: made once, shared by every replica."""
        return self.get_or_create(URL_SECRET, lambda: secrets.token_hex(32)).encode()
