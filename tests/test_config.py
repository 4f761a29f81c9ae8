"""The TOML configuration: defaults, overrides, and one readable line per problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from bridge.core.config import (
    PASSWORD_ENV,
    BridgeConfig,
    ConfigError,
    ConnectorConfig,
    PollingConfig,
    load_config,
    parse_host,
)

MINIMAL = """\
[mqtt]
host = "192.168.1.10"
base_topic = "twc3"

[[connectors]]
host = "192.168.1.50"
name = "Garage"
id = "garage"
"""

MQTT_ONLY = """\
[mqtt]
host = "192.168.1.10"
base_topic = "twc3"
"""

PASSWORD = "file-pass-7f3a"  # noqa: S105 - a test value
ENV_PASSWORD = "env-pass-91bc"  # noqa: S105 - a test value


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> BridgeConfig:
    return load_config(_write(tmp_path, text), environ={} if environ is None else environ)


def _problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text, environ)
    problems = caught.value.problems
    assert problems, "a ConfigError always says what is wrong"
    for line in problems:
        assert "\n" not in line, f"not one line: {line!r}"
    assert str(caught.value) == "; ".join(problems)
    return problems


def _connector(extra: str = "", host: str = "192.168.1.50") -> str:
    return f'[[connectors]]\nhost = "{host}"\n{extra}\n'


# --- the minimal file and its defaults ----------------------------------------------------------


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    """The README's minimal file loads and fills every default."""
    config = _load(tmp_path, MINIMAL)
    assert config.mqtt.host == "192.168.1.10"
    assert config.mqtt.port == 1883
    assert config.mqtt.base_topic == "twc3"
    assert config.mqtt.username is None
    assert config.mqtt.password is None
    assert config.mqtt.tls is None
    assert config.polling.vitals_s == 5
    assert config.polling.vitals_idle_s == 15
    assert config.polling.lifetime_s == 60
    assert config.polling.wifi_status_s == 60
    assert config.polling.version_s == 3600
    assert config.logging.level == "info"
    assert len(config.connectors) == 1
    connector = config.connectors[0]
    assert connector.host == "192.168.1.50"
    assert connector.name == "Garage"
    assert connector.configured_id() == "garage"
    assert connector.base_url == "http://192.168.1.50"
    assert connector.polling(config.polling) == config.polling


def test_full_readme_example_loads(tmp_path: Path) -> None:
    """The README's annotated example (comments and all) loads with its override."""
    text = """\
[mqtt]
host = "localhost"        # default localhost
port = 1883               # default 1883
base_topic = "twc3"       # default twc3

[polling]                 # every key may also be set on a single connector
vitals_s = 5
vitals_idle_s = 15
lifetime_s = 60
wifi_status_s = 60
version_s = 3600
connect_timeout_s = 5
read_timeout_s = 15
offline_after = 3
backoff_max_s = 60

[logging]
level = "info"

[[connectors]]
host = "192.168.1.50"     # host or host:port (IPv6: "[fe80::1]:80")
name = "Garage"
id = "garage"

[[connectors]]
host = "192.168.1.51"
vitals_s = 2              # per-connector override
"""
    config = _load(tmp_path, text)
    assert config.polling == PollingConfig()
    assert [c.configured_id() for c in config.connectors] == ["garage", None]
    assert config.connectors[1].polling(config.polling).vitals_s == 2
    assert config.connectors[0].polling(config.polling).vitals_s == 5


def test_connectors_only_file_loads(tmp_path: Path) -> None:
    """Only [[connectors]] with a host is required."""
    config = _load(tmp_path, '[[connectors]]\nhost = "[fe80::1]:80"\n')
    assert config.connectors[0].address == ("fe80::1", 80)
    assert config.connectors[0].base_url == "http://[fe80::1]"


def test_empty_mqtt_section_uses_defaults(tmp_path: Path) -> None:
    """Without [mqtt] the broker is localhost:1883 under base topic twc3."""
    config = _load(tmp_path, _connector())
    assert config.mqtt.host == "localhost"
    assert config.mqtt.port == 1883
    assert config.mqtt.base_topic == "twc3"


