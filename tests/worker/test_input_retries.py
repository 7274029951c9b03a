"""A task whose input's server answers 503 for a while is run again, not failed: a real
server process with a worker, and a real image server that recovers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from omniflash.store import Store
from tests.conftest import running_server, wait_for_task
from tests.media.test_fetch_retries import Flaky
from tests.store.test_races import assert_money

pytestmark = pytest.mark.timeout(180)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 200, 90)).save(out, "PNG")
    return out.getvalue()


def test_an_input_server_that_recovers_gets_the_task_done(tmp_path: Path) -> None:
    images = Flaky(_png())
    try:
        with running_server(tmp_path, "--workers", "1") as server, server.client() as http:

            def submit(path: str) -> str:
                body = {
                    "model": "Omni-Flash-Ext",
                    "prompt": "a flaky input",
                    "duration": 4,
                    "image_urls": [images.base + path],
                }
                response = http.post("/v1/videos/generations", json=body)
                assert response.status_code == 200, response.text
                return str(response.json()["data"][0]["task_id"])

            # Three tries in the first attempt (all 503), then a second attempt succeeds.
            recovers = submit("/503/4/a.png")
            assert wait_for_task(http, recovers, timeout=120)["status"] == "completed"
            assert images.seen["/503/4/a.png"] == 5
            # A refusal fails the task at once, after one request.
            refused = submit("/404/99/a.png")
            data = wait_for_task(http, refused, timeout=60)
            assert data["status"] == "failed"
            assert images.seen["/404/99/a.png"] == 1
            # A server that stays down fails the task when its attempts run out.
            down = submit("/503/99/a.png")
            data = wait_for_task(http, down, timeout=120)
            assert data["status"] == "failed"
            assert "HTTP 503" in str(data["error"])
            assert images.seen["/503/99/a.png"] == 3 * 3  # three attempts of three tries
        store = Store(f"sqlite:///{server.data_dir.resolve() / 'omniflash.db'}", migrate=False)
        try:
            assert_money(store)
        finally:
            store.close()
    finally:
        images.server.shutdown()
        images.server.server_close()
