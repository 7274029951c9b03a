"""The playground uploads picked images (``POST /v1/uploads/images``) instead of inlining them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.client.stubs import png_bytes
from tests.conftest import LiveServer
from tests.playground.test_playground import (
    PLAYING,
    current_task_id,
    open_with_key,
    page,  # noqa: F401 - the fixture
    submit_prompt,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def test_a_picked_image_is_uploaded_and_sent_by_url(
    page: Any,  # noqa: F811 - the fixture
    server: LiveServer,
    tmp_path: Path,
) -> None:
    picked = tmp_path / "first.png"
    picked.write_bytes(png_bytes())
    uploads = server.data_dir / "blobs" / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    open_with_key(page, server, server.api_key)
    sent: list[str] = []
    page.on(
        "request",
        lambda r: sent.append(r.post_data or "") if r.url.endswith("/generations") else None,
    )
    page.set_input_files("#image-file", str(picked))
    assert page.locator("#images .thumb").count() == 1
    submit_prompt(page, "from an upload", generation_type="frame")
    task_id = current_task_id(page)
    page.wait_for_function(PLAYING, timeout=60_000)
    added = set(uploads.iterdir()) - before
    assert len(added) == 1 and next(iter(added)).read_bytes() == png_bytes()
    assert len(sent) == 1 and "/v1/files/uploads/" in sent[0] and "data:image" not in sent[0]
    with server.client() as http:
        request = http.get(f"/v1/tasks/{task_id}").json()["data"]["request"]
    assert request["image_count"] == 1 and request["mode"] == "frame"
