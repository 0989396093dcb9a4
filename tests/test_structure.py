"""The shape of the code: no import cycles, and imports point down the layers.

Read with ``ast`` from the source files (nothing is imported), counting every
import statement wherever it stands: at the top, under ``if TYPE_CHECKING:`` or
inside a function. A module may import a module of its own layer or of a lower
one; sync and consent sit side by side and do not import each other::

    cli -> peer -> sync, consent -> store -> identity

The top-level helpers (``fedpeer.errors``, ``fedpeer._clock``, ...) serve every
layer, so they import none. ``fedpeer/__init__.py`` (lazy re-exports by name)
and ``fedpeer/__main__.py`` (runs the CLI) stand above the layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import fedpeer

SRC = Path(fedpeer.__file__).resolve().parent
PACKAGE = "fedpeer"

# layer -> rank; a module may import ranks <= its own, never a sibling of the same
# rank with another name (sync <-> consent).
RANKS = {"identity": 0, "store": 1, "sync": 2, "consent": 2, "peer": 3, "cli": 4}
ABOVE_LAYERS = {"fedpeer", "fedpeer.__main__"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str) -> Iterator[str]:
    """Every fedpeer module ``name`` imports, by its full name."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            # `from pkg import mod` imports the module pkg.mod when there is one; the
            # package itself only for the names that are not modules
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                # the deepest known module the name refers to
                while target not in MODULES and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in MODULES and target != name:
                    yield target


GRAPH = {name: sorted(set(imports_of(name))) for name in MODULES}


def _layer(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in RANKS:
        return parts[1]
    return None


def test_the_graph_sees_the_layers() -> None:
    """A check on the checker: the known edges are found."""
    assert "fedpeer.peer.services" in GRAPH["fedpeer.peer.node"]
    assert "fedpeer.errors" in GRAPH["fedpeer.store.base"]
    assert any(m.startswith("fedpeer.peer") for m in GRAPH["fedpeer.cli.main"])
    assert {_layer(m) for m in MODULES} >= set(RANKS)


def _cycles() -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def _helper(name: str) -> bool:
    return name not in ABOVE_LAYERS and _layer(name) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_layers(name: str) -> None:
    if name in ABOVE_LAYERS:
        return
    mine = _layer(name)
    for target in GRAPH[name]:
        theirs = _layer(target)
        if mine is None:
            assert theirs is None, f"the helper {name} imports the layer module {target}"
            continue
        if theirs is None:
            assert _helper(target), f"{name} imports {target}"
            continue
        assert RANKS[theirs] <= RANKS[mine], f"{name} ({mine}) imports {target} ({theirs}) upwards"
        if RANKS[theirs] == RANKS[mine]:
            assert theirs == mine, f"{name} ({mine}) imports its sibling layer: {target}"


def test_a_cycle_is_caught() -> None:
    """The cycle finder finds a planted cycle (so a green run means something)."""
    saved = dict(GRAPH)
    try:
        GRAPH["fedpeer.errors"] = [*GRAPH["fedpeer.errors"], "fedpeer._clock"]
        GRAPH["fedpeer._clock"] = [*GRAPH["fedpeer._clock"], "fedpeer.errors"]
        assert ["fedpeer._clock", "fedpeer.errors"] in _cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


# Operating-system helpers, not library API: how a finished file is put in place
# (atomically, with or without replacing) is the same for the CLI's own files.
CLI_MAY_IMPORT = {"fedpeer._files"}


def test_the_cli_imports_only_public_names() -> None:
    """The CLI package uses the library like any program would: no private module
    or private name from another package (but the file helpers, CLI_MAY_IMPORT)."""
    for name, path in MODULES.items():
        if _layer(name) != "cli":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(name, path.name == "__init__.py", node)
            if (
                target.startswith("fedpeer.cli")
                or not target.startswith("fedpeer")
                or target in CLI_MAY_IMPORT
            ):
                continue
            private = [p for p in target.split(".") if p.startswith("_")]
            assert not private, f"{name} imports the private module {target}"
            for alias in node.names:
                assert not alias.name.startswith("_"), (
                    f"{name} imports the private name {alias.name} from {target}"
                )
