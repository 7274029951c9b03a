"""The contract's parsers under arbitrary JSON: a spec or a 400 out, never another exception.

Bodies are drawn from all of JSON as Python's ``json.loads`` can produce it: huge
integers, NaN and infinities, text with NUL, controls and lone surrogates, nesting; and
valid requests of each dialect with one field replaced by such a value.  A spec that comes
out must survive what the store and the answers do with it: ``to_json``/``from_json`` give
it back, and all of its text encodes as UTF-8.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniflash.api.mcp.server import _texts
from omniflash.api.openai.requests import parse_openai_video_request, parse_remix_request
from omniflash.contract import GenerationSpec, parse_callback_url, parse_generation_request
from omniflash.errors import InvalidRequest
from omniflash.text import bad_char

pytestmark = pytest.mark.timeout(120)

EXAMPLES = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as JSON can carry it: any code point, lone surrogates included (``"\ud800"``).
# Hypothesis leaves surrogates out of ``characters()`` unless told; the controls and
# surrogates are drawn often on purpose: they are what the rules are about.
characters = st.one_of(
    st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\x01", "\x1b", "\x7f", "\x85", "\t", "\n"]),
)
hostile_text = st.one_of(
    st.text(characters, max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            "\udfff",
            "a\x1bb",
            "\x7f",
            "\x85",
            "a\tb\nc\r",
            "https://example.com/a.png",
            "https://example.com/\x00.png",
            "https://exa\ud800mple.com/",
            "data:image/png;base64,iVBORw0KGgo=",
            "720p",
            "16:9",
            "1280x720",
            "Omni-Flash-Ext",
            "4",
            "x" * 6000,
        ]
    ),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**30, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(10**30)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([4, 6, 8, 10, 4.0, 6.5, -1, 0, 2**31, 2**63, 1e400, -1e400]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)

EXT_FIELDS = (
    "model",
    "prompt",
    "duration",
    "resolution",
    "aspect_ratio",
    "size",
    "generation_type",
    "image_urls",
    "video_urls",
    "seed",
    "callback_url",
    "negative_prompt",
)
OPENAI_FIELDS = ("model", "prompt", "seconds", "size", "seed", "callback_url", "input_reference")


def valid_ext() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just("Omni-Flash-Ext"), "prompt": st.just("a cat")},
        optional={
            "duration": st.sampled_from([4, 6, 8, 10]),
            "resolution": st.sampled_from(["720p", "1080p", "4k"]),
            "aspect_ratio": st.sampled_from(["16:9", "9:16", "1:1"]),
            "image_urls": st.just(["https://example.com/a.png"]),
            "seed": st.integers(0, 2**32 - 1),
            "callback_url": st.just("https://hooks.example.com/x"),
        },
    )


def mutated(base: st.SearchStrategy[dict[str, Any]], fields: tuple[str, ...]) -> Any:
    """A valid body with one field (known or not) replaced by an arbitrary JSON value."""
    return st.tuples(base, st.sampled_from(fields) | hostile_text, json_values).map(
        lambda t: {**t[0], t[1]: t[2]}
    )


def assert_sound(spec: GenerationSpec) -> None:
    """What the store and the answers need of an accepted spec."""
    assert GenerationSpec.from_json(spec.to_json()) == spec
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str):
                text.encode("utf-8")  # no lone surrogate
                assert bad_char(text, free=field.name == "prompt") is None, (field.name, text)
    assert spec.prompt.strip() and len(spec.prompt) <= 5000
    assert spec.width > 0 and spec.height > 0
    assert spec.duration is None or spec.duration in (4, 6, 8, 10)


def outcome(parse: Any, *args: Any, **kwargs: Any) -> GenerationSpec | None:
    """The parser's spec, or ``None`` for a 400; any other exception fails the test."""
    try:
        spec = parse(*args, **kwargs)
    except InvalidRequest as exc:
        assert exc.status == 400
        exc.message.encode("utf-8")  # the error itself can be sent
        assert len(exc.message) < 400, exc.message
        return None
    assert_sound(spec)
    return spec  # type: ignore[no-any-return]


@EXAMPLES
@given(st.one_of(json_values, mutated(valid_ext(), EXT_FIELDS)))
def test_generation_request_is_a_spec_or_a_400(body: Any) -> None:
    outcome(parse_generation_request, body)


