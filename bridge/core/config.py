"""The bridge's TOML configuration: schema, defaults, validation and readable errors."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NamedTuple, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.core.names import id_problem, slugify, validate_base_topic
from bridge.core.networks import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    MAX_CONCURRENCY,
    MAX_TIMEOUT_S,
    network_problem,
    read_network,
)
from bridge.core.vocabulary import PhaseMode

CONFIG_ENV: Final = "TWC3_BRIDGE_CONFIG"
PASSWORD_ENV: Final = "TWC3_BRIDGE_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a secret
DEFAULT_HTTP_PORT: Final = 80
# The default MQTT client id and Homie device id; an instance name is appended to both.
DEFAULT_NAME: Final = "twc3-bridge"

Seconds = Annotated[float, Field(gt=0, le=86_400)]
Port = Annotated[int, Field(ge=1, le=65_535)]


def _usable_id(value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# One level of our topics: a connector's id, a bridge instance's name.
TopicId = Annotated[str, AfterValidator(_usable_id)]
MQTTS_PORT: Final = 8883
MAX_MQTT_PACKET_BYTES: Final = 268_435_460  # MQTT's largest remaining length plus its header
_BROKER_SCHEMES: Final = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}


class _Strict(BaseModel):
    # A misspelt key is far more likely than a deliberate extra one: refuse it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """TLS towards the broker; a CA file enables it, a client certificate is optional."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(default=False, description="skip the broker host name check")

    @model_validator(mode="after")
    def _key_goes_with_cert(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} is not a readable file")
        return self


