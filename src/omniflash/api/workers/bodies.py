"""The bodies of ``/worker/v1/`` requests, bounded, and the checks of what a worker reports.

Every number is bounded (an epoch is a non-negative 31-bit integer; NaN and infinities
are refused), every text refuses NUL, other control characters and lone surrogates, and
a worker's report of its result is refused when it names a video the task did not ask
for.  The report is kept as information only: the price comes from the checked file.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from omniflash.contract import VIDEO_SECONDS_RANGE, GenerationSpec
from omniflash.errors import InvalidRequest
from omniflash.media.mp4check import FRAME_TOLERANCE

__all__ = [
    "ClaimRequest",
    "CompleteRequest",
    "Epoch",
    "EpochQuery",
    "FailRequest",
    "HeartbeatRequest",
    "LeaseRequest",
    "ResultReport",
    "reported",
]

EPOCH_LIMIT = 2**31
"""Epochs are below this (the column is a 32-bit integer)."""
MAX_INFO_BYTES = 16 * 1024
"""The most JSON a worker may attach to a result as information."""
# C0 controls but tab, newline and carriage return, DEL, and lone surrogates.
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

Epoch = Annotated[int, Field(ge=0, lt=EPOCH_LIMIT)]
EpochQuery = Annotated[int, Query(ge=0, lt=EPOCH_LIMIT)]


def _clean(value: str) -> str:
    if _BAD_TEXT.search(value):
        raise ValueError("must not contain NUL, control characters or lone surrogates")
    return value


class ClaimRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=60, description="the worker loop's own name")
    wait_s: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="how long to wait for a task"
    )

    _owner = field_validator("owner")(_clean)


class LeaseRequest(BaseModel):
    epoch: Epoch


class HeartbeatRequest(LeaseRequest):
    progress: int = Field(default=0, ge=0, le=100)


class FailRequest(LeaseRequest):
    message: str = Field(max_length=4000)
    retry: bool = False

    _message = field_validator("message")(_clean)


class ResultReport(BaseModel):
    """What the worker says it made: information only, refused when the task did not ask
    for it.  The server prices what it reads in the file itself."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    frames: int | None = Field(default=None, ge=1, le=100_000)
    width: int | None = Field(default=None, ge=1, le=16_384)
    height: int | None = Field(default=None, ge=1, le=16_384)
    fps: float | None = Field(default=None, gt=0, le=1000)
    duration: float | None = Field(default=None, gt=0, le=3600)


class CompleteRequest(LeaseRequest):
    result: ResultReport = Field(default_factory=ResultReport)


def reported(report: ResultReport, spec: GenerationSpec) -> dict[str, Any]:
    """The worker's numbers as information, once they are ones the task asked for."""
    wrong: list[str] = []
    if report.width is not None and report.width != spec.width:
        wrong.append(f"width {report.width} (the task asked for {spec.width})")
    if report.height is not None and report.height != spec.height:
        wrong.append(f"height {report.height} (the task asked for {spec.height})")
    if report.fps is not None and not math.isclose(report.fps, spec.fps, rel_tol=0.01):
        wrong.append(f"fps {report.fps} (the task asked for {spec.fps})")
    low, high = (spec.duration, spec.duration) if spec.duration is not None else VIDEO_SECONDS_RANGE
    if report.duration is not None and not low - 0.5 <= report.duration <= high + 0.5:
        wrong.append(f"duration {report.duration} (the task allows {low} to {high} s)")
    if report.frames is not None and not (
        low * spec.fps - FRAME_TOLERANCE <= report.frames <= high * spec.fps + FRAME_TOLERANCE
    ):
        wrong.append(
            f"frames {report.frames} (the task allows {low * spec.fps} to {high * spec.fps})"
        )
    if wrong:
        raise InvalidRequest("result: " + "; ".join(wrong))
    reported = report.model_dump(exclude_none=True)
    try:
        size = len(json.dumps(reported, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest("result: not plain JSON (NaN, Infinity or nested too deep)") from exc
    if size > MAX_INFO_BYTES or not _plain(reported):
        raise InvalidRequest(
            f"result: at most {MAX_INFO_BYTES} bytes, text without control characters"
        )
    return reported


def _plain(value: Any) -> bool:
    """No string anywhere in ``value`` (keys included) holds NUL, controls or surrogates."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _BAD_TEXT.search(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
