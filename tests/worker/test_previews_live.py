"""Previews end to end: a real server with the preview engine, a task, its event stream,
and each ``preview`` event's signed URL downloaded as a WebP image.

Once with the server's own worker (the store as its source), once with a remote worker
(``omniflash worker``, previews sent over ``/worker/v1``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import av
import httpx
import numpy
import pytest
from PIL import Image

from omniflash.engines.preview import preview_every
from tests.conftest import running_server
from tests.events.sse import events_of, read_until, submit
from tests.remote.conftest import running_worker

FRAMES = 4 * 24
EVERY_PREVIEW = {"OMNIFLASH_PREVIEW_INTERVAL_S": "0", "OMNIFLASH_LEASE_SECONDS": "30"}


def thumbnail(picture: Image.Image) -> numpy.ndarray:
    return numpy.asarray(picture.convert("L").resize((64, 36), Image.Resampling.BOX), float)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("where", ["in-process", "remote"])
def test_preview_events_download_as_webp_and_end_on_the_video(tmp_path: Path, where: str) -> None:
    workers = "1" if where == "in-process" else "0"
    with running_server(tmp_path, "--workers", workers, **EVERY_PREVIEW) as server:
        worker = (
            running_worker(server, "w", **EVERY_PREVIEW)
            if where == "remote"
            else contextlib.nullcontext()
        )
        with worker, server.client() as client:
            task_id = submit(client, "a red kite over the sea")
            # From the first event on, whenever the stream opens.
            path = f"/v1/tasks/{task_id}/events"
            with client.stream("GET", path, headers={"Last-Event-ID": "0"}) as response:
                events = read_until(events_of(response), "end")
            previews = [e for e in events if e.kind == "preview"]
            assert [e.data["index"] for e in previews] == list(
                range(FRAMES // preview_every(FRAMES))
            )
            pictures = []
            for event in previews:
                assert event.data["task_id"] == task_id
                assert 0 <= event.data["progress"] <= 99
                # A signed URL: no key needed.
                answer = httpx.get(event.data["url"], timeout=30)
                assert answer.status_code == 200, answer.text
                picture = Image.open(io.BytesIO(answer.content))
                picture.load()
                assert picture.format == "WEBP"
                assert picture.size == (event.data["width"], event.data["height"]) == (320, 180)
                pictures.append(picture)
            task = events[-1].data["task"]
            assert task["status"] == "completed"
            video = httpx.get(task["result"]["videos"][0]["url"][0], timeout=30)
            assert video.status_code == 200
        with av.open(io.BytesIO(video.content)) as container:
            last = list(container.decode(container.streams.video[0]))[-1].to_image()
        # The last preview is the video's last frame (tests/engines/test_preview_frames.py
        # states the measure); the first is not.
        assert numpy.abs(thumbnail(pictures[-1]) - thumbnail(last)).mean() <= 4.0
        assert numpy.abs(thumbnail(pictures[0]) - thumbnail(last)).mean() > 4.0
