"""scripts/simulator_routing.py: the Host-routed simulator answers per unit, and it measures."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def routing() -> Iterator[ModuleType]:
    # On sys.path, not loaded from a file spec: spawned children import the script by name.
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("simulator_routing")
    finally:
        sys.path.remove(str(SCRIPTS))
        sys.modules.pop("simulator_routing", None)


# The port mode gets a shorter window: its figures are the bench's, the point is that it runs.
@pytest.mark.system
@pytest.mark.parametrize(("mode", "seconds"), [("host", 1.0), ("port", 0.5)])
def test_measure_end_to_end(routing: ModuleType, mode: str, seconds: float) -> None:
    result = routing.measure(mode, 3, seconds, warmup_s=0.2)
    assert result.mode == mode
    assert result.answered_per_s > 0
    assert result.peak_rss_mb > 0
    assert result.cpu_percent >= 0
    assert result.errors == 0
    assert math.isfinite(result.p99_ms)
    assert "answered/s" in routing.format_table([result])


@pytest.mark.parametrize(
    "argv",
    [
        ["--units", "0"],
        ["--units", "x"],
        ["--seconds", "-1"],
        ["--seconds", "nan"],
        ["--mode", "udp"],
    ],
)
def test_bad_arguments_are_one_line(
    routing: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        routing.main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("simulator_routing: error: ")
