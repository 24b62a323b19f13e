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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    # requests in flight to one Modbus TCP host, over every port (bus) on it: small converters and
    # meters accept only a few connections, and answer slower, not faster, when hammered
    modbus_tcp_per_host: Annotated[int, Field(ge=1, le=64)] = 8
    # tests and demos only: follow firmware-sim's (accelerated) clock instead of the system clock
    sim_clock_file: Path | None = None


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


class Dlt645SerialBus(_Strict):
    """An RS-485 line of DL/T 645-2007 meters (2400 8E1 is what Chinese meters ship with)."""

    type: Literal["dlt645_serial"]
    name: Name
    device: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB1")
    baudrate: Literal[1200, 2400, 4800, 9600] = 2400
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    timeout_s: PositiveSeconds = 1.0


class Dlt645TcpBus(_Strict):
    """DL/T 645-2007 meters behind an RS-485-to-Ethernet converter in transparent mode."""

    type: Literal["dlt645_tcp"]
    name: Name
    host: str = Field(min_length=1)
    port: Port
    timeout_s: PositiveSeconds = 1.5


Bus = Annotated[Union[ModbusTcpBus, ModbusRtuBus, Dlt645SerialBus, Dlt645TcpBus], Field(discriminator="type")]
BUS_TYPES = ("modbus_tcp", "modbus_rtu", "dlt645_serial", "dlt645_tcp")
MODBUS_BUS_TYPES = ("modbus_tcp", "modbus_rtu")
DLT645_BUS_TYPES = ("dlt645_serial", "dlt645_tcp")


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


JsonPath = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^.\s]+(\.[^.\s]+)*$",
                                description="dot-separated keys; a numeric part indexes an array")]
DecoderName = Literal["chirpstack_parking", "json", "people_counter", "elevator"]
_FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class JsonField(_Strict):
    path: JsonPath
    scale: _FiniteFloat = 1.0
    unit: str | None = Field(None, description="if given, must be the schema's unit (a typo or kW vs W is caught)")
    min: _FiniteFloat | None = None
    max: _FiniteFloat | None = None


class JsonMappingSettings(_Strict):
    """Where the generic ``json`` decoder finds things; cross-checked against pipelines.schema."""

    measurement: Name
    device_from_topic: Annotated[int, Field(ge=0, le=63)] | None = None
    device_path: JsonPath | None = None
    tags: dict[str, Annotated[str, Field(min_length=1, max_length=256)]] = {}
    tag_paths: dict[str, JsonPath] = {}
    fields: dict[str, JsonField] = Field(min_length=1)
    time_path: JsonPath | None = None
    time_format: Literal["rfc3339", "epoch_s", "epoch_ms", "epoch_ns"] | None = None


class Subscription(_Strict):
    topic: str = Field(min_length=1)
    decoder: DecoderName
    qos: Literal[0, 1] = 1
    # device clocks: see drivers.mqtt.decoded.ClockWindow for why these defaults
    max_ahead_s: PositiveSeconds = 600.0
    max_behind_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 86400.0
    mapping: JsonMappingSettings | None = None


