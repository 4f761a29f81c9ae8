"""Smoke test of ``twc3-bridge bench``: a tiny run against the test broker gives sane figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Broker

pytestmark = pytest.mark.broker


def test_bench_reports_every_figure(broker: Broker, tmp_path: Path) -> None:
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
    bridge, base = result["bridge"], result["baseline"]
    assert result["units"] == 3
    assert bridge["polls_per_s"] > 0
    assert base["polls_per_s"] > 0
    assert bridge["mqtt_msgs_per_s"] > 0
    assert bridge["peak_rss_mb"] > 0
    assert bridge["cpu_s_per_1000_polls"] > 0
    assert result["cpu_per_poll_ratio"] > 0
    assert bridge["http_errors"] == 0
    assert bridge["latency_samples"] > 0
    p50, p99 = bridge["change_to_message_p50_s"], bridge["change_to_message_p99_s"]
    assert math.isfinite(p99)
    assert 0 <= p50 <= p99 < 5
