"""Fixtures of the shipping tests: podman, the API image, and a funded PostgreSQL store."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.shipping import podman

BUILD_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def api_image() -> Iterator[str]:
    """The ``api`` image of the Containerfile, built here on the local Debian base."""
    why = podman.missing()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("the container tests run podman as root")
    BUILD_SECONDS["api"] = podman.build_api_image()
    yield podman.API_IMAGE