def check_subscriptions(data: dict) -> list[ConfigIssue]:
    """What a subscription's decoder needs beyond types: a json mapping that fits the schema.

    On the raw document, like check_references, so each problem names the key the user wrote
    (``subscriptions[0].mapping.fields.sped``) and all are reported in one pass.
    """
    from pipelines.schema import MEASUREMENTS

    issues: list[ConfigIssue] = []
    subs = data.get("subscriptions")
    for i, sub in enumerate(subs if isinstance(subs, list) else []):
        if not isinstance(sub, dict):
            continue
        at = f"subscriptions[{i}]"
        mapping = sub.get("mapping")
        if sub.get("decoder") != "json":
            if mapping is not None:
                issues.append(ConfigIssue(f"{at}.mapping", "only the json decoder takes a mapping"))
            continue
        if not isinstance(mapping, dict):
            issues.append(ConfigIssue(f"{at}.mapping", "the json decoder needs a [subscriptions.mapping] table"))
            continue
        at += ".mapping"
        sources = [k for k in ("device_from_topic", "device_path") if k in mapping]
        if len(sources) != 1:
            issues.append(ConfigIssue(at, "give exactly one of device_from_topic or device_path "
                                          f"(found {len(sources)})"))
        level = mapping.get("device_from_topic")
        topic = sub.get("topic")
        if isinstance(level, int) and isinstance(topic, str):
            levels = topic.split("/")
            if "#" not in levels[: level + 1] and level >= len(levels):
                issues.append(ConfigIssue(f"{at}.device_from_topic",
                                          f"topic {topic!r} has {len(levels)} levels (0..{len(levels) - 1})"))
        if "time_format" in mapping and "time_path" not in mapping:
            issues.append(ConfigIssue(f"{at}.time_format", "time_format needs a time_path"))
        meas = MEASUREMENTS.get(mapping.get("measurement")) if isinstance(mapping.get("measurement"), str) else None
        if meas is None or meas.name == "device_health":
            if isinstance(mapping.get("measurement"), str):
                known = ", ".join(sorted(m for m in MEASUREMENTS if m != "device_health"))
                issues.append(ConfigIssue(f"{at}.measurement",
                                          f"unknown measurement {mapping['measurement']!r} (known: {known})"))
            continue
        settable = [t for t in meas.tags if t not in ("site", "device")]  # the gateway sets those two
        for section in ("tags", "tag_paths"):
            table = mapping.get(section)
            for tag in table if isinstance(table, dict) else {}:
                if tag not in settable:
                    issues.append(ConfigIssue(f"{at}.{section}.{tag}", f"measurement {meas.name!r} has no tag "
                                              f"{tag!r} the mapping may set (settable: {', '.join(settable) or 'none'})"))
                elif section == "tag_paths" and isinstance(mapping.get("tags"), dict) and tag in mapping["tags"]:
                    issues.append(ConfigIssue(f"{at}.tag_paths.{tag}", "tag is also given in tags"))
        fields = mapping.get("fields")
        for name, spec in fields.items() if isinstance(fields, dict) else ():
            if name not in meas.fields:
                issues.append(ConfigIssue(f"{at}.fields.{name}", f"measurement {meas.name!r} has no field {name!r} "
                                          f"(fields: {', '.join(meas.fields)})"))
                continue
            unit = spec.get("unit") if isinstance(spec, dict) else None
            if isinstance(unit, str) and unit != meas.fields[name].unit:
                issues.append(ConfigIssue(f"{at}.fields.{name}.unit", f"unit {unit!r} differs from the schema's "
                                          f"{meas.fields[name].unit!r}; convert with scale"))
            if isinstance(spec, dict) and isinstance(spec.get("min"), (int, float)) and \
                    isinstance(spec.get("max"), (int, float)) and spec["min"] > spec["max"]:
                issues.append(ConfigIssue(f"{at}.fields.{name}.max", "max is below min"))
    return issues


class Device(_Strict):
    """A polled device. Modbus devices name a ``profile`` (and ``unit_id``); DL/T 645 meters an ``address``."""

    id: Name
    bus: Name
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    profile: Name | None = None
    address: Annotated[str, Field(pattern=r"^[0-9]{12}$")] | None = None
    fields: list[str] | None = None  # DL/T 645: energy_meter fields to read (default: a three-phase set)
    building: Name | None = None
    poll_interval_s: Annotated[float, Field(ge=0.1, le=86400)] = 5.0
    pv: bool = False  # a PV generation meter: its energy offsets the building's grid import


FsyncPolicy = Literal["batch", "normal", "off"]