def test_per_connector_vitals_override(tmp_path: Path) -> None:
    """A connector's vitals_s overrides the global value; the rest stay global."""
    text = MQTT_ONLY + "[polling]\nlifetime_s = 120\n" + _connector('id = "a"\nvitals_s = 2')
    text += _connector('id = "b"', host="192.168.1.51")
    config = _load(tmp_path, text)
    first = config.connectors[0].polling(config.polling)
    second = config.connectors[1].polling(config.polling)
    assert first.vitals_s == 2
    assert first.lifetime_s == 120
    assert first.vitals_idle_s == 15
    assert second.vitals_s == 5
    assert second.lifetime_s == 120
    assert config.polling.vitals_s == 5  # the global settings are not changed


def test_polling_with_no_overrides_is_the_defaults() -> None:
    """ConnectorConfig.polling without overrides returns the given defaults unchanged."""
    defaults = PollingConfig(vitals_s=7)
    assert ConnectorConfig(host="unit.lan").polling(defaults) == defaults


# --- ids and urls -------------------------------------------------------------------------------


def test_configured_id_prefers_id_then_name_slug() -> None:
    """configured_id is the explicit id, else the name's slug, else None (learnt from serial)."""
    assert ConnectorConfig(host="h", name="Garage 2", id="left").configured_id() == "left"
    assert ConnectorConfig(host="h", name="Garáge 2").configured_id() == "garage_2"
    assert ConnectorConfig(host="h").configured_id() is None


def test_name_whitespace_is_collapsed() -> None:
    """Runs of whitespace in a display name become single spaces."""
    assert ConnectorConfig(host="h", name="  Garage \t Left ").name == "Garage Left"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("192.168.1.50", "http://192.168.1.50"),
        ("192.168.1.50:80", "http://192.168.1.50"),
        ("twc.lan:8080", "http://twc.lan:8080"),
        ("fd00::50", "http://[fd00::50]"),
        ("[fd00::50]:8080", "http://[fd00::50]:8080"),
        (" 192.168.1.50 ", "http://192.168.1.50"),
    ],
)
def test_base_url(host: str, url: str) -> None:
    """base_url brackets IPv6 and omits port 80."""
    assert ConnectorConfig(host=host).base_url == url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5", ("10.0.0.5", 80)),
        ("unit.lan:8080", ("unit.lan", 8080)),
        ("[fe80::1]:81", ("fe80::1", 81)),
        ("[fe80::1]", ("fe80::1", 80)),
        ("fe80::1", ("fe80::1", 80)),
        ("  unit.lan  ", ("unit.lan", 80)),
        ("unit.lan:65535", ("unit.lan", 65535)),
    ],
)
def test_parse_host_accepts(text: str, expected: tuple[str, int]) -> None:
    """host, host:port, [v6]:port and a bare IPv6 address are split correctly."""
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http://10.0.0.5", "not a URL"),
        ("10.0.0.5/api/1/vitals", "not a URL"),
        ("", "empty"),
        ("   ", "empty"),
        ("unit.lan:http", "not a number"),
        ("unit.lan:0", "out of range"),
        ("unit.lan:70000", "out of range"),
        ("unit lan", "spaces"),
        (":8080", "empty"),
        ("[fe80::1", "unclosed"),
        ("[fe80::1]x", "':port'"),
        ("a:b:c", "a:b:c"),
    ],
)
def test_parse_host_refuses(text: str, fragment: str) -> None:
    """URLs, bad ports, spaces and broken IPv6 forms raise ValueError saying why."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_host(text)


# --- readable errors, one line each -------------------------------------------------------------


def test_unknown_key_is_named(tmp_path: Path) -> None:
    """A misspelt key is reported with its full path, in [mqtt] and in [[connectors]]."""
    text = MQTT_ONLY + 'hots = "x"\n' + _connector('nmae = "Garage"')
    problems = _problems(tmp_path, text)
    assert problems == [
        "mqtt.hots: unknown key (check the spelling)",
        "connectors[0].nmae: unknown key (check the spelling)",
    ]


def test_unknown_section_is_named(tmp_path: Path) -> None:
    """An unknown top-level table is reported by name."""
    problems = _problems(tmp_path, MINIMAL + "[polling_extra]\nx = 1\n")
    assert problems == ["polling_extra: unknown key (check the spelling)"]


def test_unknown_key_named_like_a_type_is_named(tmp_path: Path) -> None:
    """An unknown key called `int` is still named in the problem line."""
    problems = _problems(tmp_path, MQTT_ONLY + "int = 5\n" + _connector())
    assert problems == ["mqtt.int: unknown key (check the spelling)"]


def test_mqtt_port_out_of_range(tmp_path: Path) -> None:
    """A broker port above 65535 is one line naming mqtt.port."""
    problems = _problems(tmp_path, MQTT_ONLY + "port = 70000\n" + _connector())
    assert len(problems) == 1
    assert problems[0].startswith("mqtt.port: ")
    assert "65535" in problems[0]


def test_mqtt_port_zero(tmp_path: Path) -> None:
    """A broker port of 0 is refused."""
    problems = _problems(tmp_path, MQTT_ONLY + "port = 0\n" + _connector())
    assert len(problems) == 1
    assert problems[0].startswith("mqtt.port: ")


def test_several_problems_give_several_lines(tmp_path: Path) -> None:
    """Independent problems are all reported, one line each."""
    text = MQTT_ONLY + "port = 70000\nbogus = 1\n[polling]\nvitals_s = 0\n" + _connector()
    problems = _problems(tmp_path, text)
    assert len(problems) == 3
    assert any(line.startswith("mqtt.port: ") for line in problems)
    assert "mqtt.bogus: unknown key (check the spelling)" in problems
    assert any(line.startswith("polling.vitals_s: ") for line in problems)


def test_connector_host_given_as_url(tmp_path: Path) -> None:
    """A connector host written as a URL is one line saying to give host or host:port."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector(host="http://192.168.1.50/"))
    assert problems == ["connectors[0].host: give a host or host:port, not a URL"]


