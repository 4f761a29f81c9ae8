"""Smoke test of ``twc3-bridge bench``: a tiny run against the test broker gives sane figures."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge import bench
from bridge.bench import BenchChildError, _Child
from tests.conftest import Broker, collect_retained

pytestmark = pytest.mark.broker


def test_bench_reports_every_figure_and_leaves_no_retained_topic(
    broker: Broker, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from bridge.cli import main; sys.exit(main(sys.argv[1:]))",
            "bench",
            "--units",
            "3",
            "--seconds",
            "2",
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "polls/s" in completed.stdout
    result = json.loads(out.read_text())
    bridge = result["bridge"]
    assert result["units"] == 3
    assert result["simulator"] == "one port, routed by Host header"
    assert bridge["polls_per_s"] > 0
    for name in ("bare", "matched"):
        base = result[f"baseline_{name}"]
        assert base["polls_per_s"] > 0
        assert base["mqtt_msgs"] == base["polls"]  # one message per poll
        assert base["http_errors"] == 0
        assert result[f"cpu_per_poll_ratio_{name}"] == pytest.approx(
            bridge["cpu_ms_per_poll"] / base["cpu_ms_per_poll"], rel=0.02
        )
    assert "CPU per poll / bare" in completed.stdout
    assert bridge["mqtt_msgs_per_s"] > 0
    assert bridge["peak_rss_mb"] > 0
    assert bridge["cpu_s_per_1000_polls"] > 0
    assert bridge["http_errors"] == 0
    assert bridge["latency_samples"] > 0
    p50, p99 = bridge["change_to_message_p50_s"], bridge["change_to_message_p99_s"]
    assert math.isfinite(p99)
    assert 0 <= p50 <= p99 < 5
    # The window began once startup was over: every unit read and everything published.
    assert 0 < bridge["startup_s"] < 60
    assert "startup (all published) s" in completed.stdout
    # Its own base topic and discovery prefix, deleted at the end: nothing stays retained.
    assert asyncio.run(collect_retained(broker.port, "#")) == {}


def test_bench_with_no_broker_says_so_in_one_line() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from bridge.cli import main; sys.exit(main(sys.argv[1:]))",
            "bench",
            "--units",
            "1",
            "--seconds",
            "1",
            "--broker",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("error: cannot use the broker 127.0.0.1:1")


def _dies_at_once(_conn: object, code: int) -> None:
    raise SystemExit(code)


def test_a_child_process_that_dies_is_a_clear_error_not_a_traceback() -> None:
    """A simulator or subscriber child that stops before answering: BenchChildError says so."""
    child = _Child(_dies_at_once, 3)
    try:
        with pytest.raises(BenchChildError, match=r"dies at once stopped \(exit code 3\)"):
            child.receive(timeout_s=60)
    finally:
        child.stop()


def test_bench_main_reports_a_dead_child_and_an_unwritable_json_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def reachable(*_: object) -> None:
        return None

    async def dead_child(**_: object) -> dict[str, object]:
        raise BenchChildError("the bench's simulator child stopped (exit code 1)")

    async def finished(**_: object) -> dict[str, object]:
        return {
            "units": 1,
            "interval_s": 1.0,
            "discovery": "entity",
            "broker": "127.0.0.1:1",
            "simulator": bench.SIMULATOR_ROUTING,
            "bridge": {"polls_per_s": 1.0},
        }

    monkeypatch.setattr(bench, "_broker_reachable", reachable)
    arguments: dict[str, Any] = {
        "units": 1,
        "seconds": 1.0,
        "host": "127.0.0.1",
        "port": 1,
        "interval": 1.0,
        "discovery": "entity",
    }
    monkeypatch.setattr(bench, "run_bench", dead_child)
    assert bench.bench_main(**arguments, json_path=None) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "error: bench: the bench's simulator child stopped (exit code 1)"

    monkeypatch.setattr(bench, "run_bench", finished)
    unwritable = tmp_path / "missing-directory" / "out.json"
    assert bench.bench_main(**arguments, json_path=unwritable) == 1
    captured = capsys.readouterr()
    assert "polls/s" in captured.out  # the table is printed before the JSON is written
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: cannot write {unwritable}: No such file or directory")
