"""Shared fixtures: a real mosquitto on a free loopback port, and MQTT helpers for assertions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

# Real bodies and vitals traces from public sources, identifiers made up (see fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRACES = FIXTURES / "traces"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (all of 127.0.0.0/8 is lo)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str | None:
    """The mosquitto executable, also where Debian puts it outside PATH."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def require_mosquitto() -> str:
    """Skip without mosquitto on a laptop; fail under CI, where it must be installed."""
    binary = mosquitto_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is not installed, and CI=true requires the broker tests to run")
        pytest.skip("mosquitto is not installed")
    return binary


class Broker:
    """A mosquitto process that tests can stop and start again on the same port."""

    def __init__(self, binary: str, workdir: Path, extra_config: str = "") -> None:
        self.binary = binary
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stdout\n"
            "set_tcp_nodelay true\n" + extra_config
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start mosquitto and wait until it accepts connections."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """Kill mosquitto (its retained messages go with it: persistence is off)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto for one test."""
    instance = Broker(require_mosquitto(), tmp_path)
    instance.start()
    yield instance
    instance.stop()


async def collect_retained(
    port: int, pattern: str = "#", quiet_s: float = 0.5, limit_s: float = 10.0
) -> dict[str, str]:
    """Subscribe and return every retained topic and payload delivered until the flow goes quiet."""
    found: dict[str, str] = {}
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"test-reader-{time.monotonic_ns()}"
    ) as client:
        await client.subscribe(pattern, qos=1)
        deadline = time.monotonic() + limit_s
        with contextlib.suppress(TimeoutError):
            while time.monotonic() < deadline:
                async with asyncio.timeout(quiet_s):
                    message = await anext(aiter(client.messages))
                if message.retain and isinstance(message.payload, bytes):
                    found[str(message.topic)] = message.payload.decode()
    return found


async def wait_for_retained(
    port: int,
    predicate: object,
    *,
    pattern: str = "#",
    limit_s: float = 20.0,
) -> dict[str, str]:
    """Poll the retained topics until ``predicate(found)`` is true; fail with what was seen."""
    assert callable(predicate)
    deadline = time.monotonic() + limit_s
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiomqtt.MqttError):
            found = await collect_retained(port, pattern, quiet_s=0.3)
            if predicate(found):
                return found
        await asyncio.sleep(0.3)
    pytest.fail(
        f"condition not met within {limit_s} s; retained topics: {sorted(found.items())[:60]}"
    )


@contextlib.asynccontextmanager
async def subscriber(port: int, pattern: str = "#") -> AsyncIterator[aiomqtt.Client]:
    """A connected client subscribed to ``pattern``."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"test-sub-{time.monotonic_ns()}"
    ) as client:
        await client.subscribe(pattern, qos=1)
        yield client


# Whole modules of the system tier: the real bridge process, a broker, real time.
SYSTEM_MODULES = ("test_fault_suite", "test_end_to_end")
SYSTEM_MODULE_SUFFIX = "_e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the system tier: tests needing a broker, and the end-to-end and fault-suite modules.

    ``./scripts/test`` runs the rest (the fast tier); ``./scripts/test --all`` and CI run both.
    """
    for item in items:
        module = item.path.stem
        if (
            item.get_closest_marker("broker") is not None
            or "broker" in getattr(item, "fixturenames", ())
            or module.startswith(SYSTEM_MODULES)
            or module.endswith(SYSTEM_MODULE_SUFFIX)
        ):
            item.add_marker(pytest.mark.system)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast-tier test that starts a process fails, telling its author to mark it ``system``."""
    if request.node.get_closest_marker("system") is not None:
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail(f"{request.node.nodeid} starts a process: mark it @pytest.mark.system")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True)
def _private_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bridges started by tests keep their state file in a temporary folder, never in ~."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state-home")))
