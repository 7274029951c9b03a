"""The text rules: which characters are refused where, ids, cursors, Bearer tokens, scrubbing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniflash.errors import InvalidParam, NotFound
from omniflash.ids import new_task_id
from omniflash.text import (
    bad_char,
    bearer_token,
    check_text,
    check_tree,
    cursor,
    is_task_id,
    scrub,
    shown,
    task_id,
)

REFUSED_EVERYWHERE = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1f", "\x7f"]
REFUSED_EVERYWHERE += ["\x80", "\x85", "\x9f", "\ud800", "\udbff", "\udc00", "\udfff"]
WHITESPACE = ["\t", "\n", "\r"]
ALLOWED = [" ", "é", "猫", "\u00a0", "\u2028", "\ufeff", "\U0001f408", "\ufffd", "~"]


@pytest.mark.parametrize("char", REFUSED_EVERYWHERE)
def test_controls_and_surrogates_are_refused_in_every_field(char: str) -> None:
    assert bad_char(f"ab{char}c") == 2
    assert bad_char(f"ab{char}c", free=True) == 2
    with pytest.raises(InvalidParam) as caught:
        check_text(f"a{char}", "prompt", free=True)
    assert caught.value.param == "prompt" and f"U+{ord(char):04X}" in caught.value.message


@pytest.mark.parametrize("char", WHITESPACE)
def test_ordinary_whitespace_is_free_text_only(char: str) -> None:
    assert check_text(f"a{char}b", "prompt", free=True) == f"a{char}b"
    with pytest.raises(InvalidParam):
        check_text(f"a{char}b", "callback_url")


@pytest.mark.parametrize("char", ALLOWED)
def test_other_text_is_allowed(char: str) -> None:
    assert check_text(f"a{char}b", "name") == f"a{char}b"


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)))
def test_what_passes_can_be_stored_and_served(text: str) -> None:
    if bad_char(text, free=True) is None:
        encoded = text.encode("utf-8")  # no lone surrogate: UTF-8, orjson and PostgreSQL take it
        assert b"\x00" not in encoded
    assert scrub(text).encode("utf-8").decode("utf-8") == scrub(text)


def test_every_string_of_a_body_is_checked_and_named_by_its_path() -> None:
    check_tree({"prompt": "a\ncat", "meta": {"note": "line\none"}, "image_urls": ["https://x"]})
    for body, name in (
        ({"image_urls": ["ok", "a\x00"]}, "image_urls[1]"),
        ({"input": {"prompt": "\ud800"}}, "input.prompt"),
        ({"a\x00": 1}, "body key"),
        ({"callback_url": "https://x/\n"}, "callback_url"),
        ({"image_urls": ["https://x/\n"]}, "image_urls[0]"),
        ({"k" * 500: "\x00"}, "k" * 40 + "…"),
    ):
        with pytest.raises(InvalidParam) as caught:
            check_tree(body)
        assert caught.value.param == name, caught.value.param
        assert len(caught.value.message) < 300


def test_deep_nesting_is_checked_without_recursion() -> None:
    body: object = "\x00"
    for _ in range(100_000):
        body = [body]
    with pytest.raises(InvalidParam) as caught:
        check_tree(body)
    assert len(caught.value.message) < 300


def test_task_ids_and_cursors_by_their_format() -> None:
    real = new_task_id()
    assert is_task_id(real) and task_id(real) == real and cursor(real) == real
    assert cursor(None) is None and cursor("") is None
    for bad in ("", "task_", "task_x", real.lower(), real + "0", real[:-1] + "\x00", "\ud800"):
        assert not is_task_id(bad)
        with pytest.raises(NotFound):
            task_id(bad)
        if bad:
            with pytest.raises(InvalidParam) as caught:
                cursor(bad)
            assert caught.value.param == "after"
    with pytest.raises(NotFound) as not_found:
        task_id("x" * 100_000)
    assert len(not_found.value.message) < 200


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer of_abc-_.~", "of_abc-_.~"),
        ("bearer of_abc", "of_abc"),
        ("BEARER  of_abc  ", "of_abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic of_abc", None),
        ("Bearer a b", None),
        ("Bearer é", None),
        ("Bearer \xc3\xa9", None),  # UTF-8 bytes as Starlette decodes them (latin-1)
        ("Bearer a\x00", None),
        ("Bearer a\x7f", None),
        ("Bearer " + "a" * 513, None),
    ],
)
def test_one_bearer_parser(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_scrub_and_shown() -> None:
    assert scrub("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert scrub("猫 \U0001f408") == "猫 \U0001f408"
    assert shown("x" * 1000).startswith("'xxx") and len(shown("x" * 1000)) <= 60
    assert shown("\ud800") == "'\\ud800'"
    assert shown(10**5000) == "a number" and shown(4) == "4" and shown(None) == "None"
    assert shown({"a": 1}) == "a dict" and shown([1]) == "a list"


@pytest.mark.parametrize("free", [False, True])
def test_long_ascii_values_take_the_fast_path_to_the_same_answer(free: bool) -> None:
    long = "A" * 10_000
    assert bad_char(long, free=free) is None
    for char in ("\x00", "\x1f", "\x7f", "\t"):
        expected = None if free and char == "\t" else 9_000
        assert bad_char(long[:9_000] + char + long[9_001:], free=free) == expected
    assert bad_char(long + "\ud800", free=free) == 10_000  # not ASCII: the search finds it
