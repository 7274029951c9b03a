"""Fixtures of the CLI tests: one live server for the package, and an image host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.stubs import ImageHost, preview_server
from tests.conftest import LiveServer


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with preview_server(tmp_path_factory.mktemp("cli")) as live:
        yield live


@pytest.fixture(scope="package")
def images() -> Iterator[ImageHost]:
    with ImageHost() as host:
        yield host
