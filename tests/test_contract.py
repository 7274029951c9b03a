from __future__ import annotations

from typing import Any

import pytest

from omniflash.contract import GenerationSpec, Mode, geometry, parse_generation_request
from omniflash.errors import (
    InvalidDuration,
    InvalidRequest,
    InvalidResolution,
    UnsupportedImageCount,
    UnsupportedVideoCount,
)

IMG = "https://example.com/a.png"
DATA_IMG = "data:image/png;base64,iVBORw0KGgo="
VID = "https://example.com/v.mp4"


def req(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "Omni-Flash-Ext", "prompt": "a cat"}
    body.update(fields)
    return body


def test_defaults() -> None:
    spec = parse_generation_request(req())
    assert (spec.duration, spec.resolution, spec.aspect_ratio) == (6, "720p", "16:9")
    assert (spec.width, spec.height, spec.frames, spec.mode) == (1280, 720, 144, Mode.TEXT)


@pytest.mark.parametrize(
    ("resolution", "ratio", "size"),
    [
        ("720p", "16:9", (1280, 720)),
        ("1080p", "16:9", (1920, 1080)),
        ("4k", "16:9", (3840, 2160)),
        ("720p", "9:16", (720, 1280)),
        ("1080p", "9:16", (1080, 1920)),
        ("4k", "9:16", (2160, 3840)),
        ("720p", "1:1", (720, 720)),
        ("1080p", "4:3", (1440, 1080)),
        ("720p", "3:4", (720, 960)),
        ("720p", "21:9", (1680, 720)),
        ("1080p", "21:9", (2528, 1080)),
    ],
)
def test_geometry(resolution: str, ratio: str, size: tuple[int, int]) -> None:
    assert geometry(resolution, ratio) == size
    long_side = max(size)
    assert long_side % 16 == 0 or ratio == "1:1"


def test_resolution_is_case_insensitive() -> None:
    assert parse_generation_request(req(resolution="4K")).resolution == "4k"
    assert parse_generation_request(req(resolution="1080P")).width == 1920


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"model": "other"}, InvalidRequest),
        ({"model": None}, InvalidRequest),
        ({"prompt": ""}, InvalidRequest),
        ({"prompt": "   "}, InvalidRequest),
        ({"prompt": 5}, InvalidRequest),
        ({"duration": 5}, InvalidDuration),
        ({"duration": 7}, InvalidDuration),
        ({"duration": 6.5}, InvalidDuration),
        ({"duration": "6"}, InvalidRequest),
        ({"duration": True}, InvalidRequest),
        ({"resolution": "480p"}, InvalidResolution),
        ({"resolution": 720}, InvalidRequest),
        ({"aspect_ratio": "2:1"}, InvalidRequest),
        ({"aspect_ratio": "16:9", "size": "9:16"}, InvalidRequest),
        ({"size": 3}, InvalidRequest),
        ({"generation_type": "morph"}, InvalidRequest),
        ({"image_urls": [IMG, IMG]}, UnsupportedImageCount),
        ({"image_urls": [IMG] * 4}, UnsupportedImageCount),
        ({"image_urls": [IMG] * 3, "generation_type": "frame"}, UnsupportedImageCount),
        ({"generation_type": "frame"}, UnsupportedImageCount),
        ({"generation_type": "reference"}, UnsupportedImageCount),
        ({"image_urls": "https://example.com/a.png"}, InvalidRequest),
        ({"image_urls": ["ftp://example.com/a.png"]}, InvalidRequest),
        ({"image_urls": ["data:text/plain;base64,aGk="]}, InvalidRequest),
        ({"image_urls": ["data:image/png;base64,@@@"]}, InvalidRequest),
        ({"video_urls": [VID, VID]}, UnsupportedVideoCount),
        ({"video_urls": ["file:///etc/passwd"]}, InvalidRequest),
        ({"video_urls": ["data:video/mp4;base64,AAAA"]}, InvalidRequest),
        ({"video_urls": [VID], "duration": 6}, InvalidRequest),
        ({"seed": -1}, InvalidRequest),
        ({"seed": 2**32}, InvalidRequest),
        ({"seed": "7"}, InvalidRequest),
    ],
)
def test_rejections(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        parse_generation_request(req(**fields))
    assert type(info.value) is error
    assert info.value.args[0]


def test_error_types_match_seed() -> None:
    assert InvalidDuration().type == "invalid_duration"
    assert InvalidResolution().type == "invalid_resolution"
    assert UnsupportedImageCount().type == "unsupported_image_count"
    assert UnsupportedVideoCount().type == "unsupported_video_count"
    assert InvalidRequest().to_dict() == {
        "error": {
            "code": 400,
            "message": "Invalid request parameters",
            "type": "invalid_request_error",
        }
    }


def test_non_object_body() -> None:
    with pytest.raises(InvalidRequest):
        parse_generation_request([1, 2])


def test_modes() -> None:
    assert parse_generation_request(req(image_urls=[IMG])).mode is Mode.FRAME
    assert parse_generation_request(req(image_urls=[DATA_IMG])).mode is Mode.FRAME
    one_ref = parse_generation_request(req(image_urls=[IMG], generation_type="reference"))
    assert (one_ref.mode, one_ref.image_role) == (Mode.REFERENCE, "reference")
    three = parse_generation_request(req(image_urls=[IMG] * 3))
    assert (three.mode, len(three.image_urls)) == (Mode.REFERENCE, 3)
    assert parse_generation_request(req(image_urls=[])).mode is Mode.TEXT
    video = parse_generation_request(req(video_urls=[VID], image_urls=[IMG] * 3))
    assert (video.mode, video.duration, video.video_url) == (Mode.VIDEO, None, VID)
    assert video.image_role == "reference"


@pytest.mark.parametrize(
    "uri",
    [
        "DATA:image/png;base64,iVBORw0KGgo=",
        "Data:Image/PNG;Base64,iVBORw0KGgo=",
        "data:IMAGE/JPEG;BASE64,/9j/4AAQ",
    ],
)
def test_data_uri_scheme_and_type_are_case_insensitive(uri: str) -> None:
    """RFC 3986 schemes and RFC 2045 types ignore case, and so does the fetcher."""
    spec = parse_generation_request(req(image_urls=[uri]))
    assert spec.image_urls == (uri,) and spec.mode is Mode.FRAME


def test_size_is_an_alias_and_may_agree() -> None:
    assert parse_generation_request(req(size="9:16")).aspect_ratio == "9:16"
    assert parse_generation_request(req(size="9:16", aspect_ratio="9:16")).width == 720


def test_unknown_fields_are_ignored_and_nulls_mean_default() -> None:
    spec = parse_generation_request(req(foo=1, duration=None, resolution=None, n=3))
    assert (spec.duration, spec.resolution) == (6, "720p")


def test_spec_round_trips_through_json() -> None:
    spec = parse_generation_request(req(image_urls=[IMG] * 3, seed=42, duration=10))
    assert GenerationSpec.from_json(spec.to_json()) == spec
