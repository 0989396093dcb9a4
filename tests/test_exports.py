"""The public API: what ``fedpeer`` and each subpackage export (pinned, like httpx)."""

from __future__ import annotations

import importlib

import pytest

import fedpeer

PACKAGES = [
    "fedpeer",
    "fedpeer.identity",
    "fedpeer.store",
    "fedpeer.sync",
    "fedpeer.consent",
    "fedpeer.peer",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_documented(name: str) -> None:
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert exported, f"{name} has no __all__"
    for attr in exported:
        value = getattr(mod, attr)
        if callable(value) and not attr.isupper():
            assert value.__doc__, f"{name}.{attr} has no docstring"


def test_top_level_api() -> None:
    assert set(fedpeer.__all__) >= {
        "open_node",
        "Node",
        "NodeConfig",
        "PeerClient",
        "FedpeerError",
        "SigningKey",
        "MemoryStore",
        "SQLiteStore",
        "build_record",
        "verify_record",
    }
    assert fedpeer.open_node is importlib.import_module("fedpeer.peer").open_node


def test_layers_import_downwards_only() -> None:
    """identity, store, sync and consent never import the peer layer or the CLI."""
    import ast
    import pathlib

    root = pathlib.Path(fedpeer.__file__).parent
    forbidden = {
        "identity": ("peer", "sync", "consent", "store", "cli"),
        "store": ("peer", "sync", "consent", "cli"),
        "sync": ("peer", "consent", "cli"),
        "consent": ("peer", "sync", "cli"),
        "peer": ("cli",),
    }
    for layer, banned in forbidden.items():
        for path in (root / layer).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                    top = node.module.split(".")[0]
                    assert top not in banned, f"{path} imports ..{node.module}"
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    parts = node.module.split(".")
                    if parts[0] == "fedpeer" and len(parts) > 1:
                        assert parts[1] not in banned, f"{path} imports {node.module}"