class MqttConfig(_Strict):
    """Broker connection and topic layout."""

    host: str = "localhost"
    port: Port = 1883
    base_topic: str = "twc3"
    username: str | None = None
    password: SecretStr | None = None
    # ``twc3-bridge-<instance>`` by default when ``[bridge] instance`` is set.
    client_id: str = DEFAULT_NAME
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: TlsConfig | None = None
    reconnect_max_s: Seconds = 60.0
    # The largest MQTT packet the bridge sends (topic, payload and a few header bytes); a broker
    # that states a smaller maximum (MQTT 5) lowers it. Larger messages are refused with a warning.
    max_message_bytes: Annotated[int, Field(ge=1024, le=MAX_MQTT_PACKET_BYTES)] = 256 * 1024
    # "auto": MQTT 5 (which tells the broker's maximum packet size), 3.1.1 if the broker refuses it.
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    # "plain": publish through aiomqtt's public API only (slower; for comparison and as a way
    # out should the fast path misbehave). "auto" uses the fast path when the installed aiomqtt
    # and paho still have what it needs (bridge/adapters/mqtt_fastpath.py), else the plain one.
    publisher: Literal["auto", "plain"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _host_may_be_a_url(cls, data: Any) -> Any:  # noqa: ANN401 - raw TOML, checked below
        if not isinstance(data, dict) or not isinstance(data.get("host"), str):
            return data
        try:
            broker = parse_broker_host(data["host"])
        except ValueError as error:
            raise ValueError(f"host {data['host'].strip()!r}: {error}") from None
        written = data["host"].strip()
        data = {**data, "host": broker.host}
        if broker.port is not None:
            given = data.get("port")
            if given is not None and given != broker.port:
                raise ValueError(
                    f"host {written!r} says port {broker.port} but port is {given}; "
                    "give the port once"
                )
            data["port"] = broker.port
        elif broker.tls and "port" not in data:
            data["port"] = MQTTS_PORT
        if broker.tls is True and data.get("tls") is None:
            data["tls"] = {}
        elif broker.tls is False and data.get("tls") is not None:
            raise ValueError(f"host {written!r} means no TLS but [mqtt.tls] is set; use mqtts://")
        return data

    @field_validator("base_topic")
    @classmethod
    def _safe_base_topic(cls, value: str) -> str:
        problem = validate_base_topic(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class PollingConfig(_Strict):
    """How often each endpoint is read; every value may be overridden per connector."""

    vitals_s: Seconds = 5.0
    vitals_idle_s: Seconds = 15.0
    lifetime_s: Seconds = 60.0
    wifi_status_s: Seconds = 60.0
    version_s: Seconds = 3600.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # The unit can take seconds before its first byte
    # (docs/device-api.md, 'Slow and missing answers').
    read_timeout_s: Annotated[float, Field(gt=0, le=120)] = 15.0
    offline_after: Annotated[int, Field(ge=1, le=100)] = 3
    backoff_max_s: Annotated[float, Field(ge=1, le=3600)] = 60.0


_POLLING_KEYS: Final = frozenset(PollingConfig.model_fields)


# The longest serial number a connector entry may name (real ones are 14 characters).
MAX_SERIAL_CHARS: Final = 64


def http_base_url(host: str) -> str:
    """A unit's HTTP address from ``host`` or ``host:port``, e.g. ``http://192.168.1.50``.

    Raises:
        ValueError: the text is no usable host.
    """
    address, port = parse_host(host)
    shown = f"[{address}]" if ":" in address else address
    return f"http://{shown}" if port == DEFAULT_HTTP_PORT else f"http://{shown}:{port}"


class ConnectorConfig(_Strict):
    """One Wall Connector to read: at its ``host``, or found by its ``serial`` (or both)."""

    host: str | None = None
    # The unit's serial number: it is followed by it when its address changes ([discovery]).
    serial: str | None = None
    name: str | None = None
    id: TopicId | None = None
    vitals_s: Seconds | None = None
    vitals_idle_s: Seconds | None = None
    lifetime_s: Seconds | None = None
    wifi_status_s: Seconds | None = None
    version_s: Seconds | None = None
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] | None = None
    read_timeout_s: Annotated[float, Field(gt=0, le=120)] | None = None
    offline_after: Annotated[int, Field(ge=1, le=100)] | None = None
    backoff_max_s: Annotated[float, Field(ge=1, le=3600)] | None = None
    phase_mode: PhaseMode = "auto"
    rated_current_a: Annotated[float, Field(gt=0, le=80)] = 48.0
    # Bind this connector's HTTP client to a local address, e.g. a second interface joined to a
    # power-sharing leader's own Wi-Fi (192.168.92.x) to reach its followers.
    source_address: str | None = None

    @field_validator("source_address")
    @classmethod
    def _valid_source(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address of this machine") from None

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_host(value)
        return value.strip()

    @field_validator("serial")
    @classmethod
    def _usable_serial(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            # It is compared with what units answer and shown in logs and topics.
            raise ValueError("must not contain spaces, control or formatting characters")
        if len(value) > MAX_SERIAL_CHARS:
            raise ValueError(f"must be at most {MAX_SERIAL_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _host_or_serial(self) -> Self:
        if self.host is None and self.serial is None:
            raise ValueError("give host, serial or both")
        return self

    @field_validator("name")
    @classmethod
    def _usable_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        if not value:
            raise ValueError("must not be blank")
        if any(not ch.isprintable() for ch in value):
            # Control and direction-override characters would reach dashboards as device names.
            raise ValueError("must not contain control or formatting characters")
        if len(value) > 100:  # noqa: PLR2004 - names show in dashboards
            raise ValueError("must be at most 100 characters")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """The host and TCP port to connect to; None for a connector found by serial alone."""
        return None if self.host is None else parse_host(self.host)

    @property
    def base_url(self) -> str | None:
        """The unit's HTTP address, e.g. ``http://192.168.1.50``; None without a host."""
        return None if self.host is None else http_base_url(self.host)

    def configured_id(self) -> str | None:
        """The topic id known before the unit answers: ``id``, else a slug of ``name``."""
        if self.id:
            return self.id
        if self.name:
            return slugify(self.name) or None
        return None

    def polling(self, defaults: PollingConfig) -> PollingConfig:
        """The effective polling settings: per-connector overrides over the global ones."""
        overrides = {
            key: getattr(self, key) for key in _POLLING_KEYS if getattr(self, key) is not None
        }
        return defaults.model_copy(update=overrides)


class HomeAssistantConfig(_Strict):
    """Home Assistant MQTT discovery (also read by openHAB's Home Assistant binding)."""

    discovery: Literal["entity", "device", "off"] = "entity"
    discovery_prefix: str = "homeassistant"

    @field_validator("discovery_prefix")
    @classmethod
    def _safe_prefix(cls, value: str) -> str:
        problem = validate_base_topic(value)
        if problem:
            raise ValueError(problem)
        return value


class HomieConfig(_Strict):
    """Homie 4 publishing (openHAB's Homie binding discovers it): off unless enabled."""

    enabled: bool = False
    base_topic: str = "homie"
    # ``twc3-bridge-<instance>`` by default when ``[bridge] instance`` is set.
    device_id: str = DEFAULT_NAME
    name: str = "Tesla Wall Connector bridge"

    @field_validator("base_topic")
    @classmethod
    def _one_level(cls, value: str) -> str:
        problem = validate_base_topic(value)
        if problem:
            raise ValueError(problem)
        if "/" in value:
            # openHAB discovers Homie devices by subscribing to +/+/$homie.
            raise ValueError("must be one topic level (openHAB looks for +/+/$homie)")
        return value

    @field_validator("device_id")
    @classmethod
    def _homie_id(cls, value: str) -> str:
        if re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", value) is None:
            raise ValueError(
                "may contain only a-z, 0-9 and '-', and must not start or end with '-'"
            )
        return value

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("must not be empty")
        return value


def default_data_dir() -> Path:
    """The default state folder: ``$XDG_STATE_HOME/twc3-bridge`` or ``~/.local/state/…``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "twc3-bridge"


class BridgeSection(_Strict):
    """The bridge's own settings."""

    data_dir: Path = Field(default_factory=default_data_dir)
    # How long a field name a unit stopped sending keeps its topics (bridge/core/fieldbudget.py).
    field_retire_s: Seconds = 600.0
    # Names this process among several under one base topic: its state topic becomes
    # <base>/bridge/<instance>/state, and the default client id and Homie device id follow it.
    instance: TopicId | None = None
    # Whether ids no longer configured (renamed or removed) are cleared at start (runtime/ghosts).
    clean_removed: bool = True


class GroupConfig(_Strict):
    """A power-sharing group: one leader on the home network and its followers."""

    name: str
    leader: str
    members: list[str] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _usable_group_name(cls, value: str) -> str:
        value = " ".join(value.split())
        if not slugify(value):
            raise ValueError(f"{value!r} gives no usable topic id")
        return value

    @property
    def group_id(self) -> str:
        """The topic level of the group: a slug of its name."""
        return slugify(self.name)

    @model_validator(mode="after")
    def _leader_is_member(self) -> Self:
        if self.leader not in self.members:
            raise ValueError(f"leader {self.leader!r} must be one of the members")
        if len(set(self.members)) != len(self.members):
            raise ValueError("a member is listed twice")
        return self


class DiscoveryConfig(_Strict):
    """Where the bridge looks for units that moved (and, if asked, new ones): off by default."""

    # CIDR networks searched with one GET /api/1/version per address; empty: no searching.
    networks: list[str] = Field(default_factory=list)
    port: Port = DEFAULT_HTTP_PORT
    # A unit unreachable this long is looked for; then at most once per search_every_s, doubling.
    search_after_s: Annotated[float, Field(ge=5, le=86_400)] = 300.0
    search_every_s: Annotated[float, Field(ge=5, le=86_400)] = 900.0
    # Units found that no connector claims are published too (else their block is logged once).
    add_new: bool = False
    concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] = DEFAULT_CONCURRENCY
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S

    @field_validator("networks")
    @classmethod
    def _private_bounded_networks(cls, value: list[str]) -> list[str]:
        problems = [problem for text in value if (problem := network_problem(text))]
        if problems:
            raise ValueError("; ".join(problems))
        written = [str(read_network(text)) for text in value]
        if len(set(written)) != len(written):
            raise ValueError("a network is listed twice")
        return written


class LoggingConfig(_Strict):
    """Log verbosity."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    # Hidden (not in the example file): a unit that keeps failing gets at most one line per
    # this many seconds, with counts. Settable so tests need not wait five minutes.
    repeat_summary_s: Annotated[float, Field(ge=1, le=86_400)] = 300.0


def instance_defaults(instance: str) -> dict[str, str]:
    """The client id and Homie device id an instance gets unless they are set explicitly.

    Two processes with one client id would take each other's connection in turn, and two with
    one Homie device id would write over each other's device.
    """
    homie_level = "-".join(part for part in instance.replace("_", "-").split("-") if part)
    return {
        "client_id": f"{DEFAULT_NAME}-{instance}",
        "device_id": f"{DEFAULT_NAME}-{homie_level}",
    }


def _with_default(section: Any, key: str, value: str) -> Any:  # noqa: ANN401 - raw TOML or a model
    """``section`` with ``key`` set to ``value`` unless the user set it."""
    if section is None:
        return {key: value}
    if isinstance(section, dict):
        return section if key in section else {**section, key: value}
    if isinstance(section, BaseModel) and key not in section.model_fields_set:
        return section.model_copy(update={key: value})
    return section


class BridgeConfig(_Strict):
    """The whole configuration file."""

    bridge: BridgeSection = Field(default_factory=BridgeSection)
    mqtt: MqttConfig = MqttConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    homie: HomieConfig = HomieConfig()
    polling: PollingConfig = PollingConfig()
    logging: LoggingConfig = LoggingConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    connectors: list[ConnectorConfig] = Field(default_factory=list)
    groups: list[GroupConfig] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _instance_names_its_connection(cls, data: Any) -> Any:  # noqa: ANN401 - raw TOML
        if not isinstance(data, dict):
            return data
        section = data.get("bridge")
        instance = section.get("instance") if isinstance(section, dict) else None
        if isinstance(section, BridgeSection):
            instance = section.instance
        if not isinstance(instance, str) or id_problem(instance) is not None:
            return data  # no instance, or a bad one that the field check reports
        defaults = instance_defaults(instance)
        return {
            **data,
            "mqtt": _with_default(data.get("mqtt"), "client_id", defaults["client_id"]),
            "homie": _with_default(data.get("homie"), "device_id", defaults["device_id"]),
        }

    @model_validator(mode="after")
    def _ids_unique_and_usable(self) -> Self:
        problems = connector_clashes([c.model_dump() for c in self.connectors])
        if not self.discovery.networks:
            problems.extend(
                f"connectors[{index}]: serial without host needs [discovery] networks to find "
                "the unit in; give host, or set networks"
                for index, connector in enumerate(self.connectors)
                if connector.host is None
            )
        problems.extend(self._group_problems())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _group_problems(self) -> list[str]:
        known = {cid for c in self.connectors if (cid := c.configured_id())}
        problems: list[str] = []
        member_of: dict[str, str] = {}
        group_ids: set[str] = set()
        for index, group in enumerate(self.groups):
            if group.group_id in group_ids:
                problems.append(f"groups[{index}]: another group is also named {group.name!r}")
            group_ids.add(group.group_id)
            for member in group.members:
                if member not in known:
                    problems.append(
                        f"groups[{index}]: member {member!r} is not the id (or name slug) of a "
                        "connector"
                    )
                elif member in member_of:
                    problems.append(
                        f"groups[{index}]: {member!r} is already in group {member_of[member]!r}"
                    )
                member_of.setdefault(member, group.name)
        return problems

    def group_of(self, connector_id: str | None) -> GroupConfig | None:
        """The group a connector belongs to, if any."""
        return next((g for g in self.groups if connector_id in g.members), None)


def connector_clashes(connectors: list[Any]) -> list[str]:
    """Ids and hosts used twice, or names that give no id, from raw or validated entries.

    Works on raw TOML tables too, so these problems are reported alongside field errors.
    """
    problems: list[str] = []
    ids: dict[str, int] = {}
    hosts: dict[tuple[str, int], int] = {}
    serials: dict[str, int] = {}
    for index, entry in enumerate(connectors):
        if not isinstance(entry, dict):
            continue
        topic_id, problem = _entry_topic_id(entry)
        if problem:
            problems.append(f"connectors[{index}]: {problem}")
        if topic_id is not None:
            if topic_id in ids:
                problems.append(
                    f"connectors[{index}]: id {topic_id!r} is already used by "
                    f"connectors[{ids[topic_id]}]; give one of them another id"
                )
            ids.setdefault(topic_id, index)
        address = _entry_address(entry)
        if address is not None:
            if address in hosts:
                first = hosts[address]
                problems.append(
                    f"connectors[{index}]: host {entry['host']!r} is already connectors[{first}]"
                )
            hosts.setdefault(address, index)
        serial = entry.get("serial")
        if isinstance(serial, str) and serial.strip():
            if serial.strip() in serials:
                problems.append(
                    f"connectors[{index}]: serial {serial.strip()!r} is already "
                    f"connectors[{serials[serial.strip()]}]"
                )
            serials.setdefault(serial.strip(), index)
    return problems


def _entry_topic_id(entry: dict[str, Any]) -> tuple[str | None, str | None]:
    raw_id, name = entry.get("id"), entry.get("name")
    if isinstance(raw_id, str):
        return raw_id, None
    if not isinstance(name, str) or not name.strip():
        return None, None  # a blank name is reported by the field check
    topic_id = slugify(name)
    if not topic_id:
        return None, f"name {name!r} gives no usable topic id; set id"
    problem = id_problem(topic_id)
    if problem:
        return None, f"id {topic_id!r} from the name {problem}"
    return topic_id, None


def _entry_address(entry: dict[str, Any]) -> tuple[str, int] | None:
    host = entry.get("host")
    if not isinstance(host, str):
        return None
    try:
        address, port = parse_host(host)
    except ValueError:
        return None
    return address.lower(), port


def parse_host(value: str) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address.

    Raises:
        ValueError: the text is no usable host.
    """
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    if "://" in text or "/" in text:
        raise ValueError("give a host or host:port, not a URL")
    host, port_text = _split_host_port(text)
    if not host or any(ch.isspace() or not ch.isprintable() for ch in host):
        raise ValueError("host is empty or contains spaces")
    if not port_text:
        return host, DEFAULT_HTTP_PORT
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65_535:  # noqa: PLR2004 - the TCP port range
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


class BrokerHost(NamedTuple):
    """``[mqtt] host`` taken apart: the host, a port if it gave one, TLS if its scheme says."""

    host: str
    port: int | None
    tls: bool | None  # None: no scheme, the [mqtt.tls] table decides


def parse_broker_host(value: str) -> BrokerHost:
    """Read ``host``, ``host:port``, ``[v6]:port``, ``mqtt://host[:port]`` or ``mqtts://…``.

    Raises:
        ValueError: a URL with a path, query or credentials, an unknown scheme, or no usable host.
    """
    text = value.strip()
    tls: bool | None = None
    scheme, separator, rest = text.partition("://")
    if separator:
        if scheme.lower() not in _BROKER_SCHEMES:
            raise ValueError(f"scheme {scheme + '://'!r} is not mqtt:// or mqtts://")
        tls = _BROKER_SCHEMES[scheme.lower()]
        text = rest.removesuffix("/")
        if any(mark in text for mark in "/?#@"):
            raise ValueError(
                "give mqtt://host[:port] or mqtts://host[:port], without a path, query or user"
            )
    elif "/" in text:
        raise ValueError("give a host, host:port or mqtt://host[:port]")
    host, port = parse_host(text)
    return BrokerHost(host, port if _has_port(text) else None, tls)


def _has_port(text: str) -> bool:
    if text.startswith("["):
        return "]:" in text
    return text.count(":") == 1


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed '[' in IPv6 address")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("expected ':port' after ']'")
        return text[1:end], rest[1:]
    if text.count(":") == 1:
        host, port_text = text.split(":")
        return host, port_text
    if text.count(":") > 1:
        ipaddress.IPv6Address(text)  # a bare IPv6 address, without a port
    return text, ""


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one readable line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(("function-", "constrained-")):
            continue  # pydantic's internal validator names say nothing to a user
        else:
            text += f".{part}" if text else part
    return text


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: ``key: what is wrong``."""
    lines = []
    for detail in error.errors():
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        elif detail["type"] == "missing":
            message = "required key is missing"
        where = _location(tuple(detail["loc"]))
        if where:
            lines.append(f"{where}: {message}")
        else:  # a model-level check may report several problems at once
            lines.extend(message.splitlines())
    return lines


def load_config(path: Path, environ: dict[str, str] | None = None) -> BridgeConfig:
    """Read, validate and complete a configuration file.

    The broker password may come from ``TWC3_BRIDGE_MQTT_PASSWORD`` instead of the file.

    Raises:
        ConfigError: with one readable line per problem.
    """
    env = os.environ if environ is None else environ
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{path}: cannot read ({error})"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML ({error})"]) from None
    password = env.get(PASSWORD_ENV)
    if password:
        mqtt = data.get("mqtt")
        if mqtt is None:
            data["mqtt"] = mqtt = {}
        if isinstance(mqtt, dict):
            mqtt["password"] = password
    try:
        config = BridgeConfig.model_validate(data)
    except ValidationError as error:
        problems = describe_validation_error(error)
        raw_connectors = data.get("connectors")
        if isinstance(raw_connectors, list):
            problems.extend(p for p in connector_clashes(raw_connectors) if p not in problems)
        raise ConfigError(problems) from None
    if not config.connectors:
        raise ConfigError(["connectors: no [[connectors]] configured; add at least one"])
    return config
