"""One task's previews on their way from the engine process to the task source.

The engine shows a preview every few frames or steps; the source (the store, or the API
server of a remote worker) takes at most one per ``Settings.preview_interval_s``
(``OMNIFLASH_PREVIEW_INTERVAL_S``); a negative one turns previews off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Preview", "Previews"]

log = logging.getLogger(__name__)

Preview = tuple[bytes, int, int]
"""A WebP preview from the engine process: (bytes, width, height)."""


class Previews:
    """One task's previews, passed to the source at most one per ``interval_s``.

    A preview that comes sooner is held in place of the one held before it (never a
    queue: the newest wins) and sent when the interval has passed, or when the engine is
    done, so that the last look before the end is the last picture the engine showed.
    A source that fails to store one is logged and counted; the task goes on.
    """

    def __init__(self, send: Callable[[bytes, int, int], None] | None, interval_s: float) -> None:
        self.send_to = send
        self.interval_s = interval_s
        self.held: Preview | None = None
        self.last_sent: float | None = None
        self.sent = self.dropped = self.errors = 0

    @property
    def wanted(self) -> bool:
        """Whether the engine should make previews at all (the source can take them)."""
        return self.send_to is not None

    def offer(self, preview: Preview, now: float) -> None:
        if self.send_to is None:
            return
        if self.held is not None:
            self.dropped += 1
        self.held = preview
        self.tick(now)

    def tick(self, now: float) -> None:
        """Send the held preview if the interval since the last one has passed."""
        if self.held is not None and (
            self.last_sent is None or now - self.last_sent >= self.interval_s
        ):
            self.flush(now)

    def flush(self, now: float) -> None:
        """Send the held preview now, whatever the interval (the engine is done)."""
        held, self.held = self.held, None
        if held is None or self.send_to is None:
            return
        self.last_sent = now
        try:
            self.send_to(*held)
            self.sent += 1
        except Exception as exc:
            self.errors += 1
            log.warning("a preview could not be stored (%s: %s)", type(exc).__name__, exc)
