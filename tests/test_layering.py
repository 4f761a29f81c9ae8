"""Each I/O library has its owners: httpx twc, aiomqtt mqtt and mqtt_fastpath, paho the latter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"
OWNERS = {
    "httpx": {"twc"},
    "aiomqtt": {"mqtt", "mqtt_fastpath"},
    "paho": {"mqtt_fastpath"},  # the fast path's internals; mqtt.py uses aiomqtt's public API
}
# The benchmark's yardstick uses the libraries bare, on purpose (see its docstring).
YARDSTICK = "baseline"


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_only_the_owner_imports_the_library(library: str) -> None:
    importers = {path.stem for path in PACKAGE.glob("*.py") if library in _imported_roots(path)} - {
        YARDSTICK
    }
    assert importers == OWNERS[library]
