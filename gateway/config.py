"""The gateway's one TOML configuration file, validated by pydantic.

Every problem is reported with the exact path of the offending value (``devices[3].bus``), whether
it is a TOML syntax error, an unknown key, a wrong type, an impossible value or a reference to
something that is not declared (a bus, a profile, a building).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86400)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    site: Name = "community"
    name: Name = "gateway"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    status_interval_s: PositiveSeconds = 10.0
    profile_dirs: list[Path] = []
    data_dir: Path = Path("/var/lib/community-gateway")


class ModbusTcpBus(_Strict):
    type: Literal["modbus_tcp"]
    name: Name
    host: str = Field(min_length=1)
    port: Port = 502
    timeout_s: PositiveSeconds = 1.0
    max_parallel: Annotated[int, Field(ge=1, le=64)] = 4


class ModbusRtuBus(_Strict):
    type: Literal["modbus_rtu"]
    name: Name
    device: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout_s: PositiveSeconds = 0.5


Bus = Annotated[Union[ModbusTcpBus, ModbusRtuBus], Field(discriminator="type")]
BUS_TYPES = ("modbus_tcp", "modbus_rtu")


class TlsSettings(_Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class MqttSection(_Strict):
    host: str = Field(min_length=1)
    port: Port = 1883
    client_id: Name = "community-gateway"
    username: str | None = None
    password: str | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: TlsSettings | None = None


class Subscription(_Strict):
    topic: str = Field(min_length=1)
    decoder: Literal["chirpstack_parking"]
    qos: Literal[0, 1] = 1


class ModbusDevice(_Strict):
    id: Name
    bus: Name
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    profile: Name
    building: Name | None = None
    poll_interval_s: Annotated[float, Field(ge=0.1, le=86400)] = 5.0


class InfluxDB1Sink(_Strict):
    type: Literal["influxdb1"]
    name: Name
    url: str = Field(pattern=r"^https?://")
    database: Name
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: PositiveSeconds = 10.0
    batch_max_points: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    batch_max_age_s: PositiveSeconds = 1.0
    create_database: bool = True


Sink = Annotated[Union[InfluxDB1Sink], Field(discriminator="type")]
SINK_TYPES = ("influxdb1",)


class Building(_Strict):
    id: Name
    name: str = ""


class GatewayConfig(_Strict):
    gateway: GatewaySection = GatewaySection()
    buses: list[Bus] = []
    mqtt: MqttSection | None = None
    subscriptions: list[Subscription] = []
    devices: list[ModbusDevice] = []
    buildings: list[Building] = []
    sinks: list[Sink] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(f"{source}: {len(issues)} configuration error(s)\n" + "\n".join(f"  {i}" for i in issues))


_UNION_TAGS = set(BUS_TYPES) | set(SINK_TYPES)


def format_loc(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue  # pydantic inserts the discriminator value; users never wrote it as a key
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_issues(err: ValidationError) -> list[ConfigIssue]:
    issues = []
    for e in err.errors(include_url=False):
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown type {e['input'].get('type')!r} (expected one of: {e['ctx']['expected_tags']})"
        elif e["type"] == "union_tag_not_found":
            msg = "required key 'type' is missing"
        issues.append(ConfigIssue(format_loc(tuple(e["loc"])), msg))
    return issues


def check_references(data: dict, known_profiles: set[str]) -> list[ConfigIssue]:
    """Cross-checks pydantic cannot express field by field: names that must exist or be unique.

    Works on the raw document, so these problems are reported together with type errors in one
    pass instead of appearing only after the user fixed those.
    """
    issues: list[ConfigIssue] = []

    def tables(section: str) -> list[tuple[int, dict]]:
        items = data.get(section, [])
        return [(i, t) for i, t in enumerate(items) if isinstance(t, dict)] if isinstance(items, list) else []

    def unique(section: str, key: str) -> set:
        seen: set = set()
        for i, t in tables(section):
            value = t.get(key)
            if value is None:
                continue
            if value in seen:
                issues.append(ConfigIssue(f"{section}[{i}].{key}", f"duplicate {key} {value!r}"))
            seen.add(value)
        return seen

    bus_names = unique("buses", "name")
    unique("devices", "id")
    unique("sinks", "name")
    building_ids = unique("buildings", "id")
    units_on_bus: dict[tuple, int] = {}
    for i, d in tables("devices"):
        bus = d.get("bus")
        if isinstance(bus, str) and bus not in bus_names:
            declared = ", ".join(sorted(map(str, bus_names))) or "none"
            issues.append(ConfigIssue(f"devices[{i}].bus", f"bus {bus!r} is not declared in [[buses]] (declared: {declared})"))
        profile = d.get("profile")
        if isinstance(profile, str) and profile not in known_profiles:
            issues.append(ConfigIssue(f"devices[{i}].profile", f"unknown profile {profile!r} (known: {', '.join(sorted(known_profiles))})"))
        building = d.get("building")
        if isinstance(building, str) and building_ids and building not in building_ids:
            issues.append(ConfigIssue(f"devices[{i}].building", f"building {building!r} is not declared in [[buildings]]"))
        key = (bus, d.get("unit_id", 1))
        if key in units_on_bus:
            issues.append(ConfigIssue(f"devices[{i}].unit_id", f"unit id {key[1]} on bus {bus!r} is already used by devices[{units_on_bus[key]}]"))
        else:
            units_on_bus[key] = i
    if data.get("subscriptions") and "mqtt" not in data:
        issues.append(ConfigIssue("subscriptions", "subscriptions need an [mqtt] broker section"))
    return issues


def _known_profiles(data: dict) -> set[str]:
    from drivers.modbus.profile import ProfileError, load_profiles  # deferred: reads profile files

    gw = data.get("gateway") if isinstance(data.get("gateway"), dict) else {}
    dirs = gw.get("profile_dirs", [])
    dirs = [Path(d) for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else []
    try:
        return set(load_profiles(dirs))
    except ProfileError as e:
        raise ConfigError("profiles", [ConfigIssue("gateway.profile_dirs", str(e))]) from None


def parse_config(text: str, source: str = "<config>", known_profiles: set[str] | None = None) -> GatewayConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [ConfigIssue("", f"not valid TOML: {e}")]) from None
    issues: list[ConfigIssue] = []
    cfg = None
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as e:
        issues.extend(_pydantic_issues(e))
    if known_profiles is None:
        known_profiles = _known_profiles(data)
    issues.extend(check_references(data, known_profiles))
    if issues or cfg is None:
        raise ConfigError(source, issues)
    return cfg


def load_config(path: Path | str) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [ConfigIssue("", f"cannot read the file: {e.strerror}")]) from None
    return parse_config(text, str(path))
