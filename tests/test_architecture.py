"""The layering of ARCHITECTURE.md, checked on every run: a wrong import fails CI, not a review.

transport -> adapters (webhook, actions, controller) -> rules, and adapters -> kube. ``rules`` is
pure (nothing of ours but itself, no I/O or asyncio); ``testing`` stands alone so the API server it
provides can never be shaped by the code it tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nichotplug"

# layer -> the nichotplug packages/modules it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "rules": set(),
    "kube": {"rules", "certs"},
    "testing": {"certs"},
    "webhook": {"rules"},
    "actions": {"rules", "kube"},
    "controller": {"rules", "kube"},
}
# What "no I/O, no asyncio" means for rules: none of these may be imported there.
IO_MODULES = {"asyncio", "aiohttp", "kubernetes_asyncio", "socket", "ssl", "subprocess", "requests",
              "urllib", "http", "pathlib", "os", "io", "shutil", "tempfile", "logging"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def our_layers(modules: set[str]) -> set[str]:
    """The top-level nichotplug packages/modules named by these imports."""
    return {name.split(".")[1] for name in modules if name.startswith("nichotplug.")}


def layer_files(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_the_architecture_allows(layer: str) -> None:
    wrong = {
        str(path.relative_to(PACKAGE.parent)): sorted(our_layers(imported_modules(path)) - ALLOWED[layer] - {layer})
        for path in layer_files(layer)
    }
    assert {path: found for path, found in wrong.items() if found} == {}


def test_rules_does_no_io_and_no_asyncio() -> None:
    offending = {
        str(path.relative_to(PACKAGE.parent)): sorted({m.split(".")[0] for m in imported_modules(path)} & IO_MODULES)
        for path in layer_files("rules")
    }
    assert {path: found for path, found in offending.items() if found} == {}


def test_every_layer_named_in_the_architecture_exists() -> None:
    assert all(layer_files(layer) for layer in ALLOWED)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from nichotplug.kube.patch import json_patch\nimport nichotplug.webhook.http\n")
    assert our_layers(imported_modules(sample)) == {"kube", "webhook"}
