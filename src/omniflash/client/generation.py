"""What ``client.videos.generate`` sends: the request body and the call's options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

from omniflash.client.images import ImageInput, image_reference
from omniflash.client.models import MODEL, ProgressCallback

__all__ = ["GenerateAndWaitOptions", "GenerateOptions", "GenerationRequest"]


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """The body of ``POST /v1/videos/generations``; ``None`` fields are left out.

    >>> GenerationRequest("a red kite", duration=4).to_body()
    {'model': 'Omni-Flash-Ext', 'prompt': 'a red kite', 'duration': 4}
    """

    prompt: str
    duration: int | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    images: Sequence[ImageInput] = ()
    """Image URLs, ``data:`` URIs, local paths or raw bytes (sent as data URIs)."""
    video: str | None = None
    generation_type: Literal["frame", "reference"] | str | None = None
    seed: int | None = None
    extra: Mapping[str, Any] | None = None
    """Extra body fields for servers that accept them."""

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": MODEL, "prompt": self.prompt}
        optional = {
            "duration": self.duration,
            "resolution": self.resolution,
            "aspect_ratio": self.aspect_ratio,
            "generation_type": self.generation_type,
            "seed": self.seed,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.images:
            body["image_urls"] = [
                image_reference(image, index=i) for i, image in enumerate(self.images)
            ]
        if self.video is not None:
            body["video_urls"] = [self.video]
        if self.extra:
            body.update(self.extra)
        return body


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of ``client.videos.generate`` after the prompt."""

    duration: int | None
    """Seconds: 4, 6, 8 or 10; the server's default (6) when left out."""
    resolution: str | None
    aspect_ratio: str | None
    images: Sequence[ImageInput]
    """Image URLs, ``data:`` URIs, local paths or raw bytes (sent as data URIs)."""
    video: str | None
    """A reference video URL."""
    generation_type: str | None
    """``"frame"`` or ``"reference"``: how the images are used."""
    seed: int | None
    idempotency_key: str | None
    """Sent as the Idempotency-Key header; a fresh random one when left out."""
    extra_body: dict[str, Any] | None
    """Extra body fields for servers that accept them."""


class GenerateAndWaitOptions(GenerateOptions, total=False):
    """``generate``'s keyword arguments, and ``wait``'s ``timeout`` and ``on_progress``."""

    timeout: float | None
    on_progress: ProgressCallback | None
