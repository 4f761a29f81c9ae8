"""The ``simulate`` command's options and the words they take: wirings, start states, quirks.

Light on purpose: ``build_parser()`` imports this for every command (the Docker healthcheck
included), while the simulator itself is imported only when ``simulate`` runs. The simulator
takes its vocabularies from here, so both agree.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias, get_args

Wiring: TypeAlias = Literal["eu_three_phase", "na_split_phase"]
WiringChoice: TypeAlias = Literal[Wiring, "mixed"]
StartState: TypeAlias = Literal["idle", "charging"]
QuirkValue: TypeAlias = float | int | bool

WIRINGS: Final[tuple[Wiring, ...]] = get_args(Wiring)
WIRING_CHOICES: Final[tuple[WiringChoice, ...]] = get_args(WiringChoice)
START_STATES: Final[tuple[StartState, ...]] = get_args(StartState)

MAX_UNITS: Final = 1000
MAX_PORT: Final = 65535


QuirkKind: TypeAlias = Literal["probability", "seconds", "rate", "bytes", "flag"]
QUIRK_KINDS: Final[Mapping[str, QuirkKind]] = {
    "nan": "probability",
    "truncated": "probability",
    "http_500": "probability",
    "sensor_255": "probability",
    "slow_first_byte_s": "seconds",
    "refuse": "flag",
    "hang": "probability",
    "drip_bytes_per_s": "rate",
    "huge_body_bytes": "bytes",
    "endless_chunked": "probability",
}
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})


def validate_quirk(name: str, value: QuirkValue) -> QuirkValue:
    """``value`` as quirk ``name`` stores it (bytes as int).

    Raises:
        ValueError: with a one-line reason when the value does not suit the quirk.
    """
    kind = QUIRK_KINDS[name]
    if kind == "flag":
        if not isinstance(value, bool):
            raise ValueError(f"quirk {name} is a flag (true/false), got {value!r}")
        return value
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"quirk {name} must be a finite number >= 0, got {value!r}")
    if kind == "probability" and value > 1:
        raise ValueError(f"quirk {name} is a probability within 0..1, got {value!r}")
    if kind == "bytes" and value != int(value):
        raise ValueError(f"quirk {name} is a whole number of bytes, got {value!r}")
    return int(value) if kind == "bytes" else value


def parse_quirk(text: str) -> tuple[str, QuirkValue]:
    """Parse ``NAME[=VALUE]``; a bare probability or flag quirk means "always".

    Raises:
        ValueError: with a one-line reason for unknown names and invalid values.
    """
    name, has_value, raw = text.partition("=")
    name = name.strip()
    raw = raw.strip()
    kind = QUIRK_KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown quirk {name!r} (known: {', '.join(QUIRK_KINDS)})")
    if not has_value:
        if kind == "flag":
            return name, True
        if kind == "probability":
            return name, 1.0
        raise ValueError(f"quirk {name} needs a value, e.g. {name}=3")
    if kind == "flag":
        if raw.lower() in _TRUE_WORDS:
            return name, True
        if raw.lower() in _FALSE_WORDS:
            return name, False
        raise ValueError(f"quirk {name} takes true or false, got {raw!r}")
    try:
        number = int(raw) if kind == "bytes" else float(raw)
    except ValueError:
        raise ValueError(f"quirk {name} needs a number, got {raw!r}") from None
    return name, validate_quirk(name, number)


def _int_in_range(text: str, option: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"{option} takes a whole number {low}..{high}, got {text!r}"
        )
    return value


def _units_argument(text: str) -> int:
    return _int_in_range(text, "--units", 1, MAX_UNITS)


def _port_argument(text: str) -> int:
    return _int_in_range(text, "--port", 0, MAX_PORT)


def _speed_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--speed takes a positive number, got {text!r}")
    return value


def _seed_argument(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed takes an integer, got {text!r}") from None


def _quirk_argument(text: str) -> tuple[str, QuirkValue]:
    try:
        return parse_quirk(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser`` (bad values end in ``parser.error``)."""
    parser.add_argument(
        "--units",
        type=_units_argument,
        default=1,
        help="number of simulated wall connectors (default 1)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=_port_argument,
        default=8780,
        help="port of the first unit, the next ones count up (0: free ports; default 8780)",
    )
    parser.add_argument(
        "--wiring",
        choices=WIRING_CHOICES,
        default="mixed",
        help="electrical service of the units; mixed alternates EU and NA (default)",
    )
    parser.add_argument(
        "--speed",
        type=_speed_argument,
        default=1.0,
        help="simulated seconds per real second (default 1.0)",
    )
    parser.add_argument(
        "--start", choices=START_STATES, default="idle", help="initial state (default idle)"
    )
    parser.add_argument(
        "--seed",
        type=_seed_argument,
        default=None,
        help="make noise, timelines and quirks reproducible",
    )
    parser.add_argument(
        "--quirk",
        type=_quirk_argument,
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help=f"misbehave, repeatable; names: {', '.join(QUIRK_KINDS)} "
        "(e.g. --quirk nan=0.1 --quirk slow_first_byte_s=3)",
    )
