"""The playground page at ``/``, driven in a real headless Chromium against a live server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.stubs import ImageHost, png_bytes
from tests.conftest import LiveServer, wait_for_task

pytestmark = pytest.mark.browser

# The README's screenshot is refreshed only on request, so a test run leaves the tree clean.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
UPDATE_SCREENSHOT = "OMNIFLASH_UPDATE_SCREENSHOT"
PLAYING = """() => {
  const v = document.querySelector('#result-video');
  return v && !v.hidden && v.readyState >= 2 && v.currentTime > 0 && !v.paused;
}"""


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


def open_with_key(page: Any, server: LiveServer, key: str) -> None:
    page.goto(server.url + "/")
    page.fill("#api-key", key)
    page.click("#save-key")


def submit_prompt(page: Any, prompt: str, **selects: str) -> None:
    page.fill("#prompt", prompt)
    page.select_option("#duration", "4")
    for field, value in selects.items():
        page.select_option(f"#{field.replace('_', '-')}", value)
    page.click("#submit")


def current_task_id(page: Any) -> str:
    page.wait_for_function("() => document.querySelector('#task-id').textContent.length > 0")
    return str(page.text_content("#task-id"))


def test_image_by_file_picker_and_by_url(
    page: Any, server: LiveServer, images: ImageHost, tmp_path: Path
) -> None:
    picked = tmp_path / "first.png"
    picked.write_bytes(png_bytes())
    open_with_key(page, server, server.api_key)
    page.set_input_files("#image-file", str(picked))
    page.fill("#image-url", images.image_url)
    page.click("#add-image-url")
    assert page.locator("#images .thumb").count() == 2

    # Two images: the server refuses, and the page shows its words.
    submit_prompt(page, "two images")
    error = page.locator("#form-error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith("2 images are not supported (no first+last frame mode)")
    assert "unsupported_image_count · HTTP 400" in error.inner_text()

    page.click("#images .thumb:nth-child(2) button")  # drop the URL, keep the picked file
    submit_prompt(page, "the first frame comes alive", aspect_ratio="9:16", generation_type="frame")
    assert page.locator("#form-error").is_hidden()
    task_id = current_task_id(page)
    page.wait_for_function(PLAYING, timeout=60_000)
    assert page.text_content("#task-status") == "completed · 100%"
    assert page.text_content("#task-output") == "720×1280, 4 s, frame"
    with server.client() as http:
        request = http.get(f"/v1/tasks/{task_id}").json()["data"]["request"]
    assert request["image_count"] == 1 and request["mode"] == "frame"


def test_errors_are_shown_as_the_server_words_them(page: Any, server: LiveServer) -> None:
    open_with_key(page, server, "of_not_a_key")
    page.locator("#history-error").wait_for(state="visible")
    assert "Authentication failed. Please check your API key" in page.inner_text("#history-error")
    submit_prompt(page, "anything")
    page.locator("#form-error").wait_for(state="visible")
    assert page.inner_text("#form-error") == (
        "Authentication failed. Please check your API key\nauthentication_error · HTTP 401"
    )

    page.fill("#api-key", server.api_key)
    page.click("#save-key")
    submit_prompt(page, "references without images", generation_type="reference")
    page.wait_for_function(
        "() => document.querySelector('#form-error').textContent.includes('reference')"
    )
    assert page.inner_text("#form-error").startswith(
        'generation_type "reference" takes 1 or 3 images, got 0'
    )


def test_key_persists_history_opens_tasks_on_a_phone(
    browser: Any, server: LiveServer, images: ImageHost
) -> None:
    key = server.create_key(100, "--rpm", "100000")
    held_url = images.held_url()
    with server.client(key) as http:
        body = {"model": "Omni-Flash-Ext", "prompt": "an older one", "duration": 4}
        done = http.post("/v1/videos/generations", json=body).json()["data"][0]["task_id"]
        wait_for_task(http, done)
        body = {"model": "Omni-Flash-Ext", "prompt": "held", "image_urls": [held_url]}
        held = http.post("/v1/videos/generations", json=body).json()["data"][0]["task_id"]
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        open_with_key(page, server, key)
        page.reload()
        assert page.input_value("#api-key") == key, "the key is kept in localStorage"
        entries = page.locator("#history button")
        entries.nth(1).wait_for()
        assert [entries.nth(i).get_attribute("data-task-id") for i in range(2)] == [held, done]

        entries.nth(1).click()
        page.wait_for_function(PLAYING, timeout=30_000)
        assert page.text_content("#task-id") == done
        assert page.get_attribute("#download", "href") == page.get_attribute("#result-video", "src")
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], "nothing sticks out sideways on a phone"

        entries.nth(0).click()
        page.wait_for_function("() => !document.querySelector('#cancel').hidden")
        page.click("#cancel")
        page.wait_for_function(
            "() => document.querySelector('#task-status').textContent.startsWith('cancelled')"
        )
        assert page.inner_text("#task-error") == "cancelled by the user"
    finally:
        images.release(held_url)
        context.close()


def test_submit_and_watch_the_video_play(page: Any, server: LiveServer, tmp_path: Path) -> None:
    open_with_key(page, server, server.api_key)
    page.wait_for_function("() => document.querySelector('#account').textContent.length > 0")
    assert page.text_content("#account").endswith("credits")
    submit_prompt(page, "a red kite over a windy beach at sunset")
    task_id = current_task_id(page)
    page.wait_for_function(PLAYING, timeout=60_000)
    assert page.text_content("#task-status") == "completed · 100%"
    assert page.get_attribute("#download", "download") == f"{task_id}.mp4"
    assert page.locator("#history button").first.get_attribute("data-task-id") == task_id
    assert page.evaluate("() => location.hash") == f"#{task_id}"
    page.wait_for_function("() => document.querySelector('#result-video').currentTime > 1")
    shot = DOCS_SCREENSHOT if os.environ.get(UPDATE_SCREENSHOT) == "1" else tmp_path / "page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000


# Within a pixel: scrolling aligns an edge to the viewport's at sub-pixel positions.
IN_VIEW = """(selector) => {
  const box = document.querySelector(selector).getBoundingClientRect();
  return box.height > 0 && box.top >= -1 && box.bottom <= window.innerHeight + 1;
}"""
# A thumb taps Generate at the bottom of a phone's screen.
BUTTON_AT_THE_BOTTOM = (
    "() => document.querySelector('#submit').scrollIntoView({block: 'end', behavior: 'instant'})"
)


def tasks_and_balance(server: LiveServer, key: str) -> tuple[list[str], float]:
    with server.client(key) as http:
        tasks = [t["id"] for t in http.get("/v1/tasks").json()["data"]]
        return tasks, http.get("/v1/account").json()["data"]["balance"]


def submits(page: Any) -> list[Any]:
    """The submit requests the page sends from now on."""
    sent: list[Any] = []
    page.on(
        "request",
        lambda r: sent.append(r) if r.method == "POST" and "/videos/generations" in r.url else None,
    )
    return sent


def test_a_double_click_on_generate_is_one_order(page: Any, server: LiveServer) -> None:
    key = server.create_key(100, "--rpm", "100000")
    open_with_key(page, server, key)
    sent = submits(page)
    page.fill("#prompt", "clicked twice")
    page.select_option("#duration", "4")
    # A person's double click: the first submit is answered before the second click lands.
    page.click("#submit", click_count=2, delay=150)
    task_id = current_task_id(page)
    page.wait_for_function(PLAYING, timeout=60_000)
    assert len(sent) == 1
    assert tasks_and_balance(server, key) == ([task_id], 99)


def test_a_submit_waits_for_its_answer_and_an_unknown_outcome_reuses_its_key(
    page: Any, server: LiveServer
) -> None:
    key = server.create_key(100, "--rpm", "100000")
    open_with_key(page, server, key)
    sent = submits(page)
    held: list[Any] = []
    page.route("**/v1/videos/generations", lambda route: held.append(route))
    page.fill("#prompt", "held at the door")
    page.select_option("#duration", "4")
    page.click("#submit")
    page.wait_for_function("() => document.querySelector('#submit').disabled")
    page.click("#submit", force=True)
    page.evaluate("() => document.querySelector('#generate-form').requestSubmit()")
    page.wait_for_timeout(300)
    assert len(held) == 1, "nothing else is sent while a submit waits for its answer"

    # The connection drops: whether the server took the order is unknown, so sending
    # the same form again uses the same Idempotency-Key and the server answers it once.
    held[0].abort("connectionreset")
    page.locator("#form-error").wait_for(state="visible")
    assert page.inner_text("#form-error").startswith("Cannot reach the server")
    page.unroute("**/v1/videos/generations")
    page.click("#submit")
    task_id = current_task_id(page)
    keys = [r.headers["idempotency-key"] for r in sent]
    assert len(keys) == 2 and keys[0] == keys[1]

    page.fill("#prompt", "another order")
    page.click("#submit")
    page.wait_for_function(f"() => document.querySelector('#task-id').textContent !== '{task_id}'")
    assert len({r.headers["idempotency-key"] for r in sent}) == 2, "a new form, a new key"
    tasks, balance = tasks_and_balance(server, key)
    assert len(tasks) == 2 and balance == 98


def test_a_phone_shows_what_generate_did(browser: Any, server: LiveServer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        open_with_key(page, server, server.api_key)
        page.fill("#prompt", "references without images")
        page.select_option("#generation-type", "reference")
        page.evaluate(BUTTON_AT_THE_BOTTOM)
        page.click("#submit")
        page.locator("#form-error").wait_for(state="visible")
        page.wait_for_function(IN_VIEW, arg="#form-error", timeout=5_000)

        page.select_option("#generation-type", "")
        page.select_option("#duration", "4")
        page.evaluate(BUTTON_AT_THE_BOTTOM)
        page.click("#submit")
        current_task_id(page)
        page.wait_for_function(IN_VIEW, arg="#task-status", timeout=5_000)
        page.wait_for_function(IN_VIEW, arg="#task-progress", timeout=5_000)
    finally:
        context.close()


def test_history_without_a_key_asks_for_one(page: Any, server: LiveServer) -> None:
    page.goto(server.url + "/")
    assert page.inner_text("#history-empty") == (
        "Enter your API key at the top of the page to see its tasks."
    )
    open_with_key(page, server, server.create_key(100))
    page.wait_for_function(
        "() => document.querySelector('#history-empty').textContent.startsWith('No tasks')"
    )
    assert page.inner_text("#history-empty") == "No tasks yet for this key."
    page.fill("#api-key", "")
    page.click("#save-key")
    assert page.inner_text("#history-empty").startswith("Enter your API key")