def test_connector_host_port_out_of_range(tmp_path: Path) -> None:
    """A connector host:port beyond 65535 names the connector's host key."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector(host="192.168.1.50:99999"))
    assert problems == ["connectors[0].host: port 99999 is out of range 1-65535"]


def test_connector_without_host(tmp_path: Path) -> None:
    """A connector without host says the key is missing."""
    problems = _problems(tmp_path, MQTT_ONLY + '[[connectors]]\nname = "Garage"\n')
    assert problems == ["connectors[0]: give host, serial or both"]


def test_connector_interval_out_of_range(tmp_path: Path) -> None:
    """A non-positive per-connector interval is refused with its key."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector("vitals_s = -1"))
    assert len(problems) == 1
    assert problems[0].startswith("connectors[0].vitals_s: ")


def test_duplicate_explicit_ids(tmp_path: Path) -> None:
    """Two connectors with the same id are refused, naming both."""
    text = MQTT_ONLY + _connector('id = "garage"') + _connector('id = "garage"', "192.168.1.51")
    problems = _problems(tmp_path, text)
    assert problems == [
        "connectors[1]: id 'garage' is already used by connectors[0]; give one of them another id"
    ]


def test_name_slug_clashing_with_explicit_id(tmp_path: Path) -> None:
    """A name whose slug equals another connector's explicit id is a duplicate."""
    text = MQTT_ONLY + _connector('name = "Garage"') + _connector('id = "garage"', "192.168.1.51")
    problems = _problems(tmp_path, text)
    assert len(problems) == 1
    assert "connectors[1]" in problems[0]
    assert "'garage'" in problems[0]
    assert "already used by connectors[0]" in problems[0]


def test_two_names_with_the_same_slug(tmp_path: Path) -> None:
    """'Garage!' and 'garage' slug alike and are refused as duplicates."""
    text = MQTT_ONLY + _connector('name = "Garage!"') + _connector('name = "garage"', "10.0.0.2")
    problems = _problems(tmp_path, text)
    assert len(problems) == 1
    assert "already used" in problems[0]


