"""The diffusers engine behind the real server: HTTP in, worker, tiny models, mp4 out.

One ``omniflash serve --engine diffusers`` process for the module, its recipes
pointing at the tiny random-weight Wan folders; the VACE folder is missing, so
reference tasks show how a model that cannot be loaded fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy
import pytest

from tests.conftest import LiveServer, running_server, wait_for_task
from tests.engines.diffusion.tiny_inputs import Decoded, data_uri, solid
from tests.engines.diffusion.tiny_models import recipes_toml

pytestmark = pytest.mark.diffusers

# The worker's first task waits for its engine: torch, diffusers and the models load.
FIRST_TASK_TIMEOUT = 110


@pytest.fixture(scope="module")
def server(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("diffusers-server")
    recipes = root / "recipes.toml"
    recipes.write_text(recipes_toml(dict(tiny_models, **{"wan-vace": root / "missing-vace"})))
    with running_server(
        root,
        "--engine",
        "diffusers",
        OMNIFLASH_RECIPES=str(recipes),
        # A shared 2-core machine: one steady thread beats threads spinning against others.
        OMP_NUM_THREADS="1",
    ) as live:
        yield live


def submit(server: LiveServer, **fields: Any) -> str:
    body = {"model": "Omni-Flash-Ext", "prompt": "a paper boat on a pond", "duration": 4}
    body.update(fields)
    with server.client() as client:
        response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["task_id"])


def finish(server: LiveServer, task_id: str) -> dict[str, Any]:
    with server.client() as client:
        data = wait_for_task(client, task_id, timeout=FIRST_TASK_TIMEOUT)
    return dict(data)


def download(data: dict[str, Any]) -> Decoded:
    assert data["status"] == "completed", data
    response = httpx.get(data["result"]["videos"][0]["url"][0], timeout=30)
    assert response.status_code == 200, response.text
    return Decoded(response.content)


def test_text_and_first_frame_tasks_finish_as_requested_mp4s(server: LiveServer) -> None:
    text = submit(server)
    frame = submit(
        server,
        image_urls=[data_uri(solid((200, 40, 40)))],
        generation_type="frame",
        resolution="720p",
        aspect_ratio="9:16",
    )
    text_data, frame_data = finish(server, text), finish(server, frame)
    for data, size, frames in ((text_data, (1280, 720), 96), (frame_data, (720, 1280), 96)):
        clip = download(data)
        assert clip.size == size and len(clip.frames) == frames
        assert (clip.codec, clip.pix_fmt, clip.fps, clip.faststart) == ("h264", "yuv420p", 24, True)
        assert data["progress"] == 100 and data["cost"] > 0
    assert frame_data["request"]["mode"] == "frame"
    # The worker says what it runs: engine, recipes file, CUDA, and each model it loaded.
    log = server.log()
    assert "engine diffusers, 1 worker(s)" in log, "one copy of the models unless asked"
    assert "diffusers engine: recipes " in log and "recipes.toml" in log
    assert "text→t2v, frame→i2v, reference→vace, video→vace); CUDA absent; device cpu" in log
    assert "recipe t2v: WanPipeline from " in log
    # Without a seed in the request the server picks one and shows it.
    assert isinstance(text_data["request"]["seed"], int)


def test_the_same_seed_gives_the_same_frames(server: LiveServer) -> None:
    first, again = (submit(server, seed=4242) for _ in range(2))
    other = submit(server, seed=4243)
    clips = {t: download(finish(server, t)) for t in (first, again, other)}
    assert numpy.array_equal(clips[first].frames, clips[again].frames)
    assert not numpy.array_equal(clips[first].frames, clips[other].frames)
    assert finish(server, first)["request"]["seed"] == 4242
    # The worker loaded its models once and kept them for every task since.
    assert server.log().count("recipe t2v: WanPipeline from ") == 1


def balance(server: LiveServer) -> float:
    with server.client() as client:
        return float(client.get("/v1/account").json()["data"]["balance"])


def test_a_model_that_cannot_load_fails_the_task_and_refunds(server: LiveServer) -> None:
    before = balance(server)
    task = submit(server, image_urls=[data_uri(solid((40, 40, 200)))], generation_type="reference")
    data = finish(server, task)
    assert data["status"] == "failed" and data["cost"] == 0
    assert balance(server) == before
    message = data["error"]["message"]
    assert "could not load model" in message and "missing-vace" in message, message
    # The worker survived: the next task still completes.
    assert finish(server, submit(server))["status"] == "completed"
