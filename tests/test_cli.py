"""The ``twc3-bridge`` command line as a real subprocess: exit codes, messages, no tracebacks."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

import bridge
from bridge.core.config import CONFIG_ENV, PASSWORD_ENV
from bridge.sim.simulator import SimulatedUnit, UnitServer
from bridge.tools import cli
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = (sys.executable, "-m", "bridge")
TIMEOUT_S = 30.0
EXIT_USAGE = 2

GOOD_CONFIG = """
[mqtt]
host = "broker.example"
port = 8883
base_topic = "garage_twc"
username = "bridge"
password = "hunter2-do-not-print"

[polling]
vitals_s = 2

[[connectors]]
host = "192.168.1.50"
id = "garage"

[[connectors]]
host = "192.168.1.51:8080"
name = "Car Port 2"

[[connectors]]
host = "[fe80::1]:80"
"""

# Four problems: a misspelt key, a port out of range, a URL as host and a duplicate id.
BAD_CONFIG = """
[mqtt]
host = "localhost"
port = 70000
colour = "blue"

[[connectors]]
host = "http://192.168.1.50"
id = "garage"

[[connectors]]
host = "192.168.1.51"
id = "carport"

[[connectors]]
host = "192.168.1.52"
id = "garage"
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the bridge's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in {CONFIG_ENV, PASSWORD_ENV}}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BRIDGE, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=clean_env() if env is None else env,
        cwd=ROOT,
        check=False,
    )


def problem_lines(stderr: str) -> list[str]:
    """The indented one-problem-per-line part of a configuration error."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(GOOD_CONFIG)
    return path


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    return path


# ---- check-config -----------------------------------------------------------------------------


@pytest.mark.system
def test_check_config_valid_file_prints_summary(good_config: Path) -> None:
    """A valid file exits 0 and summarises the broker and each connector's topics."""
    result = run_cli("check-config", "--config", str(good_config))
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    out = result.stdout
    assert "configuration OK" in out
    assert "broker.example:8883" in out
    assert "garage_twc/garage/" in out
    assert "garage_twc/car_port_2/" in out
    assert "[fe80::1]:80" in out
    assert "serial number" in out  # the connector without id or name
    assert "hunter2-do-not-print" not in out + result.stderr


@pytest.mark.system
def test_check_config_lists_every_field_problem(bad_config: Path) -> None:
    """An invalid file exits 2 with one line per problem, each naming its key."""
    result = run_cli("check-config", "--config", str(bad_config))
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    assert result.stdout == ""
    assert str(bad_config) in result.stderr.splitlines()[0]
    lines = problem_lines(result.stderr)
    assert any(line.startswith("mqtt.colour:") and "unknown key" in line for line in lines), lines
    assert any(line.startswith("mqtt.port:") and "65535" in line for line in lines), lines
    assert any(line.startswith("connectors[0].host:") and "URL" in line for line in lines), lines
    assert len(lines) == len(set(lines))  # no problem reported twice


@pytest.mark.system
def test_check_config_reports_duplicate_ids_with_other_problems(bad_config: Path) -> None:
    """The duplicate id is reported in the same run as the field problems (as the README shows)."""
    result = run_cli("check-config", "--config", str(bad_config))
    assert result.returncode == EXIT_USAGE
    lines = problem_lines(result.stderr)
    assert any(line.startswith("connectors[2]:") and "'garage'" in line for line in lines), lines
    assert len(lines) == 4, lines