def test_duplicate_host(tmp_path: Path) -> None:
    """The same unit listed twice (host case and default port aside) is refused."""
    text = MQTT_ONLY + _connector('id = "a"', "Unit.lan") + _connector('id = "b"', "unit.lan:80")
    problems = _problems(tmp_path, text)
    assert problems == ["connectors[1]: host 'unit.lan:80' is already connectors[0]"]


def test_same_host_on_other_port_is_allowed(tmp_path: Path) -> None:
    """Two units behind one address on different ports are distinct connectors."""
    text = MQTT_ONLY + _connector('id = "a"', "unit.lan:8081") + _connector('id = "b"', "unit.lan")
    assert len(_load(tmp_path, text).connectors) == 2


@pytest.mark.parametrize("reserved", ["bridge", "group"])
def test_reserved_id(tmp_path: Path, reserved: str) -> None:
    """An explicit id that collides with the bridge's own topics is refused."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector(f'id = "{reserved}"'))
    assert problems == [f"connectors[0].id: '{reserved}' is reserved for the bridge's own topics"]


def test_reserved_id_from_name(tmp_path: Path) -> None:
    """A name whose slug is a reserved id is refused too."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector('name = "Bridge"'))
    assert len(problems) == 1
    assert problems[0].startswith("connectors[0]: ")
    assert "reserved" in problems[0]


@pytest.mark.parametrize("bad_id", ["Garage", "a/b", "", "x" * 49])
def test_invalid_explicit_id(tmp_path: Path, bad_id: str) -> None:
    """Upper-case, slash, empty and over-long ids are refused with the id key named."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector(f'id = "{bad_id}"'))
    assert len(problems) == 1
    assert problems[0].startswith("connectors[0].id: ")


def test_id_with_trailing_newline_is_refused(tmp_path: Path) -> None:
    """An id ending in a newline is not a valid topic level."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector('id = "garage\\n"'))
    assert problems[0].startswith("connectors[0].id: ")


def test_name_with_empty_slug(tmp_path: Path) -> None:
    """A name that slugs to nothing ('../#') asks for an explicit id."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector('name = "../#"'))
    assert problems == ["connectors[0]: name '../#' gives no usable topic id; set id"]


def test_name_with_empty_slug_and_explicit_id_is_fine(tmp_path: Path) -> None:
    """With an explicit id, any display name is allowed."""
    config = _load(tmp_path, MQTT_ONLY + _connector('name = "../#"\nid = "left"'))
    assert config.connectors[0].configured_id() == "left"


def test_blank_name(tmp_path: Path) -> None:
    """A name of only spaces is refused."""
    problems = _problems(tmp_path, MQTT_ONLY + _connector('name = "   "'))
    assert problems == ["connectors[0].name: must not be blank"]


@pytest.mark.parametrize(
    ("base", "fragment"), [("/twc3", "start or end"), ("twc3/#", "'#'"), ("", "empty")]
)
def test_bad_base_topic(tmp_path: Path, base: str, fragment: str) -> None:
    """An unsafe base topic is refused with mqtt.base_topic named."""
    problems = _problems(tmp_path, f'[mqtt]\nbase_topic = "{base}"\n' + _connector())
    assert len(problems) == 1
    assert problems[0].startswith("mqtt.base_topic: ")
    assert fragment in problems[0]


def test_bad_log_level(tmp_path: Path) -> None:
    """An unknown log level lists the allowed ones."""
    problems = _problems(tmp_path, MINIMAL + '[logging]\nlevel = "verbose"\n')
    assert len(problems) == 1
    assert problems[0].startswith("logging.level: ")
    assert "'debug'" in problems[0]


def test_invalid_toml(tmp_path: Path) -> None:
    """A TOML syntax error is one line naming the file and the position."""
    path = _write(tmp_path, MQTT_ONLY + "[[connectors]\nhost = ")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert len(caught.value.problems) == 1
    line = caught.value.problems[0]
    assert line.startswith(f"{path}: not valid TOML")
    assert "line" in line
    assert "\n" not in line


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one line saying so."""
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == [f"{path}: file not found"]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is a ConfigError, not a UnicodeDecodeError."""
    path = tmp_path / "bridge.toml"
    path.write_bytes(b'[mqtt]\nhost = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems[0].startswith(f"{path}: cannot read")


def test_no_connectors(tmp_path: Path) -> None:
    """A file without [[connectors]] says to add one."""
    problems = _problems(tmp_path, MQTT_ONLY)
    assert problems == ["connectors: no [[connectors]] configured; add at least one"]


def test_empty_file(tmp_path: Path) -> None:
    """An empty file fails only because it has no connectors."""
    assert _problems(tmp_path, "") == ["connectors: no [[connectors]] configured; add at least one"]


# --- the password ------------------------------------------------------------------------------


def test_password_from_file(tmp_path: Path) -> None:
    """A password in the file is read as a SecretStr."""
    config = _load(tmp_path, MQTT_ONLY + f'password = "{PASSWORD}"\n' + _connector())
    assert isinstance(config.mqtt.password, SecretStr)
    assert config.mqtt.password.get_secret_value() == PASSWORD


def test_password_from_env_overrides_file(tmp_path: Path) -> None:
    """TWC3_BRIDGE_MQTT_PASSWORD replaces the file's password."""
    text = MQTT_ONLY + f'username = "bridge"\npassword = "{PASSWORD}"\n' + _connector()
    config = _load(tmp_path, text, {PASSWORD_ENV: ENV_PASSWORD})
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == ENV_PASSWORD
    assert config.mqtt.username == "bridge"


