"""The package's plan, read from its imports: rooms, floors, circles and arrows up.

A *room* is a package (``omniflash.store``, ``omniflash.api.omni``), or a top-level
module (``omniflash.contract``); ``omniflash.api.app``, which assembles the API from
its rooms, is a room of its own.  An *arrow* is a room importing another, counting
imports inside functions (a lazy import is still a dependency) and leaving out those
under ``if TYPE_CHECKING:`` (annotations only).  *Floors* number the rooms from the
bottom: a room stands one floor above the highest room it imports.  An *arrow up* is
one between rooms that import each other, directly or around a circle, so that no
floor can be given to them.  A *circle* is the same among modules.

``python -m tests.house`` prints the plan; ``tests/test_architecture.py`` holds it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "omniflash"
OWN_ROOMS = {"omniflash.api.app"}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int


def modules(src: Path = SRC) -> dict[str, Module]:
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, is_package, len(path.read_text().splitlines()))
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: Module, known: dict[str, Module]) -> set[str]:
    """The package's modules that ``module`` imports (outside ``TYPE_CHECKING``)."""
    tree = ast.parse(module.path.read_text())
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found = set()
    for name in names:
        # ``import omniflash.store.db`` names a module; ``omniflash.store.db.X`` its attribute.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name.startswith(PACKAGE + ".") and name != module.name:
            found.add(name)
    return found


def import_graph(known: dict[str, Module]) -> dict[str, set[str]]:
    return {name: _imported(module, known) for name, module in known.items()}


def room_of(name: str, known: dict[str, Module]) -> str:
    if name in OWN_ROOMS:
        return name
    module = known[name]
    if module.is_package:
        return name if name != PACKAGE else PACKAGE
    parent = name.rpartition(".")[0]
    return name if parent == PACKAGE else parent


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components, each a set of nodes that reach one another."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _is_ancestor(package: str, name: str) -> bool:
    return name.startswith(package + ".")


@dataclass
class House:
    rooms: dict[str, set[str]]  # room -> the rooms it imports
    floors: dict[str, int]
    circles: list[set[str]]  # module-level import cycles
    arrows_up: list[tuple[str, str]]
    largest: list[Module]
    src: Path

    @property
    def arrows(self) -> int:
        return sum(len(targets) for targets in self.rooms.values())


def survey(src: Path = SRC) -> House:
    known = modules(src)
    graph = import_graph(known)
    # A package's __init__ re-exporting its own modules is not a circle of theirs.
    edges = {
        name: {t for t in targets if not (known[name].is_package and _is_ancestor(name, t))}
        for name, targets in graph.items()
    }
    circles = [c for c in strongly_connected(edges) if len(c) > 1]
    rooms: dict[str, set[str]] = defaultdict(set)
    for name, targets in edges.items():
        room = room_of(name, known)
        rooms[room]
        for target in targets:
            other = room_of(target, known)
            # A room using a package ``__init__`` above it (names re-exported there) is
            # inside that package, not a floor below it.
            if other != room and not (known[target].is_package and _is_ancestor(other, room)):
                rooms[room].add(other)
    components = strongly_connected(rooms)
    arrows_up = sorted(
        (a, b)
        for component in components
        if len(component) > 1
        for a in component
        for b in rooms[a]
        if b in component
    )
    component_of = {room: i for i, c in enumerate(components) for room in c}
    floors: dict[str, int] = {}
    for component in components:  # Tarjan yields each component after all it reaches
        floor = 0
        for room in component:
            for target in rooms[room]:
                if component_of[target] != component_of[room]:
                    floor = max(floor, floors[target] + 1)
        for room in component:
            floors[room] = floor
    largest = sorted(known.values(), key=lambda m: -m.lines)[:5]
    return House(dict(rooms), floors, circles, arrows_up, largest, src)


def _lines(house: House) -> Iterable[str]:
    top = max(house.floors.values(), default=0)
    yield (
        f"{len(house.rooms)} rooms, {top + 1} floors, {house.arrows} arrows, "
        f"{len(house.circles)} circles, {len(house.arrows_up)} arrows up"
    )
    for floor in range(top, -1, -1):
        here = sorted(room for room, f in house.floors.items() if f == floor)
        yield f"floor {floor:2}: " + ", ".join(r.removeprefix(PACKAGE + ".") for r in here)
    for circle in house.circles:
        yield "circle: " + " <-> ".join(sorted(circle))
    for a, b in house.arrows_up:
        yield f"arrow up: {a} -> {b}"
    yield "largest modules: " + ", ".join(
        f"{m.path.relative_to(house.src / PACKAGE)} {m.lines}" for m in house.largest
    )


if __name__ == "__main__":
    print("\n".join(_lines(survey(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC))))