@pytest.mark.system
def test_check_config_reports_duplicate_ids(tmp_path: Path) -> None:
    """Two connectors with the same topic id (one from a name) are one problem line."""
    path = tmp_path / "dup.toml"
    path.write_text(
        '[[connectors]]\nhost = "192.168.1.50"\nid = "garage"\n'
        '[[connectors]]\nhost = "192.168.1.51"\nname = "Garage"\n'
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("connectors[1]:")
    assert "'garage'" in lines[0]
    assert "connectors[0]" in lines[0]


@pytest.mark.system
def test_check_config_missing_file(tmp_path: Path) -> None:
    """A file that does not exist exits 2 with a single line saying so."""
    missing = tmp_path / "nowhere.toml"
    result = run_cli("check-config", "--config", str(missing))
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: configuration file {missing} not found"]


@pytest.mark.system
def test_check_config_invalid_toml(tmp_path: Path) -> None:
    """A file that is not TOML exits 2 and says where the syntax breaks."""
    path = tmp_path / "broken.toml"
    path.write_text('[mqtt\nhost = "x"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "not valid TOML" in lines[0]
    assert "line 1" in lines[0]


@pytest.mark.system
def test_check_config_uses_environment_variable(good_config: Path) -> None:
    """Without --config the file named by TWC3_BRIDGE_CONFIG is read."""
    result = run_cli("check-config", env=clean_env(**{CONFIG_ENV: str(good_config)}))
    assert result.returncode == 0, result.stderr
    assert "broker.example:8883" in result.stdout


@pytest.mark.system
def test_check_config_option_wins_over_environment(good_config: Path, bad_config: Path) -> None:
    """--config takes precedence over TWC3_BRIDGE_CONFIG."""
    env = clean_env(**{CONFIG_ENV: str(bad_config)})
    result = run_cli("check-config", "--config", str(good_config), env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.system
def test_check_config_without_any_file() -> None:
    """Neither --config nor the variable: exit 2 and one line naming both ways."""
    result = run_cli("check-config")
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "--config" in lines[0]
    assert CONFIG_ENV in lines[0]


@pytest.mark.system
def test_run_with_invalid_config_exits_2(bad_config: Path) -> None:
    """``run`` refuses an invalid file up front, with the problem lines and no traceback."""
    result = run_cli("run", "--config", str(bad_config))
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    lines = problem_lines(result.stderr)
    assert any(line.startswith("mqtt.port:") for line in lines), lines


@pytest.mark.parametrize(
    "setting",
    [
        pytest.param(
            "[polling]\nbackoff_max_s = 1.5",
            id="backoff_max_s=1.5",
        ),
        pytest.param(
            "[mqtt]\nreconnect_max_s = 0.5",
            id="reconnect_max_s=0.5",
        ),
        pytest.param("[polling]\nbackoff_max_s = 2", id="backoff_max_s=2"),
    ],
)
@pytest.mark.system
def test_run_accepts_what_check_config_accepts(tmp_path: Path, setting: str) -> None:
    """A file check-config calls OK starts ``run``, which keeps going without broker or unit."""
    path = tmp_path / "bridge.toml"
    section, _, line = setting.partition("\n")
    mqtt = f'host = "127.0.0.1"\nport = {free_port()}\n'
    path.write_text(
        ("[mqtt]\n" + mqtt + line + "\n" if section == "[mqtt]" else "[mqtt]\n" + mqtt)
        + (f"[polling]\n{line}\n" if section == "[polling]" else "")
        + f'[[connectors]]\nhost = "127.0.0.1:{free_port()}"\nid = "garage"\n'
    )
    assert run_cli("check-config", "--config", str(path)).returncode == 0
    log = tmp_path / "bridge.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*BRIDGE, "run", "--config", str(path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=ROOT,
        )
    try:
        # Signalled once it runs (its handlers are installed before it says so), not after a
        # fixed pause that a loaded machine can outlast.
        deadline = time.monotonic() + TIMEOUT_S
        while "bridge starting" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


# ---- --version and the console script --------------------------------------------------------


@pytest.mark.system
def test_version_option() -> None:
    """--version prints the installed version."""
    result = run_cli("--version")
    assert result.returncode == 0
    expected = version("twc3-mqtt-bridge")
    assert bridge.__version__ == expected
    assert result.stdout.strip() == f"twc3-bridge {expected}"


@pytest.mark.system
def test_console_script_installed() -> None:
    """The ``twc3-bridge`` script sits next to the venv's python and runs."""
    script = Path(sys.executable).parent / "twc3-bridge"
    assert script.is_file(), f"{script} is missing; reinstall the project into the venv"
    result = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"twc3-bridge {version('twc3-mqtt-bridge')}"


# ---- probe ------------------------------------------------------------------------------------


async def probe_cli(*args: str) -> tuple[int, str]:
    """Run ``probe`` without blocking the event loop (it serves the simulated unit meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        *BRIDGE,
        "probe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=clean_env(),
        cwd=ROOT,
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode()


def unit_secrets(unit: SimulatedUnit) -> list[str]:
    """What identifies this unit or its network in its bodies."""
    return [
        unit.serial,
        unit.serial.lower(),
        base64.b64encode(unit.wifi_ssid.encode()).decode(),
        unit.wifi_ssid,
        unit.mac_address,
        unit.ip_address,
    ]


@pytest.mark.system
async def test_probe_shows_every_endpoint_and_topics() -> None:
    """``probe`` of a simulated unit shows the four bodies and the field topics they become."""
    unit = SimulatedUnit("SIMCLI000007", seed=7)
    async with asyncio.timeout(TIMEOUT_S + 10), UnitServer(unit) as server:
        code, output = await probe_cli(f"127.0.0.1:{server.port}")
    assert code == 0, output
    assert "Traceback" not in output
    for endpoint in ("vitals", "lifetime", "version", "wifi_status"):
        assert f"== /api/1/{endpoint}" in output
    prefix = f"twc3/{unit.serial.lower()}"
    assert f"{prefix}/vitals/grid_v = " in output
    assert f"{prefix}/lifetime/energy_wh = " in output
    assert f"{prefix}/version/serial_number = {unit.serial}" in output
    assert f"{prefix}/wifi_status/wifi_rssi = " in output
    assert "failed:" not in output
    for secret in unit_secrets(unit):
        if secret != unit.wifi_ssid:  # the unit sends the SSID only in base64
            assert secret in output, secret


@pytest.mark.system
async def test_probe_redact_hides_identifying_values() -> None:
    """With --redact no serial, SSID, MAC or IP address of the unit is printed."""
    unit = SimulatedUnit("SIMCLI000008", seed=8)
    async with asyncio.timeout(TIMEOUT_S + 10), UnitServer(unit) as server:
        code, output = await probe_cli(f"127.0.0.1:{server.port}", "--redact")
    assert code == 0, output
    for endpoint in ("vitals", "lifetime", "version", "wifi_status"):
        assert f"== /api/1/{endpoint}" in output
    assert "vitals/grid_v = " in output
    assert "REDACTED" in output
    lowered = output.lower()
    for secret in [*unit_secrets(unit), "127.0.0.1"]:
        assert secret.lower() not in lowered, secret


@pytest.mark.system
async def test_probe_closed_port_fails_cleanly() -> None:
    """A port nothing listens on: exit 1, "connection refused", no traceback."""
    async with asyncio.timeout(TIMEOUT_S + 10):
        code, output = await probe_cli(f"127.0.0.1:{free_port()}", "--timeout", "3")
    assert code == 1, output
    assert "connection refused" in output
    assert "Traceback" not in output


@pytest.mark.system
async def test_probe_with_config_names_topics_by_the_configured_id(tmp_path: Path) -> None:
    """``probe --config``: a host matching a connector shows its id under the base topic."""
    port = free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[mqtt]\nbase_topic = "home/tesla"\n'
        f'[[connectors]]\nhost = "127.0.0.1:{port}"\nname = "Garage Left"\n'
    )
    async with asyncio.timeout(TIMEOUT_S + 10):
        code, output = await probe_cli(
            f"127.0.0.1:{port}", "--timeout", "3", "--config", str(config)
        )
    assert code == 1, output
    assert "topics: home/tesla/garage_left/... (the connector's configured id)" in output


@pytest.mark.system
def test_probe_with_invalid_config_exits_2(bad_config: Path) -> None:
    """An invalid --config is a usage error, before any request."""
    result = run_cli("probe", "127.0.0.1:1", "--config", str(bad_config))
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)


@pytest.mark.system
def test_probe_rejects_url() -> None:
    """A URL instead of host[:port] is a usage error (exit 2) with one line."""
    result = run_cli("probe", "http://x")
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "URL" in lines[0]


# ---- simulate ---------------------------------------------------------------------------------


def two_free_ports() -> int:
    """A port P such that P and P+1 are both free on 127.0.0.1 right now."""
    for _ in range(50):
        base = free_port()
        if base >= 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    pytest.fail("no two consecutive free ports found")


def get_vitals(port: int) -> dict[str, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/api/1/vitals")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/json"
        body = json.loads(response.read())
    finally:
        connection.close()
    assert isinstance(body, dict)
    return body


@pytest.mark.system
def test_simulate_serves_units_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``simulate --units 2`` serves vitals on two consecutive ports and exits 0 on SIGTERM."""
    port = two_free_ports()
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [*BRIDGE, "simulate", "--units", "2", "--port", str(port), "--seed", "1"],
            stdout=out,
            stderr=err,
            env=clean_env(),
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while out_path.read_text().count("simulated wall connector") < 2:
            assert process.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text() + err_path.read_text()
            time.sleep(0.05)
        announced = out_path.read_text()
        for unit_port in (port, port + 1):
            assert f"http://127.0.0.1:{unit_port}" in announced
            vitals = get_vitals(unit_port)
            assert isinstance(vitals["grid_v"], float)
            assert isinstance(vitals["uptime_s"], int)
            assert "evse_state" in vitals
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert code == 0, err_path.read_text()
    assert "Traceback" not in err_path.read_text()


@pytest.mark.system
def test_simulate_rejects_unknown_quirk() -> None:
    """``--quirk bogus`` exits 2 with one error line naming the quirk."""
    result = run_cli("simulate", "--quirk", "bogus", "--port", "0")
    assert result.returncode == EXIT_USAGE
    assert_no_traceback(result)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "'bogus'" in errors[0]


# ---- check-config: [discovery] (in-process) ----------------------------------------------------


def _discovery_config(tmp_path: Path, networks: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        f'[[connectors]]\nhost = "127.0.0.2"\n\n[discovery]\nnetworks = {networks}\n',
        encoding="utf-8",
    )
    return path


def test_check_config_refuses_a_public_range_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    path = _discovery_config(tmp_path, '["8.8.8.0/24"]')
    assert cli.main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "discovery.networks: 8.8.8.0/24 is a public range" in err
    assert "Traceback" not in err


def test_check_config_warns_about_a_large_network_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    path = _discovery_config(tmp_path, '["127.0.0.0/29", "127.0.0.0/20"]')
    assert cli.main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "discovery: 127.0.0.0/29 (6 addresses, port 80)" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: [discovery]")]
    assert len(warnings) == 1, err  # only the /20 is large; both are on this machine (lo)
    assert "127.0.0.0/20 has 4094 addresses" in warnings[0]
    assert "may take up to 384 s" in warnings[0]


def test_check_config_warns_about_a_network_that_is_not_local(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No route from an address inside the network: it is reached through a router."""
    monkeypatch.setattr(cli, "route_source", lambda _network, _source=None: "192.168.1.2")
    path = _discovery_config(tmp_path, '["192.168.77.0/24"]')
    assert cli.main(["check-config", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: [discovery] 192.168.77.0/24 is not local" in err


def test_route_source_of_a_loopback_network_is_a_loopback_address() -> None:

    assert cli.route_source("127.0.0.0/29") == "127.0.0.1"
