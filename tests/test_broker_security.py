"""The real bridge against a mosquitto that demands a password, and one that speaks only TLS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridge.core.config import CONFIG_ENV, PASSWORD_ENV
from bridge.sim.simulator import SimulatedUnit, UnitServer
from tests.conftest import Broker, require_mosquitto

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]
USER = "bridge"
UNIT_SERIAL = "SIMSEC000001"
UNIT_ID = "garage"
PROCESS_TIMEOUT_S = 15.0

POLLING = """
[polling]
vitals_s = 1
vitals_idle_s = 1
lifetime_s = 2
wifi_status_s = 2
connect_timeout_s = 1
read_timeout_s = 2
"""

# The ``openssl`` extension sections of a throw-away CA, a broker certificate and a client one.
OPENSSL_CONFIG = """
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def require_tool(name: str) -> str:
    """A mosquitto or openssl helper binary: skip without it on a laptop, fail under CI."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if Path(p).exists()), None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed, and CI=true requires these tests to run")
        pytest.skip(f"{name} is not installed")
    return found


def stay_this_user() -> str:
    # Started as root, mosquitto drops to the "mosquitto" user, which cannot read the password
    # file or keys in pytest's private tmp directory; ``user`` keeps it as whoever runs the tests.
    return f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"


def start_broker(tmp_path: Path, extra_config: str) -> Broker:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Broker(require_mosquitto(), workdir, extra_config=stay_this_user() + extra_config)
    broker.start()
    return broker


# ---- the bridge process -------------------------------------------------------------------------


@dataclass
class BridgeProcess:
    """A running ``python -m bridge run`` and its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        """Everything the bridge logged so far."""
        return self.log.read_text(errors="replace")

    async def terminate(self) -> int:
        """SIGTERM, then the exit code (the process is killed if it does not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, PROCESS_TIMEOUT_S)


def start_bridge(config: Path, log: Path, password: str | None) -> subprocess.Popen[bytes]:
    """``python -m bridge run`` at debug level, so even debug lines are checked for secrets."""
    env = {k: v for k, v in os.environ.items() if k not in {CONFIG_ENV, PASSWORD_ENV}}
    if password is not None:
        env[PASSWORD_ENV] = password
    command = [sys.executable, "-m", "bridge", "run", "--config", str(config)]
    with log.open("wb") as sink:
        return subprocess.Popen(
            [*command, "--log-level", "debug"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


@contextlib.asynccontextmanager
async def running_bridge(
    tmp_path: Path, mqtt_section: str, *, password: str | None = None
) -> AsyncIterator[tuple[BridgeProcess, SimulatedUnit]]:
    """One simulated unit and the bridge reading it; the password goes in through the env."""
    unit = SimulatedUnit(UNIT_SERIAL, seed=11)
    async with UnitServer(unit) as server:
        config = tmp_path / "bridge.toml"
        config.write_text(
            mqtt_section
            + POLLING
            + f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nid = "{UNIT_ID}"\n'
        )
        log = tmp_path / "bridge.log"
        process = start_bridge(config, log, password)
        try:
            yield BridgeProcess(process, log), unit
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def mqtt_section(port: int, *extra: str) -> str:
    lines = [
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'client_id = "security-{os.getpid()}-{time.monotonic_ns()}"',
        "reconnect_max_s = 1",
        *extra,
    ]
    return "\n".join(lines) + "\n"


# ---- reading the broker back ----------------------------------------------------------------


async def read_retained(
    host: str, port: int, *, quiet_s: float = 0.4, **client_options: Any
) -> dict[str, str]:
    """Every retained topic under ``twc3/#`` until the flow goes quiet."""
    found: dict[str, str] = {}
    async with aiomqtt.Client(
        host, port, identifier=f"test-reader-{time.monotonic_ns()}", **client_options
    ) as client:
        await client.subscribe("twc3/#", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while True:
                    async with asyncio.timeout(quiet_s):
                        message = await anext(aiter(client.messages))
                    if message.retain and isinstance(message.payload, bytes):
                        found[str(message.topic)] = message.payload.decode()
    return found


async def wait_retained(
    host: str,
    port: int,
    predicate: Callable[[dict[str, str]], bool],
    *,
    limit_s: float = 20.0,
    **client_options: Any,
) -> dict[str, str]:
    """Read the retained topics again and again until ``predicate`` holds; fail with them."""
    deadline = time.monotonic() + limit_s
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiomqtt.MqttError):
            found = await read_retained(host, port, **client_options)
            if predicate(found):
                return found
        await asyncio.sleep(0.3)
    pytest.fail(f"condition not met within {limit_s} s; retained: {sorted(found.items())[:40]}")


