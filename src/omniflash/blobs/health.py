"""Whether blob storage answers, for ``/healthz``: probed at most every few seconds.

Load balancers and Kubernetes probe every replica every few seconds; one ``HEAD`` of the
bucket per replica per ``ttl_s`` is all they cost it, whatever the probe rate.
"""

from __future__ import annotations

import logging
import threading
import time

from omniflash.blobs.protocol import Storage

__all__ = ["StorageHealth"]

log = logging.getLogger(__name__)


class StorageHealth:
    """``problem()``: ``None`` while the storage answers, else a short reason."""

    def __init__(self, storage: Storage, ttl_s: float = 5.0) -> None:
        self.storage = storage
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        with self._lock:  # concurrent probes wait for one check instead of each making one
            if time.monotonic() - self._checked_at >= self.ttl_s:
                self._problem = self._check()
                self._checked_at = time.monotonic()
            return self._problem

    def _check(self) -> str | None:
        try:
            self.storage.probe()
        except Exception as exc:  # whatever it is, the files cannot be served
            log.warning("blob storage does not answer: %s", exc)
            return type(exc).__name__
        return None
