"""The wire rules of the Omni-Flash-Ext API: a request body in, a ``GenerationSpec`` out.

Pure functions, no I/O, and nothing of the API.  Every rule of the seed documents lives
here, with the spec every dialect, the store and the workers share (``GenerationSpec``,
``Mode``); inline images' own rules are ``omniflash.data_uris``'.  The OpenAI dialect maps
its fields onto these rules (``omniflash.api.openai.requests``), and the API's docs
describe them as JSON Schema (``omniflash.api.docs.request_schema``)::

    >>> spec = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a cat"})
    >>> (spec.mode, spec.width, spec.height, spec.duration, spec.frames)
    (<Mode.TEXT: 'text'>, 1280, 720, 6, 144)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from omniflash.data_uris import is_data_image
from omniflash.errors import (
    InvalidDuration,
    InvalidParam,
    InvalidRequest,
    InvalidResolution,
    UnsupportedImageCount,
    UnsupportedVideoCount,
)
from omniflash.text import check_text, check_tree, shown

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_ASPECT_RATIO",
    "DEFAULT_DURATION",
    "DEFAULT_RESOLUTION",
    "DURATIONS",
    "FPS",
    "MAX_CALLBACK_URL_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MODEL_NAME",
    "RESOLUTIONS",
    "VIDEO_SECONDS_RANGE",
    "GenerationSpec",
    "Mode",
    "geometry",
    "is_http_url",
    "parse_callback_url",
    "parse_generation_request",
]

MODEL_NAME = "Omni-Flash-Ext"
DURATIONS = (4, 6, 8, 10)
RESOLUTIONS = {"720p": 720, "1080p": 1080, "4k": 2160}
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9")
FPS = 24
MAX_SEED = 2**32 - 1
# A reference video is re-timed to its own length, clamped to this range.
VIDEO_SECONDS_RANGE = (4, 10)
DEFAULT_DURATION = 6
DEFAULT_RESOLUTION = "720p"
DEFAULT_ASPECT_RATIO = "16:9"
MAX_PROMPT_CHARS = 5000


class Mode(enum.StrEnum):
    """How a task uses its inputs."""

    TEXT = "text"
    """Text-to-video: no images, no video."""
    FRAME = "frame"
    """First frame: one image starts the video."""
    REFERENCE = "reference"
    """Reference images: 1 or 3 images guide identity and composition."""
    VIDEO = "video"
    """Reference video: its motion and structure, optionally with images."""


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """A validated generation request."""

    prompt: str
    mode: Mode
    resolution: str
    aspect_ratio: str
    width: int
    height: int
    duration: int | None
    """Seconds; ``None`` for a reference video, whose length decides (4–10 s)."""
    image_urls: tuple[str, ...] = ()
    video_url: str | None = None
    image_role: str | None = None
    """``"frame"`` or ``"reference"`` when images are given."""
    seed: int | None = None
    fps: int = FPS
    callback_url: str | None = None
    """Where a signed webhook is POSTed when the task ends."""
    remix_of: str | None = None
    """The task this one remixes (OpenAI videos ``remix``): its settings, a new prompt."""

    @property
    def frames(self) -> int | None:
        return None if self.duration is None else self.duration * self.fps

    @property
    def billed_seconds(self) -> int:
        """Seconds charged at submit: a reference video is held at the maximum length."""
        return self.duration if self.duration is not None else VIDEO_SECONDS_RANGE[1]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mode"] = self.mode.value
        data["image_urls"] = list(self.image_urls)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSpec:
        fields = dict(data)
        fields["mode"] = Mode(fields["mode"])
        fields["image_urls"] = tuple(fields["image_urls"])
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> GenerationSpec:
        return cls.from_dict(json.loads(text))

    def with_duration(self, seconds: int) -> GenerationSpec:
        return dataclasses.replace(self, duration=seconds)


def geometry(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """Width and height: the resolution names the short side; the long side is a multiple of 16.

    >>> geometry("1080p", "9:16"), geometry("720p", "21:9")
    ((1080, 1920), (1680, 720))
    """
    short = RESOLUTIONS[resolution]
    a, b = (int(part) for part in aspect_ratio.split(":"))
    big, small = max(a, b), min(a, b)
    long = short if big == small else round(short * big / small / 16) * 16
    return (long, short) if a >= b else (short, long)


def is_http_url(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _string_list(body: Mapping[str, Any], field: str) -> list[str]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"`{field}` must be an array of URL strings")
    return [v.strip() for v in value]


def _ratio(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f'`{field}` must be a string such as "16:9"')
    value = value.strip()
    if value not in ASPECT_RATIOS:
        raise InvalidRequest(
            f"`{field}` {shown(value)} is not supported; use one of {', '.join(ASPECT_RATIOS)}"
        )
    return value


def _duration(body: Mapping[str, Any], has_video: bool) -> int | None:
    value = body.get("duration")
    if value is None:
        return None if has_video else DEFAULT_DURATION
    if has_video:
        raise InvalidRequest(
            "`duration` and `video_urls` cannot be passed together: "
            "a reference video's own length decides the output length"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("`duration` must be an integer number of seconds: 4, 6, 8 or 10")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise InvalidDuration(f"invalid duration {value}, must be one of 4/6/8/10")
    if int(value) not in DURATIONS:
        raise InvalidDuration(f"invalid duration {shown(int(value))}, must be one of 4/6/8/10")
    return int(value)


def _seed(body: Mapping[str, Any]) -> int | None:
    value = body.get("seed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise InvalidRequest(f"`seed` must be an integer from 0 to {MAX_SEED}")
    return value


def parse_generation_request(body: object) -> GenerationSpec:
    """Validate a decoded JSON body of ``POST /v1/videos/generations``.

    Raises the seed's errors (``InvalidRequest`` and its subclasses) with a message
    that tells the caller what to fix.  Unknown fields are ignored, but their text too
    follows ``omniflash.text``'s rules, as every string of the body does.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object")
    check_tree(body)

    model = body.get("model")
    if model != MODEL_NAME:
        raise InvalidRequest(f"`model` must be {MODEL_NAME!r}, got {shown(model)}")

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("`prompt` is required and must be a non-empty string")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"`prompt` is too long: at most {MAX_PROMPT_CHARS} characters")

    images = _string_list(body, "image_urls")
    videos = _string_list(body, "video_urls")

    generation_type = body.get("generation_type")
    if generation_type is not None and generation_type not in ("frame", "reference"):
        raise InvalidRequest('`generation_type` must be "frame" or "reference"')

    count = len(images)
    if count == 2:
        raise UnsupportedImageCount(
            "2 images are not supported (no first+last frame mode); pass 0, 1 or 3 image_urls"
        )
    if count >= 4:
        raise UnsupportedImageCount(f"{count} images are not supported; pass 0, 1 or 3 image_urls")
    if generation_type == "frame" and count != 1:
        raise UnsupportedImageCount(
            f'generation_type "frame" takes exactly 1 image in image_urls, got {count}'
        )
    if generation_type == "reference" and count == 0:
        raise UnsupportedImageCount('generation_type "reference" takes 1 or 3 images, got 0')
    if len(videos) >= 2:
        raise UnsupportedVideoCount(
            f"{len(videos)} reference videos are not supported; pass 0 or 1 video_urls"
        )

    duration = _duration(body, has_video=bool(videos))

    resolution_value = body.get("resolution", DEFAULT_RESOLUTION)
    if resolution_value is None:
        resolution_value = DEFAULT_RESOLUTION
    if not isinstance(resolution_value, str):
        raise InvalidRequest("`resolution` must be a string: 720p, 1080p or 4k")
    resolution = resolution_value.strip().lower()
    if resolution not in RESOLUTIONS:
        raise InvalidResolution(
            f"invalid resolution {shown(resolution_value)}, must be one of 720p/1080p/4k"
        )

    aspect = _ratio(body, "aspect_ratio")
    size = _ratio(body, "size")
    if aspect is not None and size is not None and aspect != size:
        raise InvalidRequest(
            f"`size` ({size}) and `aspect_ratio` ({aspect}) disagree; pass one, or the same value"
        )
    aspect_ratio = aspect or size or DEFAULT_ASPECT_RATIO

    for index, url in enumerate(images):
        if not (is_data_image(url) or is_http_url(url)):
            raise InvalidRequest(
                f"image_urls[{index}] must be an http(s) URL or a data:image/...;base64, URI"
            )
    for index, url in enumerate(videos):
        if not is_http_url(url):
            raise InvalidRequest(f"video_urls[{index}] must be an http(s) URL")

    image_role: str | None = None
    if count:
        image_role = generation_type or ("frame" if count == 1 else "reference")
    if videos:
        mode = Mode.VIDEO
    elif image_role == "frame":
        mode = Mode.FRAME
    elif image_role == "reference":
        mode = Mode.REFERENCE
    else:
        mode = Mode.TEXT

    width, height = geometry(resolution, aspect_ratio)
    return GenerationSpec(
        prompt=prompt,
        mode=mode,
        resolution=resolution,
        aspect_ratio=aspect_ratio,
        width=width,
        height=height,
        duration=duration,
        image_urls=tuple(images),
        video_url=videos[0] if videos else None,
        image_role=image_role,
        seed=_seed(body),
        callback_url=parse_callback_url(body.get("callback_url")),
    )


# -- the extension shared by every dialect -------------------------------------------------------

MAX_CALLBACK_URL_CHARS = 2048


def parse_callback_url(value: object) -> str | None:
    """A webhook address: an absolute http(s) URL, or ``None`` when not given.

    Whether its host may be reached is decided when the webhook is sent (the address
    rules of input fetching), not here: that needs DNS.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidParam("`callback_url` must be an http(s) URL string", "callback_url")
    value = check_text(value.strip(), "callback_url")
    if len(value) > MAX_CALLBACK_URL_CHARS:
        raise InvalidParam(
            f"`callback_url` is too long: at most {MAX_CALLBACK_URL_CHARS} characters",
            "callback_url",
        )
    if not is_http_url(value):
        raise InvalidParam("`callback_url` must be an absolute http or https URL", "callback_url")
    return value
