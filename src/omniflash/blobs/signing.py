"""The API's own signed, expiring download URLs (``/v1/files/{key}?expires=…&sig=…``).

A download URL carries its expiry and an HMAC of the blob key and expiry made with the
server secret, so anyone holding it may download the file until then, and no one can
forge or extend it::

    >>> signer = UrlSigner(b"secret")
    >>> path = signer.path("results/task_1.mp4", expires_at=2_000_000_000)
    >>> signer.verify("results/task_1.mp4", 2_000_000_000, path.rsplit("sig=", 1)[1], now=0)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote

__all__ = ["UrlSigner"]

_SIG = re.compile(r"[0-9a-f]{64}", re.ASCII)


class UrlSigner:
    """HMAC-SHA256 signatures over a blob key and an expiry time."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def signature(self, key: str, expires_at: int) -> str:
        message = f"{key}\n{expires_at}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def path(self, key: str, expires_at: int) -> str:
        """The URL path (and query) that downloads ``key`` until ``expires_at``."""
        sig = self.signature(key, expires_at)
        return f"/v1/files/{quote(key)}?expires={expires_at}&sig={sig}"

    def verify(self, key: str, expires_at: int, sig: str, *, now: float) -> bool:
        """Whether ``sig`` signs ``key`` until ``expires_at``, and that is not past.

        Any text may come in as ``sig`` (it is the URL's): what is not 64 hex digits is
        refused before the comparison, which raises on ``str`` outside ASCII; so is an
        expiry no signer makes (past 64 bits).
        """
        if not now <= expires_at < 2**63 or _SIG.fullmatch(sig) is None:
            return False
        return hmac.compare_digest(self.signature(key, expires_at), sig)
