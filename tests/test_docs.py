"""The README stays true: every setting documented, every CLI command mentioned."""

from __future__ import annotations

from pathlib import Path

import pytest

import omniflash
from omniflash.settings import ENV_VARS, PRICE_VARS

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize(
    "var", [*ENV_VARS.values(), *PRICE_VARS.values(), "OMNIFLASH_CREDIT_PRICE"]
)
def test_every_setting_is_documented(var: str) -> None:
    assert f"`{var}`" in README, f"{var} is missing from the README's configuration table"


@pytest.mark.parametrize(
    "command",
    [
        "serve",
        "migrate",
        "keys create",
        "keys list",
        "keys topup",
        "keys revoke",
        "worker",
        "workers create",
        "workers list",
        "workers revoke",
    ],
)
def test_every_admin_command_is_documented(command: str) -> None:
    assert f"omniflash {command}" in README


def test_public_names_are_exported() -> None:
    for name in omniflash.__all__:
        assert getattr(omniflash, name) is not None
