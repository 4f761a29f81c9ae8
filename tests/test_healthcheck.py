"""The health check the Docker image runs, against a real running bridge."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.sim.simulator import SimulatedUnit, UnitServer
from tests.conftest import Broker

pytestmark = pytest.mark.broker


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the bridge process, its output going to ``log``."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


async def healthcheck(config: Path, *extra: str) -> tuple[int, str]:
    """Run ``twc3-bridge healthcheck``; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "healthcheck",
        "--config",
        str(config),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_healthcheck_follows_the_heartbeat(broker: Broker, tmp_path: Path) -> None:
    """Unhealthy before the first cycle, healthy while polling, unhealthy once it is stale."""
    data = tmp_path / "data"
    async with UnitServer(SimulatedUnit("SIMHEALTH001", seed=1)) as server:
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "health"\n'
            f'[bridge]\ndata_dir = "{data}"\n[polling]\nvitals_idle_s = 1\n'
            f'[[connectors]]\nhost = "127.0.0.1:{server.port}"\nid = "garage"\n'
        )
        code, output = await healthcheck(config)
        assert code == 1
        assert "no heartbeat" in output
        process = start_bridge(config, tmp_path / "bridge.log")
        try:
            for _ in range(80):  # the first heartbeat comes within ~10-20 s
                if (data / "heartbeat").exists():
                    break
                await asyncio.sleep(0.5)
            code, output = await healthcheck(config)
            assert code == 0, output
            assert output.startswith("healthy")
        finally:
            process.kill()
            process.wait(10)
    await asyncio.sleep(1.1)
    code, output = await healthcheck(config, "--max-age", "1")
    assert code == 1
    assert "unhealthy: last poll-and-publish" in output
