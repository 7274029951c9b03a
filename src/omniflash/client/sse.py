"""Server-sent events without I/O: bytes in, whole events out.

``SSEParser.feed`` takes the stream's bytes as they arrive, cut anywhere (inside a line,
inside a UTF-8 character, between the ``\\r`` and ``\\n`` of a line end), and returns
the events each chunk completed, following the WHATWG rules: ``data:`` lines joined with
``\\n``, comment lines (``:``) ignored, ``id:`` kept as the last event id once its event
is dispatched (unless it holds a NUL), ``retry:`` (digits only) as the reconnection
delay, an event without data not dispatched.

>>> parser = SSEParser()
>>> parser.feed(b"id: 7\\nevent: progress\\nda") + parser.feed(b"ta: {}\\n\\n")
[SSEMessage(event='progress', data='{}', id='7')]
"""

from __future__ import annotations

import codecs
import dataclasses

__all__ = ["SSEMessage", "SSEParser"]


@dataclasses.dataclass(frozen=True)
class SSEMessage:
    event: str
    data: str
    id: str
    """The last event id the stream set, as ``Last-Event-ID`` would send it."""


class SSEParser:
    """One connection's parsing state, starting from the id a resume sent;
    ``last_event_id`` and ``retry_ms`` survive its events."""

    def __init__(self, last_event_id: str = "") -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._skip_lf = False
        self._first = True
        self._event = ""
        self._data: list[str] = []
        self._id = last_event_id
        self.last_event_id = last_event_id
        """The id of the last event dispatched: what ``Last-Event-ID`` sends on a resume."""
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """The events that ``chunk`` completed, in order."""
        text = self._decoder.decode(chunk)
        if self._skip_lf and text:
            # The last chunk ended with "\r": a "\n" starting this one ends the same line.
            self._skip_lf = False
            text = text.removeprefix("\n")
        text = self._pending + text
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        out: list[SSEMessage] = []
        start = 0
        while True:
            cr, lf = text.find("\r", start), text.find("\n", start)
            if cr < 0 and lf < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr + 1 == len(text):
                    self._skip_lf = True
                end = cr + 2 if text[cr + 1 : cr + 2] == "\n" else cr + 1
                line = text[start:cr]
            else:
                end, line = lf + 1, text[start:lf]
            start = end
            message = self._line(line)
            if message is not None:
                out.append(message)
        self._pending = text[start:]
        return out

    def _line(self, line: str) -> SSEMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        self.last_event_id = self._id
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SSEMessage(event, "\n".join(data), self.last_event_id)
