"""The ``twc3-bridge`` command: subcommands, logging set-up and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bridge import __version__
from bridge.core.config import CONFIG_ENV, BridgeConfig, ConfigError, load_config, parse_host
from bridge.core.logtext import EscapingFormatter, escaped
from bridge.presentation.topics import TopicLayout
from bridge.sim.options import add_simulate_arguments  # light: the simulator loads only to run
from bridge.tools.exitcodes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

logger = logging.getLogger("bridge")


LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(message)s"
LOG_DATE_FORMAT: Final = "%Y-%m-%d %H:%M:%S"


def setup_logging(level: str) -> None:
    """One line per event, to stderr, with a timestamp; no message can break its line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    # httpx logs every request at INFO; that is noise for a service polling every few seconds.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _config_path(args: argparse.Namespace) -> Path | None:
    value = args.config or os.environ.get(CONFIG_ENV)
    return Path(value) if value else None


def _load(args: argparse.Namespace) -> BridgeConfig | None:
    path = _config_path(args)
    if path is None:
        print(f"error: no configuration: pass --config FILE or set {CONFIG_ENV}", file=sys.stderr)
        return None
    if not path.is_file():
        print(f"error: configuration file {path} not found", file=sys.stderr)
        return None
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"error: invalid configuration {path}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bridge."""
    config = _load(args)
    if config is None:
        return EXIT_USAGE
    setup_logging(args.log_level or config.logging.level)
    from bridge.runtime.app import run_bridge  # noqa: PLC0415 - keeps check-config free of network imports

    asyncio.run(run_bridge(config))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a configuration file and summarise it."""
    config = _load(args)
    if config is None:
        return EXIT_USAGE
    mqtt = config.mqtt
    tls = " (TLS)" if mqtt.tls is not None else ""
    print(f"configuration OK: broker {mqtt.host}:{mqtt.port}{tls}, base topic {mqtt.base_topic!r}")
    layout = TopicLayout(mqtt.base_topic, config.bridge.instance)
    for connector in config.connectors:
        topic_id = connector.configured_id() or "(serial number, once the unit answers)"
        where = connector.host or f"serial {connector.serial} (found in [discovery] networks)"
        print(f"  connector {where}: topics {layout.unit(topic_id)}/…")
    _check_discovery(config)
    return EXIT_OK


def _check_discovery(config: BridgeConfig) -> None:
    """Summarise ``[discovery]`` and warn, on stderr, about networks too large or not local."""
    from bridge.core.networks import (  # noqa: PLC0415 - keeps check-config light without [discovery]
        host_count,
        network_warnings,
        probe_source,
        read_network,
    )

    discovery = config.discovery
    if not discovery.networks:
        return
    sources = [connector.source_address for connector in config.connectors]
    for text in discovery.networks:
        source = probe_source(text, sources)
        print(
            f"  discovery: {text} ({host_count(read_network(text))} addresses, port "
            f"{discovery.port}), from {source or 'the default route'}"
        )
        local = [address for address in (source, route_source(text, source)) if address]
        for warning in network_warnings(
            text,
            concurrency=discovery.concurrency,
            timeout_s=discovery.timeout_s,
            local_addresses=local,
        ):
            print(f"warning: [discovery] {warning}", file=sys.stderr)


def route_source(network: str, source_address: str | None = None) -> str | None:
    """The local address the system would send from to reach ``network``, or ``None``.

    Connecting a UDP socket sends nothing: it only asks the kernel for a route and a source.
    """
    import ipaddress  # noqa: PLC0415 - keeps check-config light without [discovery]
    import socket  # noqa: PLC0415 - keeps check-config light without [discovery]

    target = next(ipaddress.ip_network(network, strict=False).hosts(), None)
    if target is None:  # a single address: /32 or /128
        target = ipaddress.ip_network(network, strict=False).network_address
    family = socket.AF_INET6 if target.version == 6 else socket.AF_INET  # noqa: PLR2004
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe_socket:
            if source_address is not None:
                probe_socket.bind((source_address, 0))
            probe_socket.connect((str(target), 9))  # 9: the discard port; nothing is sent
            return str(probe_socket.getsockname()[0])
    except OSError:
        return None


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the running bridge completed a poll-and-publish cycle recently."""
    config = _load(args)
    if config is None:
        return EXIT_USAGE
    from bridge.runtime.housekeeping import HEARTBEAT_FILE_NAME  # noqa: PLC0415 - keeps the check light

    path = config.bridge.data_dir / HEARTBEAT_FILE_NAME
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        print(f"unhealthy: no heartbeat at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if age > args.max_age:
        print(
            f"unhealthy: last poll-and-publish {age:.0f} s ago (limit {args.max_age:.0f} s)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"healthy: last poll-and-publish {age:.0f} s ago")
    return EXIT_OK


def _same_host(first: str, second: str) -> bool:
    (host_a, port_a), (host_b, port_b) = parse_host(first), parse_host(second)
    return host_a.lower() == host_b.lower() and port_a == port_b


def cmd_probe(args: argparse.Namespace) -> int:
    """Read a unit's four endpoints once and show them, with the topics the bridge would use."""
    try:
        parse_host(args.host)
    except ValueError as error:
        print(f"error: {escaped(repr(args.host))}: {error}", file=sys.stderr)
        return EXIT_USAGE
    from bridge.tools.probe import DEFAULT_BASE_TOPIC, probe  # noqa: PLC0415 - imports httpx lazily

    base_topic, configured_id = DEFAULT_BASE_TOPIC, None
    if _config_path(args) is not None:
        config = _load(args)
        if config is None:
            return EXIT_USAGE
        base_topic = config.mqtt.base_topic
        configured_id = next(
            (
                c.configured_id()
                for c in config.connectors
                if c.host is not None and _same_host(c.host, args.host)
            ),
            None,
        )
    return asyncio.run(
        probe(
            args.host,
            redact=args.redact,
            timeout_s=args.timeout,
            base_topic=base_topic,
            configured_id=configured_id,
        )
    )


def cmd_scan(args: argparse.Namespace) -> int:
    """Look for Wall Connectors on a network and print a configuration block for each."""
    from bridge.tools.scan import run_scan  # noqa: PLC0415 - imports httpx only when needed

    return run_scan(
        args.network, port=args.port, timeout_s=args.timeout, concurrency=args.concurrency
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run simulated units until interrupted."""
    from bridge.sim.simulator import simulate_main  # noqa: PLC0415 - the simulator is optional

    try:
        return asyncio.run(simulate_main(args))
    except KeyboardInterrupt:
        return EXIT_OK


def _port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"{port} is not within 1-65535")
    return port


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.1 <= value <= 3600:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"{value} is not within 0.1-3600 seconds")
    return value


def cmd_watch(args: argparse.Namespace) -> int:
    """Show every connector's availability, status and power as a live table."""
    from pydantic import ValidationError  # noqa: PLC0415

    from bridge.core.config import MqttConfig  # noqa: PLC0415
    from bridge.core.names import validate_base_topic  # noqa: PLC0415

    if args.host is not None or args.port is not None:
        if args.config:
            print("error: give either --config or --host/--port, not both", file=sys.stderr)
            return EXIT_USAGE
        try:
            mqtt = MqttConfig(host=args.host or "localhost", port=args.port or 1883)
        except ValidationError as error:
            print(f"error: invalid broker address: {error.errors()[0]['msg']}", file=sys.stderr)
            return EXIT_USAGE
    elif _config_path(args) is not None:
        config = _load(args)
        if config is None:
            return EXIT_USAGE
        mqtt = config.mqtt
    else:
        mqtt = MqttConfig()
    if args.base_topic is not None:
        problem = validate_base_topic(args.base_topic)
        if problem:
            print(f"error: --base-topic {args.base_topic!r}: {problem}", file=sys.stderr)
            return EXIT_USAGE
        mqtt = mqtt.model_copy(update={"base_topic": args.base_topic})
    from bridge.tools.watch import run_watch  # noqa: PLC0415 - imports aiomqtt only when needed

    return run_watch(mqtt, once=args.once, interval_s=args.interval)


def cmd_forget(args: argparse.Namespace) -> int:
    """Clear the retained topics, discovery configs and Homie node of ids no longer configured."""
    config = _load(args)
    if config is None:
        return EXIT_USAGE
    setup_logging(config.logging.level)
    from bridge.core.names import id_problem  # noqa: PLC0415 - keeps check-config light

    configured = {cid for c in config.connectors if (cid := c.configured_id())}
    for unit_id in args.ids:
        if (problem := id_problem(unit_id)) is not None:
            print(f"error: {escaped(repr(unit_id))} is no unit id: {problem}", file=sys.stderr)
            return EXIT_USAGE
        if unit_id in configured:
            print(
                f"error: {unit_id} is still configured; remove or rename its [[connectors]] "
                "entry first (the bridge would publish it again)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    return asyncio.run(_forget(config, list(dict.fromkeys(args.ids))))


async def _forget(config: BridgeConfig, ids: list[str]) -> int:
    # Network and state imports only for this command.
    from bridge.adapters.mqtt import MqttUnavailableError  # noqa: PLC0415
    from bridge.presentation.homie import device_root  # noqa: PLC0415
    from bridge.runtime.app import STATE_FILE_NAME, connector_owner  # noqa: PLC0415
    from bridge.runtime.ghosts import (  # noqa: PLC0415
        Ghost,
        clear_ghosts,
        collect_retained,
        discovery_topics_of,
        homie_node_of,
    )
    from bridge.runtime.statefile import StateFile  # noqa: PLC0415

    mqtt, layout = config.mqtt, TopicLayout(config.mqtt.base_topic, config.bridge.instance)
    identifier = f"{mqtt.client_id}-forget"
    broker = f"broker {mqtt.host}:{mqtt.port}"
    try:
        state = await collect_retained(mqtt, [layout.bridge_state], identifier)
    except MqttUnavailableError as error:
        print(f"error: {broker}: {escaped(str(error))}", file=sys.stderr)
        return EXIT_FAILURE
    if state.get(layout.bridge_state) == "online":
        print(
            f"error: the bridge seems to be running ({layout.bridge_state} is online); stop it "
            "first (a running bridge clears ids no longer configured by itself at start)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    state_file = StateFile(
        config.bridge.data_dir / STATE_FILE_NAME, config.homeassistant.discovery_prefix
    )
    published, announced = state_file.published_units(), state_file.announced_topics()
    owners = {connector_owner(c) for c in config.connectors}
    configured = {cid for c in config.connectors if (cid := c.configured_id())}
    # Discovery configs go with an id only when its connector is gone: a key still configured
    # (an address whose unit was replaced) owns the live unit's configs too.
    gone = {uid: owner for uid in ids if (owner := published.get(uid)) and owner not in owners}
    homie_root = device_root(config.homie.base_topic, config.homie.device_id)
    ghosts = [
        Ghost(
            uid,
            discovery_topics_of(announced, gone[uid]) if uid in gone else (),
            homie_node_of(uid, configured) if config.homie.enabled else None,
        )
        for uid in ids
    ]
    try:
        cleared = await clear_ghosts(
            mqtt,
            layout,
            ghosts,
            homie_root=homie_root if config.homie.enabled else None,
            rewrite_nodes=True,
            identifier=identifier,
        )
    except MqttUnavailableError as error:
        print(f"error: {broker}: {escaped(str(error))}", file=sys.stderr)
        return EXIT_FAILURE
    for uid in ids:
        state_file.forget_published(uid)
    dropped = set(gone.values())
    state_file.keep_announced(
        {topic: owner for topic, owner in announced.items() if owner not in dropped},
        {
            owner: components
            for owner, components in state_file.announced_components().items()
            if owner not in dropped
        },
    )
    if not state_file.flush():
        print(f"error: cannot update {state_file.path}", file=sys.stderr)
        return EXIT_FAILURE
    empty = [c.unit_id for c in cleared if not (c.retained or c.discovery or c.homie_node)]
    if empty:
        print(f"nothing of {', '.join(empty)} was left on the {broker}")
    return EXIT_OK


def _broker_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, _port_number(port)


BENCH_SUBJECTS: dict[str, tuple[str, ...]] = {
    "plain": ("bridge", "baseline"),
    "none": ("bridge",),
}


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the bridge against simulated units and a bare baseline."""
    from bridge.sim.bench import bench_main  # noqa: PLC0415 - the benchmark is optional

    if not 1 <= args.units <= 1000 or not 1 <= args.seconds <= 3600 or not 1 <= args.repeat <= 20:  # noqa: PLR2004
        print("error: --units takes 1-1000, --seconds 1-3600, --repeat 1-20", file=sys.stderr)
        return EXIT_USAGE
    host, port = args.broker
    return bench_main(
        units=args.units,
        seconds=args.seconds,
        host=host,
        port=port,
        interval=args.interval,
        json_path=Path(args.json) if args.json else None,
        discovery=args.discovery,
        repeat=args.repeat,
        subjects=BENCH_SUBJECTS[args.baseline],
        publisher=args.publisher,
    )


def _add_forget(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    forget = sub.add_parser(
        "forget",
        help="clear what unit ids no longer configured left on the broker (bridge stopped)",
    )
    forget.add_argument("ids", nargs="+", metavar="ID", help="unit id (topic level) to forget")
    forget.add_argument("--config", help=f"TOML configuration file (or ${CONFIG_ENV})")
    forget.set_defaults(handler=cmd_forget)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="twc3-bridge",
        description="Tesla Wall Connector Gen 3 local API to MQTT bridge (read-only: the "
        "unit's local API cannot start, stop or limit charging).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the bridge")
    run.add_argument("--config", help=f"TOML configuration file (or ${CONFIG_ENV})")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file without running")
    check.add_argument("--config", help=f"TOML configuration file (or ${CONFIG_ENV})")
    check.set_defaults(handler=cmd_check_config)

    health = sub.add_parser(
        "healthcheck", help="exit 0 if the running bridge polled and published recently"
    )
    health.add_argument("--config", help=f"TOML configuration file (or ${CONFIG_ENV})")
    health.add_argument("--max-age", type=float, default=120.0, help="seconds (default 120)")
    health.set_defaults(handler=cmd_healthcheck)

    probe = sub.add_parser("probe", help="read one unit once and show what would be published")
    probe.add_argument("host", metavar="HOST[:PORT]")
    probe.add_argument(
        "--redact", action="store_true", help="hide serial number, SSID, MAC and IP addresses"
    )
    probe.add_argument("--timeout", type=float, default=15.0, help="read timeout in seconds")
    probe.add_argument(
        "--config",
        help=f"configuration file whose base topic and connector ids to show (or ${CONFIG_ENV})",
    )
    probe.set_defaults(handler=cmd_probe)

    scan = sub.add_parser("scan", help="find Wall Connectors on a network and print their config")
    scan.add_argument("network", metavar="NETWORK", help="e.g. 192.168.1.0/24, or one address")
    scan.add_argument("--port", type=int, default=80, help="HTTP port to try (default 80)")
    scan.add_argument(
        "--timeout", type=float, default=1.5, help="connect and read timeout in seconds"
    )
    scan.add_argument(
        "--concurrency", type=int, default=32, help="addresses probed at once (1-256)"
    )
    scan.set_defaults(handler=cmd_scan)

    watch = sub.add_parser(
        "watch", help="show every connector's availability, status and power from the broker"
    )
    watch.add_argument(
        "--config",
        help=f"TOML configuration file whose [mqtt] section to use (or ${CONFIG_ENV})",
    )
    watch.add_argument("--host", help="broker host, instead of --config (default localhost)")
    watch.add_argument(
        "--port", type=_port_number, help="broker port, instead of --config (default 1883)"
    )
    watch.add_argument("--base-topic", help="base topic (default: the configuration's, or twc3)")
    watch.add_argument(
        "--once", action="store_true", help="print one table once the retained values are in"
    )
    watch.add_argument(
        "--interval",
        type=_positive_seconds,
        default=1.0,
        help="seconds between refreshes (default 1)",
    )
    watch.set_defaults(handler=cmd_watch)

    _add_forget(sub)
    simulate = sub.add_parser("simulate", help="run simulated Wall Connectors on loopback ports")
    add_simulate_arguments(simulate)
    simulate.set_defaults(handler=cmd_simulate)

    bench = sub.add_parser(
        "bench", help="measure polls/s, CPU, memory and delay against simulated units"
    )
    bench.add_argument("--units", type=int, default=10, help="simulated units, 1-1000")
    bench.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    bench.add_argument("--broker", type=_broker_address, required=True, metavar="HOST:PORT")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument(
        "--interval", type=_positive_seconds, default=1.0, help="vitals interval (default 1)"
    )
    bench.add_argument(
        "--discovery",
        choices=["entity", "device", "off"],
        default="entity",
        help="Home Assistant discovery mode of the measured bridge (default entity)",
    )
    bench.add_argument(
        "--baseline",
        choices=list(BENCH_SUBJECTS),
        default="plain",
        help="plain (default): also run the plain program doing the bridge's job (h11, "
        "json.loads, paho publish), in turns with the bridge; none: the bridge alone",
    )
    bench.add_argument(
        "--repeat", type=int, default=3, help="runs of each subject, interleaved (default 3)"
    )
    bench.add_argument(
        "--publisher",
        choices=["auto", "plain"],
        default="auto",
        help="the measured bridge's [mqtt] publisher: auto (the fast path, default) or plain "
        "(aiomqtt's public publish only), to compare them",
    )
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run a subcommand; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return EXIT_OK
    return code
