"""docs/usage.md shows ``omniflash generate --help`` as it is."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from omniflash.cli import main

USAGE = Path(__file__).resolve().parents[2] / "docs" / "usage.md"


def test_generate_help_in_the_docs_is_current() -> None:
    result = CliRunner().invoke(
        main, ["generate", "--help"], prog_name="omniflash", terminal_width=80
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: omniflash generate [OPTIONS] PROMPT\n")
    assert f"$ omniflash generate --help\n{result.output}```" in USAGE.read_text(), (
        "docs/usage.md has another `omniflash generate --help`; paste this one:\n" + result.output
    )
