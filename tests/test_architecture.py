"""The plan of the package holds: no import circles, no arrow up, each floor's rules.

``docs/architecture.md`` draws the plan; ``python -m tests.house`` prints it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.house import PACKAGE, SRC, House, _type_checking, import_graph, modules, survey

pytestmark = pytest.mark.timeout(60)

MAX_LINES = 450
"""Modules stay near 400 lines; the test allows a little room before it fails."""


@pytest.fixture(scope="module")
def house() -> House:
    return survey()


def _third_party(path: Path) -> set[str]:
    """Top-level names of what a module imports from outside the package (an import for
    annotations only, under ``if TYPE_CHECKING:``, names a type, not a use)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {PACKAGE}


def test_no_module_imports_another_that_imports_it_back(house: House) -> None:
    assert house.circles == []


def test_every_arrow_between_rooms_points_down(house: House) -> None:
    assert house.arrows_up == []


def test_only_the_entry_points_import_the_api() -> None:
    graph = import_graph(modules())
    outside = {
        name
        for name, targets in graph.items()
        if not name.startswith(f"{PACKAGE}.api")
        and any(t.startswith(f"{PACKAGE}.api") for t in targets)
    }
    assert outside <= {f"{PACKAGE}.cli"}


def test_the_store_knows_nothing_of_http() -> None:
    for module in modules().values():
        if module.name.startswith(f"{PACKAGE}.store"):
            assert not _third_party(module.path) & {"fastapi", "starlette", "httpx"}, module.name


def test_sql_is_written_in_the_store_alone() -> None:
    drivers = {"sqlalchemy", "sqlite3", "psycopg"}
    outside = sorted(
        module.name
        for module in modules().values()
        if not module.name.startswith(f"{PACKAGE}.store") and _third_party(module.path) & drivers
    )
    assert outside == []


def test_modules_stay_small() -> None:
    large = {m.name: m.lines for m in modules().values() if m.lines > MAX_LINES}
    assert large == {}


def test_the_survey_sees_a_planted_circle(tmp_path: Path) -> None:
    """The checks above could pass by reading nothing: a circle planted in a copy is seen."""
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from omniflash import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from omniflash import c\n"
        "def f():\n    from omniflash import a\n"
    )
    (package / "c.py").write_text("import omniflash.a\n")
    planted = survey(tmp_path)
    assert planted.circles == [{f"{PACKAGE}.a", f"{PACKAGE}.b"}]
    assert sorted(planted.arrows_up) == [
        (f"{PACKAGE}.a", f"{PACKAGE}.b"),
        (f"{PACKAGE}.b", f"{PACKAGE}.a"),
    ]
    assert planted.floors[f"{PACKAGE}.c"] == 1 + planted.floors[f"{PACKAGE}.a"]
    assert SRC.is_dir()
