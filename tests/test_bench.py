"""Smoke test of ``twc3-bridge bench``: a tiny run against the test broker gives sane figures."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.sim import bench
from bridge.sim.bench import BenchChildError, _Child
from tests.conftest import Broker, collect_retained


@pytest.mark.broker
def test_bench_reports_every_figure_and_leaves_no_retained_topic(
    broker: Broker, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from bridge.tools.cli import main; sys.exit(main(sys.argv[1:]))",
            "bench",
            "--units",
            "3",
            "--seconds",
            "2",
            "--repeat",
            "1",
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(out.read_text())
    assert result["units"] == 3
    assert result["repeat"] == 1
    assert result["simulator"] == "one port, routed by Host header"
    for label, _ in bench.ROWS:
        assert label in completed.stdout
    assert "CPU per poll, bridge/base" in completed.stdout
    for subject in ("bridge", "baseline"):
        (run,) = result["runs"][subject]
        summary = result[subject]
        for _, key in bench.ROWS:
            assert summary[key] == {"median": run[key], "min": run[key], "max": run[key]}
        assert run["polls_per_s"] > 0
        assert run["cpu_s_per_1000_polls"] > 0
        assert run["http_errors"] == 0
        assert run["peak_rss_mb"] > 0
        assert run["latency_samples"] > 0
        assert 0 <= run["change_to_message_p50_s"] <= run["change_to_message_p99_s"] < 5
        # Both publish each changed field as its own topic: several messages per poll.
        assert run["mqtt_msgs_per_poll"] > 3
    # The window began once startup was over: every unit read (and for the bridge, published).
    assert 0 < result["runs"]["bridge"][0]["startup_s"] < 60
    # Each in its own process: the baseline's memory is not the bridge's.
    assert result["runs"]["baseline"][0]["peak_rss_mb"] < result["runs"]["bridge"][0]["peak_rss_mb"]
    bridge_run, base_run = result["runs"]["bridge"][0], result["runs"]["baseline"][0]
    assert result["cpu_per_poll_ratio"]["median"] == pytest.approx(
        bridge_run["cpu_s_per_1000_polls"] / base_run["cpu_s_per_1000_polls"], abs=0.01
    )
    # Topics of its own, deleted after each run: nothing stays retained.
    assert asyncio.run(collect_retained(broker.port, "#")) == {}


def test_summary_gives_median_and_range_of_each_figure() -> None:
    runs = [{"cpu": 3.0, "polls": 10}, {"cpu": 1.0, "polls": 30}, {"cpu": 2.0, "polls": 20}]
    assert bench.summarize(runs) == {
        "cpu": {"median": 2.0, "min": 1.0, "max": 3.0},
        "polls": {"median": 20, "min": 10, "max": 30},
    }


def test_table_cells_show_the_median_then_the_range() -> None:
    assert bench._cell({"median": 0.5, "min": 0.4, "max": 0.71}) == "0.5 (0.4-0.71)"
    assert bench._cell({"median": 3, "min": 3, "max": 3}) == "3"


def test_delays_count_only_the_subjects_topics_inside_its_window() -> None:
    ticks = {"bench0001": 100.0}
    records = [
        (105.25, "b/bench0001/vitals/uptime_s", b"5"),  # 0.25 s after uptime became 5
        (105.5, "other/bench0001/vitals/uptime_s", b"5"),  # the other subject
        (150.0, "b/bench0001/vitals/uptime_s", b"49"),  # after the window
        (105.3, "b/bench0001/vitals/uptime_s", b""),  # a deletion at clean-up
    ]
    assert bench._delays(records, ticks, 100.0, 120.0, "b") == [0.25]


def test_the_baseline_reads_one_unit_over_one_connection_and_rejects_an_unknown_host() -> None:
    from bridge.sim.baseline import _HttpConnection  # noqa: PLC0415 - the pure part ends above
    from bridge.sim.simulator import HostRoutedServer, bench_units  # noqa: PLC0415

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        (unit,) = bench_units(1)
        async with HostRoutedServer([unit]) as server:
            http = _HttpConnection(unit.serial.lower(), ("127.0.0.1", server.port))
            bodies = [json.loads(await http.get("/api/1/vitals")) for _ in range(2)]
            stranger = _HttpConnection("nobody", ("127.0.0.1", server.port))
            with pytest.raises(ConnectionError) as refused:
                await stranger.get("/api/1/vitals")
            http.close()
            stranger.close()
        return bodies, str(refused.value)

    bodies, refused = asyncio.run(scenario())
    assert all("uptime_s" in body for body in bodies)
    assert refused == "HTTP 404"


@pytest.mark.system
def test_a_subject_that_cannot_start_is_one_error_line() -> None:
    """The baseline against a closed port: its process exits 1 and the bench says why."""
    units = bench._Units(names=["sim0000000001"], port=1, ticks={})
    spec = bench._subject_spec(
        "baseline",
        units,
        host="127.0.0.1",
        port=1,
        interval=1.0,
        seconds=1.0,
        discovery="off",
        warmup_max_s=1.0,
        publisher="auto",
    )
    with pytest.raises(BenchChildError) as stopped:
        asyncio.run(bench._run_subject("baseline", spec))
    message = str(stopped.value)
    assert message.startswith("the baseline process stopped (exit code 1): baseline: ")
    assert "\n" not in message


@pytest.mark.system
def test_bench_with_no_broker_says_so_in_one_line() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from bridge.tools.cli import main; sys.exit(main(sys.argv[1:]))",
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
            "seconds": 1.0,
            "repeat": 1,
            "interval_s": 1.0,
            "discovery": "entity",
            "broker": "127.0.0.1:1",
            "simulator": bench.SIMULATOR_ROUTING,
            "bridge": {"polls_per_s": {"median": 1.0, "min": 1.0, "max": 1.0}},
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
