"""The playground follows a task's events (fetch and a stream reader, with the key):
progress and the newest preview frame while the task runs, then the video; in a real
headless Chromium against ``omniflash serve``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.stubs import ImageHost
from tests.conftest import LiveServer, running_server
from tests.playground.test_playground import PLAYING, current_task_id, open_with_key, submit_prompt

pytestmark = pytest.mark.browser

# Every preview frame is passed on, so a short task shows several.
EVERY_PREVIEW = {"OMNIFLASH_PREVIEW_INTERVAL_S": "0", "OMNIFLASH_LEASE_SECONDS": "30"}
# What the page showed, recorded in the page as it happened.
WATCH = """() => {
  window.seen = {progress: [], previews: []};
  const bar = document.querySelector('#task-progress');
  const img = document.querySelector('#task-preview');
  new MutationObserver(() => {
    if (!img.hidden && img.src) window.seen.previews.push([Number(img.dataset.index), img.src]);
  }).observe(img, {attributes: true});
  setInterval(() => window.seen.progress.push(bar.value), 20);
}"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("playground-events")
    with running_server(path, "--workers", "1", **EVERY_PREVIEW) as server:
        yield server


@pytest.fixture
def tab(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


def test_progress_and_previews_come_from_the_event_stream(
    tab: Any, live: LiveServer, images: ImageHost, tmp_path: Path
) -> None:
    streams: list[dict[str, str]] = []
    tab.on(
        "request",
        lambda r: streams.append(r.headers) if r.url.endswith("/events") else None,
    )
    held = images.held_url()
    open_with_key(tab, live, live.api_key)
    tab.fill("#image-url", held)
    tab.click("#add-image-url")
    submit_prompt(tab, "a lighthouse, frame by frame")
    task_id = current_task_id(tab)
    tab.wait_for_function("() => document.querySelector('#task-status').textContent.length > 8")
    tab.evaluate(WATCH)
    for _ in range(600):  # the page opened the task's event stream before the task runs
        if streams:
            break
        tab.wait_for_timeout(50)
    images.release(held)
    tab.wait_for_function(PLAYING, timeout=60_000)
    seen = tab.evaluate("() => window.seen")
    assert tab.text_content("#task-status") == "completed · 100%"
    assert tab.locator("#task-preview").is_hidden(), "the video replaces the preview"
    previews = seen["previews"]
    assert len({index for index, _ in previews}) >= 2, previews
    indexes = [index for index, _ in previews]
    assert indexes == sorted(indexes), "the newest frame is shown, never an older one"
    assert all(f"/v1/files/previews/{task_id}/" in src for _, src in previews), previews
    progress = seen["progress"]
    assert progress == sorted(progress) and 0 < max(progress) <= 100, progress[-5:]
    assert streams and streams[0]["authorization"] == f"Bearer {live.api_key}"
    assert streams[0]["accept"] == "text/event-stream"
    log = live.log()
    assert log.count(f"GET /v1/tasks/{task_id} HTTP") == 1, "one look, then the events"
    assert f"GET /v1/tasks/{task_id}/events HTTP" in log


def test_a_server_without_events_is_polled(tab: Any, live: LiveServer) -> None:
    # As an older server answers: the events route is not there.
    tab.route("**/events", lambda route: route.fulfill(status=404, body="{}"))
    open_with_key(tab, live, live.api_key)
    submit_prompt(tab, "polled as before")
    task_id = current_task_id(tab)
    tab.wait_for_function(PLAYING, timeout=60_000)
    assert tab.text_content("#task-status") == "completed · 100%"
    assert live.log().count(f"GET /v1/tasks/{task_id} HTTP") >= 2, "polled to the end"
