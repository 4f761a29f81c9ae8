"""What building the command line loads: every command (the healthcheck every 30 s) pays for it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"
# Loaded only by the commands that run them.
HEAVY = frozenset({"bridge.sim.simulator", "bridge.sim.bench", "bridge.runtime.app"})


def _module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "bridge":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _eager_imports(tree: ast.AST, module: str) -> set[str]:
    """Project modules imported at module level (not inside functions) of a parsed module."""
    found: set[str] = set()
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            nodes.append(child)
    found.update(".".join(module.split(".")[:depth]) for depth in range(1, module.count(".") + 1))
    return {name for name in found if _module_path(name) is not None}


def _function_imports(tree: ast.AST, function: str) -> set[str]:
    """Project modules a function imports when it runs (its own nested imports)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return _eager_imports(ast.Module(body=node.body, type_ignores=[]), "")
    raise AssertionError(f"no function {function}")


def _loaded_by(roots: set[str]) -> set[str]:
    """Every project module that importing ``roots`` loads, following module-level imports."""
    loaded: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = _module_path(name)
        if name in loaded or path is None:
            continue
        loaded.add(name)
        todo.extend(_eager_imports(ast.parse(path.read_text(encoding="utf-8")), name))
    return loaded


def test_building_the_parser_leaves_the_simulator_unloaded() -> None:
    """Importing cli and building the parser load the simulate options, not the simulator."""
    cli = ast.parse((PACKAGE / "tools" / "cli.py").read_text(encoding="utf-8"))
    loaded = _loaded_by({"bridge.tools.cli", *_function_imports(cli, "build_parser")})
    assert "bridge.sim.options" in loaded
    assert loaded & HEAVY == set()


def test_the_simulator_is_found_when_imported() -> None:
    """The walk above follows imports: from the simulate handler it reaches the simulator."""
    cli = ast.parse((PACKAGE / "tools" / "cli.py").read_text(encoding="utf-8"))
    assert "bridge.sim.simulator" in _loaded_by(_function_imports(cli, "cmd_simulate"))
    assert "bridge.sim.options" in _loaded_by({"bridge.sim.simulator"})


@pytest.mark.system
def test_a_fresh_interpreter_builds_the_parser_without_the_simulator() -> None:
    """The same, measured: what ``sys.modules`` holds after ``build_parser()``."""
    code = (
        "import sys; from bridge.tools.cli import build_parser; build_parser(); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('bridge'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(result.stdout.split())
    assert "bridge.sim.options" in loaded
    assert loaded & HEAVY == set()