def test_password_from_env_without_mqtt_section(tmp_path: Path) -> None:
    """The env password works even when the file has no [mqtt] table."""
    config = _load(tmp_path, _connector(), {PASSWORD_ENV: ENV_PASSWORD})
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == ENV_PASSWORD


def test_empty_env_password_does_not_override(tmp_path: Path) -> None:
    """An empty TWC3_BRIDGE_MQTT_PASSWORD leaves the file's password in place."""
    text = MQTT_ONLY + f'password = "{PASSWORD}"\n' + _connector()
    config = _load(tmp_path, text, {PASSWORD_ENV: ""})
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == PASSWORD


def test_other_env_variables_are_ignored(tmp_path: Path) -> None:
    """Only the documented variable is read from the given environment."""
    config = _load(tmp_path, MINIMAL, {"MQTT_PASSWORD": ENV_PASSWORD, "PASSWORD": "x"})
    assert config.mqtt.password is None


def test_password_never_shown(tmp_path: Path) -> None:
    """str() and repr() of the secret, the mqtt section and the whole config hide the password."""
    config = _load(tmp_path, MINIMAL, {PASSWORD_ENV: ENV_PASSWORD})
    assert config.mqtt.password is not None
    for text in (
        str(config.mqtt.password),
        repr(config.mqtt.password),
        str(config.mqtt),
        repr(config.mqtt),
        repr(config),
        config.model_dump_json(),
    ):
        assert ENV_PASSWORD not in text


def test_password_not_shown_in_config_errors(tmp_path: Path) -> None:
    """When the file has other problems, the problem lines do not echo the password."""
    text = MQTT_ONLY + f'password = "{PASSWORD}"\nport = 0\n' + _connector(host="http://x")
    problems = _problems(tmp_path, text, {PASSWORD_ENV: ENV_PASSWORD})
    assert len(problems) == 2
    joined = "\n".join(problems)
    assert PASSWORD not in joined
    assert ENV_PASSWORD not in joined


# --- TLS ----------------------------------------------------------------------------------------


