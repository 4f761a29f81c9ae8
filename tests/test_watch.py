"""``twc3-bridge watch``: the pure topic → state reduction and table, and one real-broker run."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.sim.simulator import Scenario, SimulatedUnit, UnitServer
from bridge.tools.cli import main
from bridge.tools.watch import (
    UNKNOWN,
    Screen,
    WatchState,
    apply,
    clean_text,
    format_age,
    render,
    subscriptions,
)
from tests.conftest import Broker, free_port, wait_for_retained

NOW = 1_800_000_000.0


def table_rows(table: str) -> dict[str, list[str]]:
    """Rows of a rendered table by id (cells split on runs of spaces)."""
    lines = table.splitlines()
    header = next(i for i, text in enumerate(lines) if text.startswith("ID "))
    return {line.split()[0]: line.split() for line in lines[header + 1 :] if line.strip()}


def full_state() -> WatchState:
    state = WatchState("twc3")
    messages = {
        "twc3/bridge/state": b"online",
        "twc3/garage/availability": b"online",
        "twc3/garage/derived/status": b"charging",
        "twc3/garage/derived/power_w": b"11040.5",
        "twc3/garage/derived/current_a": b"16",
        "twc3/garage/derived/session_energy_kwh": b"3.25",
        "twc3/garage/derived/last_seen": b"2027-01-15T08:00:00Z",
        "twc3/carport/availability": b"offline",
    }
    for topic, payload in messages.items():
        assert apply(state, topic, payload)
    return state


# --- apply ---------------------------------------------------------------------------------------


def test_apply_reads_every_column_and_the_bridge_state() -> None:
    state = full_state()
    assert state.bridge_state == "online"
    garage = state.units["garage"]
    assert (garage.availability, garage.status, garage.power_w) == ("online", "charging", "11040.5")
    assert (garage.current_a, garage.session_energy_kwh) == ("16", "3.25")
    assert garage.last_seen == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert state.units["carport"].availability == "offline"


@pytest.mark.parametrize(
    "topic",
    [
        "other/garage/availability",  # another base topic
        "twc3/group/availability",  # reserved ids
        "twc3/bridge/availability",
        "twc3/garage/vitals/grid_v",  # not a column
        "twc3/garage/derived/energy_wh",
        "twc3/garage/derived/power_w/extra",
        "twc3//availability",
        "twc3",
        "twc3/",
    ],
)
def test_apply_ignores_topics_outside_the_table(topic: str) -> None:
    state = WatchState("twc3")
    assert apply(state, topic, b"online") is False
    assert state.units == {}
    assert state.bridge_state is None


def test_apply_with_a_multi_level_base_topic() -> None:
    state = WatchState("home/ev")
    assert apply(state, "home/ev/garage/availability", b"online")
    assert not apply(state, "twc3/garage/availability", b"online")
    assert [uid for uid, _ in state.listed()] == ["garage"]
    assert subscriptions("home/ev")[0] == "home/ev/bridge/state"
    assert "home/ev/+/availability" in subscriptions("home/ev")


def test_a_unit_is_listed_only_once_its_availability_is_seen() -> None:
    state = WatchState("twc3")
    apply(state, "twc3/garage/derived/power_w", b"0")
    assert state.listed() == []
    apply(state, "twc3/garage/availability", b"online")
    assert [uid for uid, _ in state.listed()] == ["garage"]
    assert state.units["garage"].power_w == "0"


def test_an_empty_payload_clears_a_value() -> None:
    state = full_state()
    apply(state, "twc3/garage/derived/power_w", b"")
    assert state.units["garage"].power_w is None
    apply(state, "twc3/garage/availability", b"")
    assert "garage" not in [uid for uid, _ in state.listed()]
    apply(state, "twc3/never/availability", b"")
    assert "never" not in state.units


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe\x00\x80",  # not UTF-8
        b"\x1b[2J\x1b[31mred",  # terminal escapes
        b"x" * 5_000_000,  # huge
        b"",  # empty
        b"   ",
        b"\n\r\t",
        "ünïcødé ⚡".encode(),
        b"nan",
        b"-1e309",
    ],
)
def test_hostile_payloads_never_crash_and_never_reach_the_terminal_raw(payload: bytes) -> None:
    state = WatchState("twc3")
    for topic in (
        "twc3/bridge/state",
        "twc3/x/availability",
        "twc3/x/derived/status",
        "twc3/x/derived/power_w",
        "twc3/x/derived/last_seen",
    ):
        apply(state, topic, payload, retained=False, now=NOW)
    table = render(state, NOW + 5)
    assert "\x1b" not in table
    assert "\x00" not in table
    assert "\r" not in table
    assert max(len(line) for line in table.splitlines()) < 300


def test_clean_text_truncates_and_replaces_controls() -> None:
    assert clean_text(b"a" * 100) == "a" * 23 + "…"
    assert clean_text(b"a\x07b") == "a?b"
    assert clean_text(b"") is None
    assert clean_text(b"  ok  ") == "ok"


def test_hostile_topic_ids_are_cleaned() -> None:
    state = WatchState("twc3")
    apply(state, "twc3/\x1b[31mevil/availability", b"online")
    table = render(state, NOW)
    assert "\x1b" not in table
    assert "?[31mevil" in table


def test_last_seen_gives_the_age_and_a_live_message_refreshes_it() -> None:
    state = WatchState("twc3")
    apply(state, "twc3/a/availability", b"online")
    assert table_rows(render(state, NOW))["a"][-1] == UNKNOWN  # retained only: age unknown
    apply(state, "twc3/a/derived/last_seen", b"2027-01-15T08:00:00Z")
    seen = state.units["a"].last_seen
    assert seen is not None
    assert table_rows(render(state, seen + 7))["a"][-1] == "7s"
    apply(state, "twc3/a/derived/power_w", b"5", retained=False, now=seen + 100)
    assert table_rows(render(state, seen + 103))["a"][-1] == "3s"
    apply(state, "twc3/a/derived/last_seen", b"yesterday")  # unparsable: no timestamp
    assert state.units["a"].last_seen is None
    apply(state, "twc3/a/derived/last_seen", b"2027-01-15T08:00:00")  # no time zone: ambiguous
    assert state.units["a"].last_seen is None


# --- render --------------------------------------------------------------------------------------


def test_render_columns_values_and_unknowns() -> None:
    state = full_state()
    seen = state.units["garage"].last_seen
    assert seen is not None
    table = render(state, seen + 65)
    lines = table.splitlines()
    assert lines[0] == "bridge: online"
    assert lines[2].split() == [
        "ID",
        "AVAILABILITY",
        "STATUS",
        "POWER",
        "W",
        "CURRENT",
        "A",
        "SESSION",
        "kWh",
        "AGE",
    ]
    rows = table_rows(table)
    assert rows["garage"] == ["garage", "online", "charging", "11040.5", "16", "3.25", "1m", "05s"]
    assert rows["carport"] == ["carport", "offline", *[UNKNOWN] * 5]
    assert table.endswith("\n")


def test_render_sorts_by_id_and_aligns_columns() -> None:
    state = WatchState("twc3")
    for uid in ("zeta", "alpha", "mid_unit_with_long_id", "beta"):
        apply(state, f"twc3/{uid}/availability", b"online")
    apply(state, "twc3/beta/derived/power_w", b"123456.7")
    table = render(state, NOW)
    assert list(table_rows(table)) == ["alpha", "beta", "mid_unit_with_long_id", "zeta"]
    lines = table.splitlines()[2:]
    status_column = lines[0].index("STATUS")
    assert all(line[status_column] in {"S", UNKNOWN} for line in lines)
    power_end = lines[0].index("POWER W") + len("POWER W")
    beta = next(line for line in lines if line.startswith("beta"))
    assert beta[:power_end].endswith("123456.7")  # numbers right-aligned under their header


def test_render_without_connectors_or_bridge_state() -> None:
    table = render(WatchState("twc3"), NOW)
    assert table.splitlines()[0] == f"bridge: {UNKNOWN}"
    assert "no connector under twc3/+/availability" in table
    assert "online" not in table


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, UNKNOWN),
        (float("nan"), UNKNOWN),
        (float("inf"), UNKNOWN),
        (-5, "0s"),  # clock skew
        (0.4, "0s"),
        (59.9, "59s"),
        (60, "1m 00s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (86399, "23h 59m"),
        (86400 * 3 + 3600 * 4, "3d 04h"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_screen_redraws_in_place_on_a_terminal_and_appends_otherwise() -> None:
    tty = io.StringIO()
    screen = Screen(tty, tty=True)
    screen.show("one\n")
    screen.show("two\n")
    assert tty.getvalue().startswith("\x1b[H\x1b[2J")
    assert tty.getvalue().count("\x1b[2J") == 1
    assert "\x1b[Htwo" in tty.getvalue()
    plain = io.StringIO()
    screen = Screen(plain, tty=False)
    screen.show("one\n")
    screen.show("two\n")
    assert plain.getvalue() == "one\n\ntwo\n"


# --- command line --------------------------------------------------------------------------------


def test_watch_with_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 99999\n")
    assert main(["watch", "--config", str(bad), "--once"]) == 2
    assert "mqtt.port" in capsys.readouterr().err
    assert main(["watch", "--config", str(tmp_path / "missing.toml"), "--once"]) == 2
    assert main(["watch", "--config", str(bad), "--host", "x", "--once"]) == 2
    assert main(["watch", "--host", "localhost", "--base-topic", "a/#", "--once"]) == 2


def test_watch_with_an_unreachable_broker_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["watch", "--host", "127.0.0.1", "--port", str(free_port()), "--once"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: broker 127.0.0.1:")
    assert "Traceback" not in err


# --- against the real bridge ---------------------------------------------------------------------


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.broker
async def test_watch_once_shows_the_running_bridge(broker: Broker, tmp_path: Path) -> None:
    """Two simulated charging units, the real bridge, and ``watch --once`` reading it all back."""
    units = [
        SimulatedUnit(
            f"SIMWATCH0000{index}",
            wiring="eu_three_phase",
            seed=index,
            scenario=Scenario(start_state="charging", auto_cycle=False),
        )
        for index in (1, 2)
    ]
    ids = ("alpha", "beta")
    bridge: subprocess.Popen[bytes] | None = None
    watcher: asyncio.subprocess.Process | None = None
    log = tmp_path / "bridge.log"
    async with AsyncExitStack() as stack:
        try:
            servers = [await stack.enter_async_context(UnitServer(unit)) for unit in units]
            config = tmp_path / "bridge.toml"
            config.write_text(
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                f'client_id = "watch-e2e-{os.getpid()}"\nreconnect_max_s = 1\n'
                "[polling]\nvitals_s = 1\nvitals_idle_s = 1\nlifetime_s = 2\nwifi_status_s = 2\n"
                "connect_timeout_s = 1\nread_timeout_s = 2\n"
                + "".join(
                    f'\n[[connectors]]\nhost = "127.0.0.1:{server.port}"\nid = "{uid}"\n'
                    for uid, server in zip(ids, servers, strict=True)
                )
            )
            bridge = start_bridge(config, log)
            async with asyncio.timeout(60):
                found = await wait_for_retained(
                    broker.port,
                    lambda found: (
                        found.get("twc3/bridge/state") == "online"
                        and all(
                            found.get(f"twc3/{uid}/derived/status") == "charging"
                            and float(found.get(f"twc3/{uid}/derived/power_w", "0")) > 0
                            for uid in ids
                        )
                    ),
                    pattern="twc3/#",
                )
                # Freeze the bridge (its connection stays open, so no Will): the watcher must
                # then see exactly what is retained.
                bridge.send_signal(signal.SIGSTOP)
                found = await wait_for_retained(broker.port, lambda _: True, pattern="twc3/#")
                watcher = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bridge",
                    "watch",
                    "--config",
                    str(config),
                    "--once",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                stdout, stderr = await watcher.communicate()
        finally:
            if bridge is not None and bridge.poll() is None:
                bridge.send_signal(signal.SIGCONT)
                bridge.kill()
                bridge.wait(timeout=10)
            if watcher is not None and watcher.returncode is None:
                watcher.kill()
                await watcher.wait()
    table = stdout.decode()
    assert watcher.returncode == 0, (table, stderr.decode(), log.read_text(errors="replace"))
    assert "Traceback" not in stderr.decode()
    rows = table_rows(table)
    assert set(rows) == set(ids), table
    for uid in ids:
        row = rows[uid]
        assert row[1:4] == ["online", "charging", found[f"twc3/{uid}/derived/power_w"]], table
    assert table.splitlines()[0] == f"bridge: {found['twc3/bridge/state']}"


# --- named instances ---------------------------------------------------------------------------


def test_watch_subscribes_to_every_instance_state() -> None:
    assert "twc3/bridge/+/state" in subscriptions("twc3")


def test_apply_keeps_each_instance_state_and_render_lists_them() -> None:
    state = WatchState("twc3")
    assert apply(state, "twc3/bridge/garage/state", b"online")
    assert apply(state, "twc3/bridge/barn/state", b"offline")
    assert state.bridge_state is None
    assert state.instances == {"garage": "online", "barn": "offline"}
    assert render(state, 0).splitlines()[0] == "bridge: barn offline, garage online"
    assert apply(state, "twc3/bridge/state", b"online")
    assert render(state, 0).splitlines()[0] == "bridge: online, barn offline, garage online"


def test_a_deleted_instance_state_leaves_the_table() -> None:
    state = WatchState("twc3")
    apply(state, "twc3/bridge/garage/state", b"online")
    assert apply(state, "twc3/bridge/garage/state", b"")
    assert state.instances == {}
    assert render(state, 0).splitlines()[0] == f"bridge: {UNKNOWN}"


def test_an_instance_owner_token_is_not_a_state() -> None:
    state = WatchState("twc3")
    assert not apply(state, "twc3/bridge/garage/owner", b"0123abcd")
    assert state.instances == {}
