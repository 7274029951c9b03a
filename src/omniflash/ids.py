"""Identifiers: task ids are ``task_`` + a 26-character ULID; API keys are random tokens."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

__all__ = [
    "hash_key",
    "new_api_key",
    "new_task_id",
    "new_worker_token",
    "ulid",
    "ulid_floor",
    "ulid_time",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_lock = threading.Lock()
_last = [0, 0]


def ulid(now: float | None = None) -> str:
    """48 bits of milliseconds then 80 random bits, Crockford base32: sorts by creation time.

    Monotonic within a process: ids made in the same millisecond count up from the first.
    """
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    with _lock:
        if ms <= _last[0]:
            ms, rand = _last[0], _last[1] + 1
        else:
            rand = secrets.randbits(79)  # headroom so counting up never overflows
        _last[0], _last[1] = ms, rand
    value = (ms << 80) | rand
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def ulid_floor(seconds: float) -> str:
    """The smallest ULID of the millisecond ``seconds`` is in: ids made then sort at or above it."""
    value = (int(seconds * 1000) & ((1 << 48) - 1)) << 80
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def ulid_time(text: str) -> float | None:
    """When a ULID was made, in Unix seconds; ``None`` for text that is not a ULID.

    >>> ulid_time(ulid_floor(1700000000.5))
    1700000000.5
    """
    if len(text) != 26 or any(c not in _CROCKFORD for c in text):
        return None
    value = 0
    for c in text:
        value = value * 32 + _CROCKFORD.index(c)
    return (value >> 80) / 1000


def new_task_id(now: float | None = None) -> str:
    return "task_" + ulid(now)


def new_api_key() -> str:
    return "of_" + secrets.token_urlsafe(32)


def new_worker_token() -> str:
    # Another prefix than API keys', so a token pasted in the wrong place is recognisable.
    return "ofw_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()