class _OutboxSinkSettings(_Strict):
    """Keys every sink has: how readings are batched, bounded on disk and sent (docs/data-path.md)."""

    name: Name
    timeout_s: PositiveSeconds = 10.0
    batch_max_points: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    batch_max_age_s: PositiveSeconds = 1.0
    # readings of MQTT QoS 1 messages are committed (and the messages acknowledged) within this
    # time, whatever batch_max_age_s says: brokers hold few unacknowledged messages per client
    ack_max_wait_s: Annotated[float, Field(ge=0.005, le=10)] = 0.05
    # one request carries several queued batches up to this many compressed bytes when catching up
    max_request_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20
    # compressed line protocol kept on disk for this sink; past it the oldest batches are dropped
    max_outbox_bytes: Annotated[int, Field(ge=64 << 10)] = 512 << 20
    # batch: fsync every commit (survives power loss); normal: survives a crash of the gateway, may
    # lose the last commits on power loss; off: leaves flushing to the OS
    fsync: FsyncPolicy = "normal"
    # one request at a time keeps delivery and deletion in queue order (see docs/data-path.md)
    max_in_flight: Literal[1] = 1
    retry_max_s: Annotated[float, Field(ge=0.5, le=3600)] = 30.0


class InfluxDB1Sink(_OutboxSinkSettings):
    type: Literal["influxdb1"]
    url: str = Field(pattern=r"^https?://")
    database: Name
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    create_database: bool = True

    def target(self) -> str:
        return f"{self.url} db={self.database}"


class InfluxDB2Sink(_OutboxSinkSettings):
    """InfluxDB 2.x / 3.x (and anything speaking its /api/v2/write, like VictoriaMetrics)."""

    type: Literal["influxdb2"]
    url: str = Field(pattern=r"^https?://")
    org: str = Field(min_length=1)
    bucket: str = Field(min_length=1)
    token: str | None = None

    def target(self) -> str:
        return f"{self.url} org={self.org} bucket={self.bucket}"


Sink = Annotated[Union[InfluxDB1Sink, InfluxDB2Sink], Field(discriminator="type")]
SINK_TYPES = ("influxdb1", "influxdb2")


class Building(_Strict):
    id: Name
    name: str = ""


DetectorKind = Literal["gauge", "energy_counter", "count"]


class RulesSection(_Strict):
    """How long a condition must hold before its alert is raised, and be gone before it clears."""

    trapped_passenger_s: Annotated[float, Field(ge=0)] = 180.0  # elevator-iot.md 3.1: 3 min
    door_open_while_moving_s: Annotated[float, Field(ge=0)] = 2.0
    stopped_outside_landing_s: Annotated[float, Field(ge=0)] = 45.0  # field note: 30 s was too short
    fire_lane_minutes: Annotated[float, Field(ge=0)] = 5.0
    crowding_per_minute: Annotated[float, Field(gt=0)] = 60.0
    crowding_s: Annotated[float, Field(ge=0)] = 60.0
    device_offline_s: Annotated[float, Field(ge=0)] = 300.0
    clear_after_s: Annotated[float, Field(ge=0)] = 10.0


class AnalyticsSection(_Strict):
    """The numba core: anomaly scores, VEE, interval energy, roll-ups, carbon and alert rules."""

    enabled: bool = True
    interval_minutes: list[Literal[1, 5, 15, 30, 60]] = [1, 15]
    lateness_s: Annotated[float, Field(ge=0, le=86400)] = 120.0
    max_gap_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 7200.0
    # China national grid average, data year 2023 (shared/reference/carbon-factors.md, table A.1)
    emission_factor_kg_per_kwh: Annotated[float, Field(ge=0, le=2)] = 0.5306
    emission_factor_year: Annotated[int, Field(ge=2000, le=2100)] = 2023
    emission_factor_region: str = "national"
    write_scores: bool = True
    alert_raise: Annotated[float, Field(gt=0, le=1)] = 0.8
    alert_clear: Annotated[float, Field(ge=0, lt=1)] = 0.2
    detectors: dict[DetectorKind, dict[str, float]] = {}
    rules: RulesSection = RulesSection()

    @model_validator(mode="after")
    def _check(self) -> "AnalyticsSection":
        from pipelines.detect import PARAM_NAMES  # deferred: the core's own table of parameters

        for kind, overrides in self.detectors.items():
            unknown = sorted(set(overrides) - set(PARAM_NAMES))
            if unknown:
                raise ValueError(f"detectors.{kind}: unknown parameter(s) {unknown} (known: {', '.join(PARAM_NAMES)})")
        if self.alert_clear >= self.alert_raise:
            raise ValueError("alert_clear must be below alert_raise (hysteresis)")
        if 15 not in self.interval_minutes:
            raise ValueError("interval_minutes must include 15: roll-ups and demand are per 15 minutes")
        return self


