"""One module owns each I/O library: httpx and h11 in twc, aiomqtt and paho in mqtt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"
OWNERS = {
    "httpx": {"twc"},
    "h11": {"twc"},
    "aiomqtt": {"mqtt"},
    "paho": {"mqtt"},
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