def test_tls_with_ca_file(tmp_path: Path) -> None:
    """A readable CA file enables TLS."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    config = _load(tmp_path, MQTT_ONLY + f'[mqtt.tls]\nca_file = "{ca}"\n' + _connector())
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == ca
    assert config.mqtt.tls.insecure is False


def test_tls_cert_without_key(tmp_path: Path) -> None:
    """cert_file without key_file is refused."""
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    problems = _problems(tmp_path, MQTT_ONLY + f'[mqtt.tls]\ncert_file = "{cert}"\n' + _connector())
    assert problems == ["mqtt.tls: cert_file and key_file must be given together"]


def test_tls_key_without_cert(tmp_path: Path) -> None:
    """key_file without cert_file is refused."""
    key = tmp_path / "client.key"
    key.write_text("x")
    problems = _problems(tmp_path, MQTT_ONLY + f'[mqtt.tls]\nkey_file = "{key}"\n' + _connector())
    assert problems == ["mqtt.tls: cert_file and key_file must be given together"]


def test_tls_missing_ca_file(tmp_path: Path) -> None:
    """A CA file that does not exist is refused with its path."""
    missing = tmp_path / "missing-ca.pem"
    problems = _problems(
        tmp_path, MQTT_ONLY + f'[mqtt.tls]\nca_file = "{missing}"\n' + _connector()
    )
    assert problems == [f"mqtt.tls: ca_file {str(missing)!r} is not a readable file"]


def test_tls_with_cert_and_key(tmp_path: Path) -> None:
    """A client certificate with its key is accepted."""
    cert = tmp_path / "client.pem"
    key = tmp_path / "client.key"
    cert.write_text("x")
    key.write_text("y")
    text = MQTT_ONLY + f'[mqtt.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n' + _connector()
    config = _load(tmp_path, text)
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.cert_file == cert
    assert config.mqtt.tls.key_file == key


# --- [mqtt] host as a URL -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "extra", "want"),
    [
        ("broker", "", ("broker", 1883, False)),
        ("broker:1884", "", ("broker", 1884, False)),
        ("[fd00::1]:1884", "", ("fd00::1", 1884, False)),
        ("fd00::1", "", ("fd00::1", 1883, False)),
        ("mqtt://broker", "", ("broker", 1883, False)),
        ("mqtt://broker:1884", "", ("broker", 1884, False)),
        ("mqtt://broker:1884/", "port = 1884\n", ("broker", 1884, False)),
        ("mqtts://broker", "", ("broker", 8883, True)),
        ("mqtts://broker", "port = 9883\n", ("broker", 9883, True)),
        ("MQTTS://broker:9883", "", ("broker", 9883, True)),
        ("broker", "[mqtt.tls]\n", ("broker", 1883, True)),
    ],
)
def test_mqtt_host_forms(
    tmp_path: Path, host: str, extra: str, want: tuple[str, int, bool]
) -> None:
    """host, host:port, mqtt:// and mqtts:// (TLS on, port 8883 unless given) all load."""
    config = _load(tmp_path, f'[mqtt]\nhost = "{host}"\n{extra}' + _connector())
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls is not None) == want


@pytest.mark.parametrize(
    ("host", "extra", "words"),
    [
        ("mqtt://broker:1883/twc3", "", "without a path"),
        ("mqtt://user@broker", "", "without a path, query or user"),
        ("http://broker", "", "not mqtt:// or mqtts://"),
        ("ws://broker:9001", "", "not mqtt:// or mqtts://"),
        ("mqtt://broker:1884", "port = 1883\n", "says port 1884 but port is 1883"),
        ("broker:1884", "port = 1885\n", "says port 1884 but port is 1885"),
        ("mqtt://broker", "[mqtt.tls]\n", "use mqtts://"),
        ("mqtt://broker:0", "", "out of range"),
        ("mqtt://", "", "must not be empty"),
    ],
)
def test_mqtt_host_urls_refused_in_one_line(
    tmp_path: Path, host: str, extra: str, words: str
) -> None:
    problems = _problems(tmp_path, f'[mqtt]\nhost = "{host}"\n{extra}' + _connector())
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"mqtt: host {host!r}"), problems
    assert words in problems[0], problems


def test_mqtt_size_limit_and_protocol(tmp_path: Path) -> None:
    config = _load(tmp_path, "[mqtt]\n" + _connector())
    assert config.mqtt.max_message_bytes == 256 * 1024
    assert config.mqtt.protocol == "auto"
    config = _load(
        tmp_path, '[mqtt]\nmax_message_bytes = 16384\nprotocol = "3.1.1"\n' + _connector()
    )
    assert (config.mqtt.max_message_bytes, config.mqtt.protocol) == (16_384, "3.1.1")
    problems = _problems(tmp_path, '[mqtt]\nprotocol = "4"\n' + _connector())
    assert problems[0].startswith("mqtt.protocol: ")
    problems = _problems(tmp_path, "[mqtt]\nmax_message_bytes = 10\n" + _connector())
    assert problems[0].startswith("mqtt.max_message_bytes: ")


