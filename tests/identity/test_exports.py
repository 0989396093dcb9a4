"""fedpeer.identity re-exports every public name of its modules (pinned, like httpx)."""

from __future__ import annotations

import importlib

import pytest

import fedpeer.identity

MODULES = ["canonical", "didkey", "envelope", "keys", "resolver"]


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_is_re_exported(module: str) -> None:
    mod = importlib.import_module(f"fedpeer.identity.{module}")
    names = getattr(mod, "__all__", None)
    assert names, f"fedpeer.identity.{module} must declare __all__"
    for name in names:
        assert getattr(fedpeer.identity, name) is getattr(mod, name), name


def test_no_stray_public_names() -> None:
    """Everything public in the package namespace comes from some module's __all__."""
    declared: set[str] = set()
    for module in MODULES:
        declared.update(importlib.import_module(f"fedpeer.identity.{module}").__all__)
    public = {n for n in vars(fedpeer.identity) if not n.startswith("_")}
    assert public - set(MODULES) - {"annotations"} <= declared