@EXAMPLES
@given(
    st.one_of(
        st.dictionaries(hostile_text, json_values, max_size=6),
        mutated(st.just({"prompt": "a cat", "seconds": "4", "size": "720x1280"}), OPENAI_FIELDS),
        # Multipart: every value a string.
        st.dictionaries(st.sampled_from(OPENAI_FIELDS), hostile_text, max_size=6),
    ),
    st.one_of(st.none(), hostile_text),
)
def test_openai_request_is_a_spec_or_a_400(fields: Any, reference: str | None) -> None:
    outcome(parse_openai_video_request, fields, input_reference=reference)


SOURCE = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4})


@EXAMPLES
@given(st.one_of(json_values, mutated(st.just({"prompt": "a dog"}), ("prompt", "callback_url"))))
def test_remix_request_is_a_spec_or_a_400(body: Any) -> None:
    spec = outcome(parse_remix_request, SOURCE, "task_01JH0000000000000000000000", body)
    if spec is not None:
        assert spec.remix_of == "task_01JH0000000000000000000000"


@EXAMPLES
@given(json_values)
def test_callback_url_is_a_url_or_a_400(value: Any) -> None:
    try:
        url = parse_callback_url(value)
    except InvalidRequest as exc:
        assert exc.status == 400 and getattr(exc, "param", None) == "callback_url"
        return
    assert url is None or (
        url.encode("utf-8") and bad_char(url) is None and url.lower().startswith("http")
    )


@EXAMPLES
@given(
    st.one_of(json_values, mutated(valid_ext(), EXT_FIELDS)),
    st.one_of(st.just("Omni-Flash-Ext"), hostile_text),
    st.one_of(st.just("key-1"), hostile_text),
)
def test_mcp_generate_video_arguments_are_a_spec_or_a_400(
    input: Any, model: str, idempotency_key: str
) -> None:
    """``generate_video``'s own checks, in its order: its text arguments, then the body."""

    def parse() -> GenerationSpec:
        _texts(model=model, idempotency_key=idempotency_key)
        body = {**input, "model": model} if isinstance(input, dict) else input
        return parse_generation_request(body)

    outcome(parse)


@pytest.mark.parametrize(
    "text",
    ["\x00", "\ud800", "\udc00", "\x01", "\x1f", "\x7f", "\x9f", "a\x00b", "ok\ud83d"],
)
@pytest.mark.parametrize(
    "field",
    ["prompt", "image_urls", "video_urls", "callback_url", "resolution", "model", "other"],
)
def test_every_text_field_refuses_nul_surrogates_and_controls(field: str, text: str) -> None:
    body: dict[str, Any] = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}
    if field in ("image_urls", "video_urls"):
        body.pop("duration")
        body[field] = [f"https://example.com/{text}.png"]
    elif field == "callback_url":
        body[field] = f"https://example.com/{text}"
    elif field == "prompt":
        body[field] = f"a cat {text}"
    else:
        body[field] = text
    with pytest.raises(InvalidRequest) as caught:
        parse_generation_request(body)
    assert field in caught.value.message
    # the same in the OpenAI dialect, which names the field in ``param``
    fields = {"prompt": "a cat", field: body[field]}
    if field in ("image_urls", "video_urls"):
        fields = {"prompt": "a cat", "input_reference": body[field][0]}
    with pytest.raises(InvalidRequest) as caught:
        parse_openai_video_request(fields)
    assert getattr(caught.value, "param", None) in (field, "input_reference")


def test_a_prompt_keeps_its_tabs_and_newlines() -> None:
    spec = parse_generation_request(
        {"model": "Omni-Flash-Ext", "prompt": "a cat\n\tjumps\r\nhigh", "duration": 4}
    )
    assert spec.prompt == "a cat\n\tjumps\r\nhigh"
    with pytest.raises(InvalidRequest):
        parse_generation_request(
            {"model": "Omni-Flash-Ext", "prompt": "a cat", "callback_url": "https://x.y/\n"}
        )


def test_messages_never_echo_a_huge_value() -> None:
    huge = "9" * 100_000
    for body in (
        {"model": huge, "prompt": "a"},
        {"model": "Omni-Flash-Ext", "prompt": "a", "resolution": huge},
        {"model": "Omni-Flash-Ext", "prompt": "a", "duration": 10**400},
    ):
        with pytest.raises(InvalidRequest) as caught:
            parse_generation_request(body)
        assert len(caught.value.message) < 300
    for fields in ({"prompt": "a", "seconds": 10**5000}, {"prompt": "a", "seed": "9" * 5000}):
        with pytest.raises(InvalidRequest) as caught:
            parse_openai_video_request(fields)
        assert len(caught.value.message) < 300