def bridge_and_unit_online(found: dict[str, str]) -> bool:
    return (
        found.get("twc3/bridge/state") == "online"
        and found.get(f"twc3/{UNIT_ID}/availability") == "online"
        and f"twc3/{UNIT_ID}/vitals/grid_v" in found
        and found.get(f"twc3/{UNIT_ID}/version/serial_number") == UNIT_SERIAL
    )


# ---- username and password -------------------------------------------------------------------


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[tuple[Broker, str]]:
    """A broker that knows one user with a random password and refuses anonymous clients."""
    password = f"pw-{secrets.token_hex(8)}"
    password_file = tmp_path / "passwords"
    subprocess.run(
        [require_tool("mosquitto_passwd"), "-b", "-c", str(password_file), USER, password],
        check=True,
        capture_output=True,
        timeout=PROCESS_TIMEOUT_S,
    )
    broker = start_broker(tmp_path, f"allow_anonymous false\npassword_file {password_file}\n")
    try:
        yield broker, password
    finally:
        broker.stop()


async def test_password_from_environment_connects(
    password_broker: tuple[Broker, str], tmp_path: Path
) -> None:
    """The right password, given only through the env var, lets the bridge publish everything."""
    broker, password = password_broker
    async with asyncio.timeout(60):
        with pytest.raises(aiomqtt.MqttError):  # the broker really refuses anonymous clients
            await read_retained("127.0.0.1", broker.port)
        section = mqtt_section(broker.port, f'username = "{USER}"')
        async with running_bridge(tmp_path, section, password=password) as (bridge, _unit):
            found = await wait_retained(
                "127.0.0.1",
                broker.port,
                bridge_and_unit_online,
                username=USER,
                password=password,
            )
            assert bridge.process.poll() is None
            code = await bridge.terminate()
    assert password not in (tmp_path / "bridge.toml").read_text()
    assert found["twc3/bridge/state"] == "online"
    assert code == 0, bridge.log_text()
    log = bridge.log_text()
    assert "MQTT: connected to" in log
    assert password not in log
    assert "Traceback" not in log


async def test_wrong_password_is_logged_once_and_bridge_keeps_running(
    password_broker: tuple[Broker, str], tmp_path: Path
) -> None:
    """A refused login is one clear log line, not one per retry, and the bridge stays up."""
    broker, password = password_broker
    wrong = f"wrong-{secrets.token_hex(8)}"
    section = mqtt_section(broker.port, f'username = "{USER}"')
    async with (
        asyncio.timeout(60),
        running_bridge(tmp_path, section, password=wrong) as (bridge, _unit),
    ):
        await asyncio.sleep(6)  # about six retries with reconnect_max_s = 1
        assert bridge.process.poll() is None, bridge.log_text()
        found = await read_retained("127.0.0.1", broker.port, username=USER, password=password)
        code = await bridge.terminate()
    log = bridge.log_text()
    refusals = [line for line in log.splitlines() if "MQTT: cannot connect" in line]
    assert 1 <= len(refusals) <= 2, log
    assert "not authori" in refusals[0].lower() or "bad user name" in refusals[0].lower()
    assert f"127.0.0.1:{broker.port}" in refusals[0]
    assert log.count("still unavailable") >= 3  # it did keep retrying, quietly
    assert wrong not in log
    assert password not in log
    assert "Traceback" not in log
    assert not [topic for topic in found if topic.startswith("twc3/")]
    assert code == 0, log


# ---- TLS ----------------------------------------------------------------------------------------


