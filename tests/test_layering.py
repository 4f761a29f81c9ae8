"""The package's layers: imports run one way, the core does no I/O, each I/O library has owners."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"
# Highest first: a module may import its own layer and the layers after it, never one before.
LAYERS = ("tools", "runtime", "adapters", "presentation", "core")
# The simulator and the bench stand apart: only the commands that use them import them.
APART = "sim"
# Imports the pure core never makes: it is tested without sockets, threads or an event loop.
IO_MODULES = frozenset(
    {"asyncio", "socket", "ssl", "selectors", "subprocess", "threading", "multiprocessing"}
    | {"httpx", "h11", "aiomqtt", "paho"}
)
OWNERS = {
    "httpx": {"adapters.twc"},
    "h11": {"adapters.twc"},
    "aiomqtt": {"adapters.mqtt", "adapters.mqtt_fastpath"},
    "paho": {"adapters.mqtt_fastpath"},  # the fast path's internals; mqtt.py uses aiomqtt's API
}
# The benchmark's yardstick uses the libraries bare, on purpose (see its docstring).
YARDSTICK = "sim.baseline"


def _modules() -> dict[str, Path]:
    """``{"core.models": path, ...}`` for every module in a subpackage."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
        for path in PACKAGE.glob("*/*.py")
        if path.stem != "__init__"
    }


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _bridge_imports(path: Path) -> set[str]:
    """The project's own modules ``path`` imports, as ``layer.module``."""
    modules = _modules()
    found = set()
    for name in _imports(path):
        if name.startswith("bridge."):
            parts = name.split(".")[1:3]
            if ".".join(parts) in modules:
                found.add(".".join(parts))
    return found


def test_every_module_sits_in_a_layer() -> None:
    assert {path.stem for path in PACKAGE.glob("*.py")} == {"__init__", "__main__"}
    assert {name.split(".")[0] for name in _modules()} == {*LAYERS, APART}


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_run_one_way(module: str) -> None:
    layer = module.split(".", maxsplit=1)[0]
    for imported in _bridge_imports(_modules()[module]):
        target = imported.split(".")[0]
        if target == APART:
            assert layer in {APART, "tools"}, f"{module} imports {imported}, which stands apart"
            continue
        if layer == APART:
            continue  # the simulator and the bench may use anything
        assert LAYERS.index(target) >= LAYERS.index(layer), (
            f"{module} ({layer}) imports {imported} ({target}): imports run " + " -> ".join(LAYERS)
        )


@pytest.mark.parametrize("module", sorted(name for name in _modules() if name.startswith("core.")))
def test_the_core_makes_no_io_imports(module: str) -> None:
    roots = {name.split(".")[0] for name in _imports(_modules()[module])}
    assert not roots & IO_MODULES, f"{module} imports {sorted(roots & IO_MODULES)}"


def test_no_import_cycle_between_modules() -> None:
    graph = {module: _bridge_imports(path) - {module} for module, path in _modules().items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        visiting.append(module)
        for imported in graph[module]:
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_only_the_owner_imports_the_library(library: str) -> None:
    importers = {
        module
        for module, path in _modules().items()
        if library in {name.split(".")[0] for name in _imports(path)}
    } - {YARDSTICK}
    assert importers == OWNERS[library]
