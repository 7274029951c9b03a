"""A short schemathesis run over every door of a real server (``bench/fuzz.py``).

The long run (``python bench/fuzz.py --cases 20000``) is the same code with more cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.fuzz import fuzz, table

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_no_generated_request_gets_a_5xx_and_the_money_adds_up(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "postgres":
        request.getfixturevalue("postgres_url")  # skips (or fails under CI) without a server
    rounds = fuzz(database, cases=1200, seed=20261207, workdir=tmp_path)
    print(table(rounds))
    assert {r.surface for r in rounds} == {"public", "worker"}
    assert sum(r.cases for r in rounds) >= 1200
    failures = sorted({f for r in rounds for f in r.failures})
    assert not failures, failures
    assert sum(r.server_errors for r in rounds) == 0
