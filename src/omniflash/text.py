"""The text rules every door applies: what characters a request's text may hold.

A request's text ends up in a database row (PostgreSQL refuses NUL in ``text``), in
JSON answers (UTF-8 has no lone surrogates: orjson refuses them), in logs and in HTTP
headers.  So every text field of every dialect is held to one rule, checked once, at
the contract, before anything is charged or stored:

- never NUL, a lone surrogate (U+D800–U+DFFF, which ``json.loads`` makes of a
  ``"\\ud800"`` escape), DEL (U+007F) or a C1 control (U+0080–U+009F);
- no other C0 control (U+0001–U+001F) either, except tab, newline and carriage
  return in free text (a prompt), where they are ordinary whitespace.

::

    >>> check_text("a cat\\nin a hat", "prompt", free=True)
    'a cat\\nin a hat'
    >>> check_text("https://x.y/\\x00", "callback_url")
    Traceback (most recent call last):
    ...
    omniflash.errors.InvalidParam: `callback_url` holds a control character (U+0000) at 12

Ids and cursors have a format of their own (``is_task_id``): anything else cannot name
one of our tasks, and is answered before any SQL.  ``bearer_token`` is the one parser of
``Authorization: Bearer …`` for API keys, worker tokens and the metrics token.
``scrub`` makes stored text that predates these rules safe to serve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from omniflash.errors import InvalidParam

__all__ = [
    "FREE_TEXT_FIELDS",
    "bad_char",
    "bearer_token",
    "check_text",
    "check_tree",
    "cursor",
    "is_task_id",
    "scrub",
    "shown",
    "task_id",
]

# Tab, newline and carriage return are whitespace in free text; every other C0 control,
# DEL, the C1 controls and the surrogates are refused everywhere.
_STRICT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FREE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ASCII_STRICT = bytes(range(0x20, 0x7F))
_ASCII_FREE = _ASCII_STRICT + b"\t\n\r"
_TASK_ID = re.compile(r"task_[0-9A-HJKMNP-TV-Z]{26}", re.ASCII)
_TOKEN = re.compile(r"[!-~]{1,512}", re.ASCII)

FREE_TEXT_FIELDS = frozenset({"prompt", "negative_prompt"})
"""Request fields where tab, newline and carriage return are allowed."""

MAX_SHOWN = 60


def bad_char(value: str, *, free: bool = False) -> int | None:
    """The index of the first character the rules refuse in ``value``, or ``None``.

    >>> bad_char("ok"), bad_char("a\\tb"), bad_char("a\\tb", free=True), bad_char("\\ud800")
    (None, 1, None, 0)
    """
    # A long ASCII value (an inline image's base64) is checked as bytes: deleting the
    # allowed bytes is a fifth of the time of the search below (20 ms for 20 MB).
    allowed = _ASCII_FREE if free else _ASCII_STRICT
    if len(value) > 4096 and value.isascii() and not value.encode().translate(None, allowed):
        return None
    match = (_FREE if free else _STRICT).search(value)
    return None if match is None else match.start()


def _invalid(message: str, field: str) -> InvalidParam:
    return InvalidParam(message, field)


def check_text(value: str, field: str, *, free: bool = False) -> str:
    """``value`` when it follows the rules; else ``InvalidParam`` (400) naming ``field``."""
    at = bad_char(value, free=free)
    if at is None:
        return value
    char = value[at]
    if len(field) > 100:  # a path through a client's nested keys
        field = field[:99] + "…"
    kind = "a lone surrogate" if _SURROGATE.match(char) else "a control character"
    raise _invalid(f"`{field}` holds {kind} (U+{ord(char):04X}) at {at}", field)


def check_tree(value: object, field: str = "") -> None:
    """Every string in a decoded JSON value (object keys too) follows the rules.

    The path of the first offender names it: ``image_urls[1]``, ``input.prompt``.  Fields
    in ``FREE_TEXT_FIELDS`` may hold ordinary whitespace, and so may fields the contract
    does not know (it ignores them; they are only hashed for an ``Idempotency-Key``).
    """
    stack: list[tuple[object, str, bool]] = [(value, field, True)]
    while stack:
        item, path, free = stack.pop()
        if isinstance(item, str):
            check_text(item, path or "body", free=free)
        elif isinstance(item, Mapping):
            for name, child in item.items():
                name_text = name if isinstance(name, str) else str(name)
                check_text(name_text, f"{path or 'body'} key", free=False)
                # The path names the field in a message: a client's long key is cut.
                part = name_text if len(name_text) <= 40 else name_text[:40] + "…"
                child_path = f"{path}.{part}" if path else part
                stack.append((child, child_path, free and name_text not in _KNOWN_STRICT))
        elif isinstance(item, list | tuple):
            for index, child in enumerate(item):
                stack.append((child, f"{path}[{index}]", free))


# Fields of the dialects whose values are never free text: URLs, names, choices.
_KNOWN_STRICT = frozenset(
    {
        "model",
        "image_urls",
        "video_urls",
        "callback_url",
        "resolution",
        "aspect_ratio",
        "size",
        "generation_type",
        "seconds",
        "seed",
        "duration",
        "input_reference",
        "image_url",
        "language",
    }
)


def is_task_id(value: str) -> bool:
    """Whether ``value`` has the format of our task ids (``ids.new_task_id``).

    >>> is_task_id("task_01JH0000000000000000000000"), is_task_id("task_\\x00")
    (True, False)
    """
    return _TASK_ID.fullmatch(value) is not None


def task_id(value: str, what: str = "task") -> str:
    """``value`` when it can name one of our tasks; else ``NotFound`` (404), before any SQL."""
    if not is_task_id(value):
        from omniflash.errors import NotFound

        raise NotFound(f"No {what} {shown(value)} for this API key")
    return value


def cursor(value: str | None, field: str = "after") -> str | None:
    """A page cursor (the last task id of the previous page): ``None`` when not given,
    ``InvalidParam`` (400) when it cannot be a task id."""
    if value is None or value == "":
        return None
    if not is_task_id(value):
        raise _invalid(f"`{field}` must be a task id, as the previous page gave it", field)
    return value


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or ``None``.

    A token is 1 to 512 visible ASCII characters; anything else (no header, another
    scheme, a token with spaces, controls or non-ASCII bytes) is ``None``, so callers
    answer 401 without comparing or hashing it.

    >>> bearer_token("Bearer of_abc"), bearer_token("bearer  x "), bearer_token("Bearer é")
    ('of_abc', 'x', None)
    """
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip(" \t")
    if scheme.lower() != "bearer" or _TOKEN.fullmatch(token) is None:
        return None
    return token


def scrub(value: str) -> str:
    """``value`` with each lone surrogate replaced by U+FFFD: encodable as UTF-8.

    For text stored before the rules held, so that reading it never fails.
    """
    return _SURROGATE.sub("\ufffd", value)


def shown(value: object) -> str:
    """A client's value quoted for an error message: ``repr``, cut to ``MAX_SHOWN`` characters."""
    if isinstance(value, str):
        text = repr(value[: MAX_SHOWN + 1])
    elif isinstance(value, int | float | bool) or value is None:
        text = "a number" if isinstance(value, int) and value.bit_length() > 64 else repr(value)
    else:
        text = f"a{'n' if type(value).__name__[0] in 'aeiou' else ''} {type(value).__name__}"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