class NorthboundSection(_Strict):
    """Alerts published on the [mqtt] broker for building systems and operators' apps."""

    topic_prefix: str = Field("community-gateway", min_length=1, pattern=r"^[^#+]+$")
    qos: Literal[0, 1] = 1
    retain: bool = True  # a dashboard that connects later sees what is open now


class GatewayConfig(_Strict):
    gateway: GatewaySection = GatewaySection()
    buses: list[Bus] = []
    mqtt: MqttSection | None = None
    subscriptions: list[Subscription] = []
    devices: list[Device] = []
    buildings: list[Building] = []
    sinks: list[Sink] = Field(min_length=1)
    analytics: AnalyticsSection = AnalyticsSection()
    northbound: NorthboundSection | None = None


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
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
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
    bus_type = {t.get("name"): t.get("type") for _, t in tables("buses")}
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
        kind = bus_type.get(bus) if isinstance(bus, str) else None
        if kind in MODBUS_BUS_TYPES:
            if profile is None:
                issues.append(ConfigIssue(f"devices[{i}].profile", f"a device on Modbus bus {bus!r} needs a profile "
                                          f"(known: {', '.join(sorted(known_profiles))})"))
            for key in ("address", "fields"):
                if key in d:
                    issues.append(ConfigIssue(f"devices[{i}].{key}", f"{key!r} is for DL/T 645 meters; bus {bus!r} is {kind}"))
        elif kind in DLT645_BUS_TYPES:
            if "address" not in d:
                issues.append(ConfigIssue(f"devices[{i}].address", f"a meter on DL/T 645 bus {bus!r} needs its 12-digit address"))
            for key in ("profile", "unit_id"):
                if key in d:
                    issues.append(ConfigIssue(f"devices[{i}].{key}", f"{key!r} is for Modbus devices; bus {bus!r} is {kind}"))
            fields = d.get("fields")
            if isinstance(fields, list):
                from drivers.dlt645.identifiers import BY_FIELD  # deferred: the table is the driver's

                for k, f in enumerate(fields):
                    if f not in BY_FIELD:
                        issues.append(ConfigIssue(f"devices[{i}].fields[{k}]", f"no DL/T 645 identifier feeds field "
                                                  f"{f!r} (known: {', '.join(sorted(BY_FIELD))})"))
        if isinstance(profile, str) and profile not in known_profiles:
            issues.append(ConfigIssue(f"devices[{i}].profile", f"unknown profile {profile!r} (known: {', '.join(sorted(known_profiles))})"))
        building = d.get("building")
        if isinstance(building, str) and building_ids and building not in building_ids:
            issues.append(ConfigIssue(f"devices[{i}].building", f"building {building!r} is not declared in [[buildings]]"))
        if kind in DLT645_BUS_TYPES:
            key, what, where = (bus, "address", d.get("address")), "address", "address"
        else:
            key, what, where = (bus, "unit", d.get("unit_id", 1)), "unit id", "unit_id"
        if key[2] is not None and key in units_on_bus:
            issues.append(ConfigIssue(f"devices[{i}].{where}", f"{what} {key[2]} on bus {bus!r} is already used by devices[{units_on_bus[key]}]"))
        else:
            units_on_bus[key] = i
    if data.get("subscriptions") and "mqtt" not in data:
        issues.append(ConfigIssue("subscriptions", "subscriptions need an [mqtt] broker section"))
    if "northbound" in data and "mqtt" not in data:
        issues.append(ConfigIssue("northbound", "alerts are published on the [mqtt] broker: add an [mqtt] section"))
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
    issues.extend(check_subscriptions(data))
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
