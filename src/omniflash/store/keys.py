"""API keys, balances, the ledger, and per-key request rates."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from omniflash.errors import NotFound, RateLimited
from omniflash.ids import hash_key, new_api_key
from omniflash.store.db import Database, retry_disconnect
from omniflash.store.schema import api_keys, ledger

__all__ = [
    "ACTIVE_KEY_BY_HASH",
    "COUNT_REQUEST",
    "KEY_FIELDS",
    "KeyInfo",
    "KeyStore",
    "rate_window",
    "too_many_requests",
]

RATE_WINDOW_S = 60


def rate_window(now: float) -> int:
    """The minute ``now`` falls in, as the submit-rate counter numbers them."""
    return int(now // RATE_WINDOW_S)


COUNT_REQUEST = (
    api_keys.update()
    .where(api_keys.c.id == sa.bindparam("key_id"))
    .values(
        rate_hits=sa.case(
            (api_keys.c.rate_window == sa.bindparam("window"), api_keys.c.rate_hits + 1),
            else_=1,
        ),
        rate_window=sa.bindparam("window"),
    )
)
"""Count one submit-type request (parameters ``key_id``, ``window``), returning what it is
given to return.  On PostgreSQL it holds the key's row lock until the transaction ends.
The right-hand sides read the row as it was before the update.  Built once: building a
statement costs more than running it."""

KEY_FIELDS = [
    "id",
    "prefix",
    "name",
    "balance",
    "rpm",
    "max_concurrent",
    "created_at",
    "revoked_at",
]
"""The columns of a ``KeyInfo``, in its order."""
ACTIVE_KEY_BY_HASH = sa.select(*(api_keys.c[name] for name in KEY_FIELDS)).where(
    api_keys.c.key_hash == sa.bindparam("key_hash"), api_keys.c.revoked_at.is_(None)
)
"""The active key with this hash (parameter ``key_hash``, ``ids.hash_key``): the one
statement that authenticates a key, run by the API's hot reads (``store.reads``)."""

_HIT = COUNT_REQUEST.returning(api_keys.c.rate_hits, api_keys.c.rpm)
_RATE = sa.select(api_keys.c.rate_window, api_keys.c.rate_hits, api_keys.c.rpm).where(
    api_keys.c.id == sa.bindparam("key_id")
)