@dataclass
class Pki:
    """A throw-away CA and the certificates it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the broker uses


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(
        [require_tool("openssl"), *args],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=PROCESS_TIMEOUT_S,
    )


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl(
        directory,
        *("req", "-x509", "-config", "openssl.cnf", "-extensions", "ca"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"),
    )
    return cert, key


def make_leaf(directory: Path, ca: tuple[Path, Path], name: str, section: str) -> tuple[Path, Path]:
    cert, key, request = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr"))
    openssl(
        directory,
        *("req", "-new", "-config", "openssl.cnf"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}"),
    )
    openssl(
        directory,
        *("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1])),
        *("-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-out", str(cert)),
        *("-extfile", "openssl.cnf", "-extensions", section),
    )
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, a broker certificate for localhost and 127.0.0.1, and a client certificate."""
    directory = tmp_path / "pki"
    directory.mkdir()
    (directory / "openssl.cnf").write_text(OPENSSL_CONFIG)
    ca = make_ca(directory, "test-ca")
    server = make_leaf(directory, ca, "localhost", "server")
    client = make_leaf(directory, ca, "twc3-bridge", "client")
    other_ca, _ = make_ca(directory, "other-ca")
    return Pki(ca[0], *server, *client, other_ca)


def tls_broker_config(pki: Pki, *, require_client_certificate: bool = False) -> str:
    # These listener options apply to the listener line Broker writes first.
    return f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n" + (
        "require_certificate true\n" if require_client_certificate else ""
    )


async def test_tls_with_own_ca(pki: Pki, tmp_path: Path) -> None:
    """With [mqtt.tls] ca_file the bridge connects to a TLS-only broker by host name."""
    broker = start_broker(tmp_path, tls_broker_config(pki))
    try:
        section = mqtt_section(broker.port, "[mqtt.tls]", f'ca_file = "{pki.ca}"').replace(
            'host = "127.0.0.1"', 'host = "localhost"'
        )
        async with (
            asyncio.timeout(60),
            running_bridge(tmp_path, section) as (bridge, _unit),
        ):
            tls = aiomqtt.TLSParameters(ca_certs=str(pki.ca))
            found = await wait_retained(
                "localhost", broker.port, bridge_and_unit_online, tls_params=tls
            )
            code = await bridge.terminate()
    finally:
        broker.stop()
    assert found["twc3/bridge/state"] == "online"
    assert code == 0, bridge.log_text()
    assert f"MQTT: connected to localhost:{broker.port}" in bridge.log_text()
    assert "Traceback" not in bridge.log_text()


async def test_tls_with_client_certificate(pki: Pki, tmp_path: Path) -> None:
    """A broker that requires client certificates accepts the bridge's cert_file/key_file."""
    broker = start_broker(tmp_path, tls_broker_config(pki, require_client_certificate=True))
    try:
        section = mqtt_section(
            broker.port,
            "[mqtt.tls]",
            f'ca_file = "{pki.ca}"',
            f'cert_file = "{pki.client_cert}"',
            f'key_file = "{pki.client_key}"',
        )
        async with (
            asyncio.timeout(60),
            running_bridge(tmp_path, section) as (bridge, _unit),
        ):
            tls = aiomqtt.TLSParameters(
                ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key)
            )
            found = await wait_retained(
                "127.0.0.1", broker.port, bridge_and_unit_online, tls_params=tls
            )
            code = await bridge.terminate()
    finally:
        broker.stop()
    assert found[f"twc3/{UNIT_ID}/availability"] == "online"
    assert code == 0, bridge.log_text()
    assert "Traceback" not in bridge.log_text()


async def test_tls_untrusted_broker_is_refused_quietly(pki: Pki, tmp_path: Path) -> None:
    """A broker certificate from another CA is refused: one log line, the bridge stays up."""
    broker = start_broker(tmp_path, tls_broker_config(pki))
    try:
        section = mqtt_section(broker.port, "[mqtt.tls]", f'ca_file = "{pki.other_ca}"')
        async with (
            asyncio.timeout(60),
            running_bridge(tmp_path, section) as (bridge, _unit),
        ):
            await asyncio.sleep(3.5)
            assert bridge.process.poll() is None, bridge.log_text()
            found = await read_retained(
                "127.0.0.1", broker.port, tls_params=aiomqtt.TLSParameters(ca_certs=str(pki.ca))
            )
            code = await bridge.terminate()
    finally:
        broker.stop()
    log = bridge.log_text()
    refusals = [line for line in log.splitlines() if "MQTT: cannot connect" in line]
    assert len(refusals) == 1, log
    assert "certificate" in refusals[0].lower(), refusals[0]
    assert not [topic for topic in found if topic.startswith("twc3/")]
    assert "Traceback" not in log
    assert code == 0, log