# --- [bridge] instance ---------------------------------------------------------------------------


def test_instance_names_the_client_id_and_homie_device_id(tmp_path: Path) -> None:
    config = _load(tmp_path, '[bridge]\ninstance = "garage_east"\n' + _connector())
    assert config.bridge.instance == "garage_east"
    assert config.mqtt.client_id == "twc3-bridge-garage_east"
    # Homie ids allow no '_'.
    assert config.homie.device_id == "twc3-bridge-garage-east"


def test_explicit_client_id_and_device_id_win_over_the_instance(tmp_path: Path) -> None:
    text = (
        '[bridge]\ninstance = "barn"\n[mqtt]\nclient_id = "mine"\n'
        '[homie]\ndevice_id = "my-device"\n' + _connector()
    )
    config = _load(tmp_path, text)
    assert (config.mqtt.client_id, config.homie.device_id) == ("mine", "my-device")


def test_without_an_instance_the_defaults_are_unchanged(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL)
    assert config.bridge.instance is None
    assert (config.mqtt.client_id, config.homie.device_id) == ("twc3-bridge", "twc3-bridge")


def test_instance_defaults_apply_to_models_built_in_code() -> None:
    config = BridgeConfig.model_validate(
        {"bridge": {"instance": "a-b"}, "mqtt": {"host": "broker"}, "homie": {"enabled": True}}
    )
    assert (config.mqtt.client_id, config.homie.device_id) == ("twc3-bridge-a-b",) * 2
    assert config.mqtt.host == "broker"
    assert config.homie.enabled


@pytest.mark.parametrize(
    ("instance", "fragment"),
    [
        ("Garage", "may contain only a-z"),
        ("a/b", "may contain only a-z"),
        ("+", "may contain only a-z"),
        ("", "must not be empty"),
        ("x" * 49, "at most 48"),
    ],
)
def test_a_bad_instance_is_one_clear_line(tmp_path: Path, instance: str, fragment: str) -> None:
    problems = _problems(tmp_path, f'[bridge]\ninstance = "{instance}"\n' + _connector())
    assert len(problems) == 1
    assert problems[0].startswith("bridge.instance: ")
    assert fragment in problems[0]


# --- [discovery] -------------------------------------------------------------------------------


def test_discovery_is_off_by_default(tmp_path: Path) -> None:
    """Without a [discovery] table no network is searched and the defaults are the brief's."""
    discovery = _load(tmp_path, _connector()).discovery
    assert discovery.networks == []
    assert (discovery.port, discovery.search_after_s, discovery.search_every_s) == (80, 300, 900)
    assert (discovery.add_new, discovery.concurrency, discovery.timeout_s) == (False, 32, 1.5)


def test_discovery_networks_are_normalised(tmp_path: Path) -> None:
    """Host bits are dropped, so the network is written the way check-config shows it."""
    text = _connector() + '[discovery]\nnetworks = ["192.168.1.7/24", "127.0.0.2"]\n'
    assert _load(tmp_path, text).discovery.networks == ["192.168.1.0/24", "127.0.0.2/32"]