def too_many_requests(rpm: int, now: float) -> RateLimited:
    """The 429 for a key over its ``rpm``: retry when the next minute starts."""
    retry = (rate_window(now) + 1) * RATE_WINDOW_S - now
    return RateLimited(
        f"Too many requests: this key allows {rpm} requests per minute. "
        f"Try again in {max(1, int(retry + 0.999))} s",
        retry_after=int(retry + 0.999),
    )


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    id: int
    prefix: str
    name: str
    balance: int
    """Milli-credits."""
    rpm: int
    max_concurrent: int
    created_at: float
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: sa.Row[tuple[object, ...]]) -> KeyInfo:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> KeyInfo:
        """From a row's columns by name (a SQLAlchemy row's mapping, or a plain dict)."""
        return cls(
            id=m["id"],
            prefix=m["prefix"],
            name=m["name"],
            balance=m["balance"],
            rpm=m["rpm"],
            max_concurrent=m["max_concurrent"],
            created_at=m["created_at"],
            revoked_at=m["revoked_at"],
        )


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, millicredits: int, rpm: int, max_concurrent: int
    ) -> tuple[str, KeyInfo]:
        """Create a key; returns the plaintext (shown once) and its record."""
        with self.db.write() as conn:
            return self._create(conn, name, millicredits, rpm, max_concurrent)

    def create_first(
        self, name: str, millicredits: int, rpm: int, max_concurrent: int
    ) -> tuple[str, KeyInfo] | None:
        """Create a key only if there is no active one; ``None`` when there is.

        Servers starting together on one database make one first key between them.
        """
        with self.db.write() as conn:
            if not self.db.is_sqlite:
                # Conflicts with itself and with inserts: the count below cannot go stale.
                conn.exec_driver_sql("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
            active = conn.execute(
                sa.select(sa.func.count()).where(api_keys.c.revoked_at.is_(None))
            ).scalar_one()
            if active:
                return None
            return self._create(conn, name, millicredits, rpm, max_concurrent)

    def _create(
        self, conn: sa.Connection, name: str, millicredits: int, rpm: int, max_concurrent: int
    ) -> tuple[str, KeyInfo]:
        if millicredits < 0 or rpm < 1 or max_concurrent < 1:
            raise ValueError("credits must be >= 0, rpm and max_concurrent >= 1")
        key = new_api_key()
        now = time.time()
        key_id = conn.execute(
            api_keys.insert()
            .values(
                prefix=key[:10],
                key_hash=hash_key(key),
                name=name,
                balance=millicredits,
                rpm=rpm,
                max_concurrent=max_concurrent,
                created_at=now,
            )
            .returning(api_keys.c.id)
        ).scalar_one()
        if millicredits:
            conn.execute(
                ledger.insert().values(
                    key_id=key_id, delta=millicredits, reason="grant", created_at=now
                )
            )
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
        return key, KeyInfo.from_row(row)

    def all(self) -> list[KeyInfo]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.id)).all()
        return [KeyInfo.from_row(r) for r in rows]

    def count_active(self) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(api_keys.c.revoked_at.is_(None))
                ).scalar_one()
            )

    def _find(self, conn: sa.Connection, key_or_prefix: str) -> int:
        """A key by its full text, or by its unambiguous printed prefix."""
        row = conn.execute(
            sa.select(api_keys.c.id).where(api_keys.c.key_hash == hash_key(key_or_prefix))
        ).one_or_none()
        if row is not None:
            return int(row[0])
        rows = conn.execute(
            sa.select(api_keys.c.id).where(api_keys.c.prefix == key_or_prefix[:10])
        ).all()
        if len(key_or_prefix) >= 6 and len(rows) == 1 and key_or_prefix.startswith("of_"):
            return int(rows[0][0])
        raise NotFound(f"no API key matches {key_or_prefix[:10]!r}")

    def revoke(self, key_or_prefix: str) -> KeyInfo:
        with self.db.write() as conn:
            key_id = self._find(conn, key_or_prefix)
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return KeyInfo.from_row(
                conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
            )

    def topup(self, key_or_prefix: str, millicredits: int) -> KeyInfo:
        if millicredits <= 0:
            raise ValueError("a top-up must be positive")
        with self.db.write() as conn:
            key_id = self._find(conn, key_or_prefix)
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(balance=api_keys.c.balance + millicredits)
            )
            conn.execute(
                ledger.insert().values(
                    key_id=key_id, delta=millicredits, reason="topup", created_at=time.time()
                )
            )
            return KeyInfo.from_row(
                conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
            )

    def ledger_sum(self, key_id: int) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(ledger.c.delta), 0)).where(
                        ledger.c.key_id == key_id
                    )
                ).scalar_one()
            )

    @retry_disconnect
    def get(self, key_id: int) -> KeyInfo:
        with self.db.read() as conn:
            return KeyInfo.from_row(
                conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
            )

    @retry_disconnect
    def check_rate(self, key: KeyInfo, now: float | None = None) -> None:
        """Raise ``RateLimited`` when the key's current minute is used up; counts nothing."""
        now = time.time() if now is None else now
        with self.db.read() as conn:
            row = conn.execute(_RATE, {"key_id": key.id}).one()
        if row.rate_window == rate_window(now) and row.rate_hits >= row.rpm:
            raise too_many_requests(row.rpm, now)

    @retry_disconnect
    def hit(self, key: KeyInfo, now: float | None = None) -> None:
        """Count one request in the key's current minute; over ``rpm`` raises ``RateLimited``.

        The counter lives on the key's row so that several API replicas share it.  A submit
        counts itself inside its own transaction (``TaskStore.submit``); this is for the
        requests that end before one (a body that does not parse) or make none (uploads).
        """
        now = time.time() if now is None else now
        with self.db.write() as conn:
            hits, rpm = conn.execute(_HIT, {"key_id": key.id, "window": rate_window(now)}).one()
        if hits > rpm:
            raise too_many_requests(rpm, now)
