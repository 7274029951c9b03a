"""Fixtures of the playground tests: a live server and a headless Chromium.

The browser is Debian's ``chromium`` driven by Playwright's Python package (no browser
download); without either, the tests skip with the reason (CI makes that a failure).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.stubs import ImageHost, preview_server
from tests.conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed: pip install 'omniflash[test]'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with preview_server(tmp_path_factory.mktemp("playground")) as live:
        yield live


@pytest.fixture(scope="package")
def images() -> Iterator[ImageHost]:
    with ImageHost() as host:
        yield host
