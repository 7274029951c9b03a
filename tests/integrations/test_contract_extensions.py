"""The contract's additions: callback_url, the OpenAI fields, remix, the JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from omniflash.api.docs.request_schema import request_json_schema
from omniflash.api.openai.requests import parse_openai_video_request, parse_remix_request
from omniflash.contract import (
    GenerationSpec,
    Mode,
    parse_generation_request,
)
from omniflash.errors import InvalidParam, InvalidRequest

BASE = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}


def test_callback_url_is_kept_and_checked() -> None:
    spec = parse_generation_request({**BASE, "callback_url": " https://hooks.example/x?a=1 "})
    assert spec.callback_url == "https://hooks.example/x?a=1"
    assert GenerationSpec.from_json(spec.to_json()) == spec
    for bad in ("ftp://example.com/", "not a url", 42, "https://" + "a" * 3000):
        with pytest.raises(InvalidParam) as exc:
            parse_generation_request({**BASE, "callback_url": bad})
        assert exc.value.param == "callback_url" and exc.value.status == 400


def test_specs_stored_before_the_new_fields_still_load() -> None:
    stored = json.loads(parse_generation_request(BASE).to_json())
    del stored["callback_url"], stored["remix_of"]
    spec = GenerationSpec.from_dict(stored)
    assert spec.callback_url is None and spec.remix_of is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prompt": "x"}, ("720p", "16:9", 1280, 720, 4)),
        ({"prompt": "x", "size": "1080x1920", "seconds": "10"}, ("1080p", "9:16", 1080, 1920, 10)),
        ({"prompt": "x", "size": "3840x2160", "seconds": 6}, ("4k", "16:9", 3840, 2160, 6)),
        (
            {"prompt": "x", "model": "Omni-Flash-Ext", "seconds": "8"},
            ("720p", "16:9", 1280, 720, 8),
        ),
    ],
)
def test_openai_fields(fields: dict[str, Any], expected: tuple[object, ...]) -> None:
    spec = parse_openai_video_request(fields)
    assert (spec.resolution, spec.aspect_ratio, spec.width, spec.height, spec.duration) == expected
    assert spec.mode is Mode.TEXT


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": "x", "seconds": "12"}, "seconds"),
        ({"prompt": "x", "seconds": "5"}, "seconds"),
        ({"prompt": "x", "size": "1024x1792"}, "size"),
        ({"prompt": "x", "model": "sora-2"}, "model"),
        ({"prompt": " "}, "prompt"),
        ({"prompt": "x" * 6000}, "prompt"),
        ({"prompt": "x", "seed": "-1"}, "seed"),
        ({"prompt": "x", "callback_url": "file:///etc/passwd"}, "callback_url"),
    ],
)
def test_openai_errors_name_their_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParam) as exc:
        parse_openai_video_request(fields)
    assert exc.value.param == param


def test_openai_input_reference_is_a_first_frame() -> None:
    uri = "data:image/png;base64,iVBORw0KGgo="
    spec = parse_openai_video_request({"prompt": "x"}, input_reference=uri)
    assert (spec.mode, spec.image_urls, spec.image_role) == (Mode.FRAME, (uri,), "frame")
    with pytest.raises(InvalidParam) as exc:
        parse_openai_video_request({"prompt": "x"}, input_reference="data:text/plain;base64,aA==")
    assert exc.value.param == "input_reference"


def test_remix_keeps_everything_but_the_prompt() -> None:
    source = parse_generation_request(
        {**BASE, "resolution": "1080p", "aspect_ratio": "21:9", "callback_url": "https://a.b/c"}
    )
    remix = parse_remix_request(source, "task_1", {"prompt": "  a dog "})
    assert remix.prompt == "a dog" and remix.remix_of == "task_1"
    assert (remix.width, remix.height, remix.callback_url) == (2528, 1080, "https://a.b/c")
    other = parse_remix_request(source, "task_1", {"prompt": "p", "callback_url": "https://x.y"})
    assert other.callback_url == "https://x.y"
    with pytest.raises(InvalidParam):
        parse_remix_request(source, "task_1", {})


@pytest.mark.parametrize(
    "body",
    [
        BASE,
        {**BASE, "resolution": "1080P", "aspect_ratio": "9:16", "seed": 7},
        {**BASE, "image_urls": ["https://e.com/a.png", "data:image/png;base64,iVBO"]},
        {"model": "Omni-Flash-Ext", "prompt": "v", "video_urls": ["https://e.com/v.mp4"]},
        {**BASE, "callback_url": "https://hooks.example/omniflash"},
    ],
)
def test_the_schema_accepts_what_the_parser_accepts(body: dict[str, Any]) -> None:
    schema = request_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(body)


@pytest.mark.parametrize(
    "body",
    [
        {**BASE, "model": "gpt"},
        {**BASE, "duration": 5},
        {**BASE, "resolution": "8k"},
        {**BASE, "aspect_ratio": "2:1"},
        {**BASE, "image_urls": ["a", "b", "c", "d"]},
        {**BASE, "video_urls": ["ftp://e.com/v.mp4"]},
        {**BASE, "seed": -1},
        {**BASE, "callback_url": "ftp://x"},
        {"model": "Omni-Flash-Ext"},
    ],
)
def test_the_schema_refuses_what_the_parser_refuses(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        parse_generation_request(body)
    assert not jsonschema.Draft202012Validator(request_json_schema()).is_valid(body)
