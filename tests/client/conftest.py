"""Fixtures of the SDK tests: one live server for the package, an image host, stubs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.stubs import ImageHost, ScriptedServer, preview_server
from tests.conftest import LiveServer


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One ``omniflash serve`` (preview engine) shared by the SDK tests: starting one is
    the slowest step, and each test that counts tasks uses a key of its own."""
    with preview_server(tmp_path_factory.mktemp("sdk")) as live:
        yield live


@pytest.fixture(scope="package")
def images() -> Iterator[ImageHost]:
    with ImageHost() as host:
        yield host


@pytest.fixture
def fresh_key(server: LiveServer) -> str:
    """A key with 100 credits and no tasks yet."""
    return server.create_key(100, "--rpm", "100000")


@pytest.fixture
def stub() -> Iterator[ScriptedServer]:
    with ScriptedServer() as scripted:
        yield scripted