@pytest.mark.parametrize(
    ("network", "reason"),
    [
        ("8.8.8.0/24", "public range"),
        ("10.0.0.0/7", "public range"),  # 11.0.0.0/8 is public
        ("10.0.0.0/16", "65534 host addresses"),
        ("192.168.1.0/33", "not an IPv4 or IPv6 network"),
        ("224.0.0.0/24", "multicast"),
    ],
)
def test_discovery_refuses_public_huge_and_bad_networks(
    tmp_path: Path, network: str, reason: str
) -> None:
    """Each refused network is one line naming the key and the reason."""
    text = _connector() + f'[discovery]\nnetworks = ["{network}"]\n'
    (problem,) = _problems(tmp_path, text)
    assert problem.startswith("discovery.networks: ")
    assert reason in problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("search_after_s", "4"),
        ("search_every_s", "4.9"),
        ("concurrency", "0"),
        ("concurrency", "257"),
        ("timeout_s", "0"),
        ("timeout_s", "61"),
        ("port", "0"),
    ],
)
def test_discovery_refuses_out_of_range_settings(tmp_path: Path, key: str, value: str) -> None:
    """Settings below their floor (5 s for the search intervals) or above scan's bounds."""
    (problem,) = _problems(tmp_path, _connector() + f"[discovery]\n{key} = {value}\n")
    assert problem.startswith(f"discovery.{key}: ")


def test_discovery_accepts_five_second_intervals_and_loopback(tmp_path: Path) -> None:
    """Tests and small sites search loopback networks every few seconds."""
    text = _connector() + (
        '[discovery]\nnetworks = ["127.0.0.0/29"]\nsearch_after_s = 5\nsearch_every_s = 5\n'
    )
    discovery = _load(tmp_path, text).discovery
    assert (discovery.search_after_s, discovery.search_every_s) == (5, 5)


def test_discovery_refuses_a_network_listed_twice(tmp_path: Path) -> None:
    """192.168.1.7/24 and 192.168.1.0/24 are one network."""
    text = _connector() + '[discovery]\nnetworks = ["192.168.1.7/24", "192.168.1.0/24"]\n'
    (problem,) = _problems(tmp_path, text)
    assert "listed twice" in problem


# --- connectors by serial ([discovery] networks) ------------------------------------------------

NETWORKS = '[discovery]\nnetworks = ["192.168.1.0/24"]\n'


def test_connector_by_serial_alone_is_valid_with_networks(tmp_path: Path) -> None:
    config = _load(tmp_path, MQTT_ONLY + NETWORKS + '[[connectors]]\nserial = " PGT01 "\n')
    connector = config.connectors[0]
    assert (connector.host, connector.serial) == (None, "PGT01")
    assert connector.address is None
    assert connector.base_url is None


def test_connector_by_serial_alone_is_refused_without_networks(tmp_path: Path) -> None:
    problems = _problems(tmp_path, MQTT_ONLY + '[[connectors]]\nserial = "PGT01"\n')
    assert problems == [
        (
            "connectors[0]: serial without host needs [discovery] networks to find the unit in; "
            "give host, or set networks"
        )
    ]


def test_connector_with_host_and_serial_needs_no_networks(tmp_path: Path) -> None:
    config = _load(tmp_path, MQTT_ONLY + _connector('serial = "PGT01"'))
    assert (config.connectors[0].host, config.connectors[0].serial) == ("192.168.1.50", "PGT01")


def test_connector_with_neither_host_nor_serial_is_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, MQTT_ONLY + NETWORKS + '[[connectors]]\nid = "garage"\n')
    assert problems == ["connectors[0]: give host, serial or both"]


@pytest.mark.parametrize(
    ("serial", "problem"),
    [
        ("   ", "must not be blank"),
        ("PGT 01", "must not contain spaces, control or formatting characters"),
        ("PGT\\u202e01", "must not contain spaces, control or formatting characters"),
        ("P" * 65, "must be at most 64 characters"),
    ],
)
def test_unusable_serials_are_refused(tmp_path: Path, serial: str, problem: str) -> None:
    problems = _problems(tmp_path, MQTT_ONLY + _connector(f'serial = "{serial}"'))
    assert len(problems) == 1
    assert problems[0].startswith("connectors[0].serial: ")
    assert problems[0].endswith(problem)


def test_one_serial_in_two_connectors_is_refused(tmp_path: Path) -> None:
    text = (
        MQTT_ONLY
        + NETWORKS
        + '[[connectors]]\nserial = "PGT01"\n'
        + _connector('serial = "PGT01"', host="192.168.1.51")
    )
    assert _problems(tmp_path, text) == ["connectors[1]: serial 'PGT01' is already connectors[0]"]
