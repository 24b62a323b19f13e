"""Scenario files: a whole simulated community and the gateway configuration that reads it.

A scenario says which devices run, where they listen (Modbus TCP ports, RS-485 lines on socat pty
pairs, an MQTT broker), when the simulated day starts and how fast it runs, and which faults are
injected when. docs/firmware-sim.md describes every section with examples; in short:

``[sim]``            seed, site, tick_s, start, speed, data_dir, clock_file
``[modbus_tcp]``     one Modbus TCP listener (host, port), the bus "plant-room"
``[[tcp_endpoints]]`` Modbus TCP listeners on many ports: ``port``, ``ports = [..]`` or ``"A-B"``
``[[serial_lines]]`` RS-485 lines (``modbus_rtu`` or ``dlt645``) on socat pty pairs
``[mqtt]``           the broker parking sensors, elevator monitors and cameras publish on
``[[meters]]`` / ``[[meter_groups]]``, ``[[parking]]`` / ``[[parking_groups]]``,
``[[elevators]]`` / ``[[elevator_groups]]``, ``[[cameras]]``: the devices (groups: many at once)
``[[faults]]``       faults injected at a time relative to the start or absolute

Every problem is reported with the path of the offending key (``meters[3].unit_id``,
``faults[2].device``), like the gateway's own configuration.
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from firmware_sim import cameras, elevators
from firmware_sim.dlt645_meter import FIELD_DI
from firmware_sim.elevators import DWELL_PER_PASSENGER_S, creep_speed_mps
from firmware_sim.faults import DEFAULT_MAGNITUDE, KINDS_OF_DEVICE, FaultKind
from firmware_sim.loads import _hash01

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=86400)]
DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]  # also a topic level: no / + #
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
PollSeconds = Annotated[float, Field(ge=0.1, le=86400)]  # what the gateway accepts for a device
Address = Annotated[str, Field(pattern=r"^[0-9]{12}$")]
DevEui = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]

DEVICE_TYPE_NAMES = {"modbus_tcp_meter": "Modbus TCP meter", "modbus_rtu_meter": "Modbus RTU meter",
                     "dlt645_meter": "DL/T 645 meter", "parking": "parking sensor", "elevator": "elevator",
                     "camera": "camera"}
LEGACY_BUS = "plant-room"  # the bus name of the single [modbus_tcp] listener
UNITS_PER_PORT = 247  # Modbus unit ids 1..247: one TCP port (or RS-485 line) holds at most that many meters
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)([dhms]))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"`` -> seconds (ValueError for anything else)."""
    if not _DURATION.match(text.strip()):
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 1h30m or 2d")
    return sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimSection(_Strict):
    seed: int = 1
    site: Name = "community"
    tick_s: Annotated[float, Field(gt=0, le=60)] = 1.0  # simulated seconds between looks at a moving lift
    start: datetime | None = None  # the simulated instant the run starts at; default: now
    speed: Annotated[float, Field(gt=0, le=100_000)] = 1.0  # simulated seconds per wall second
    data_dir: str | None = None  # ptys, clock file, ground truth; default .sim/<site> (relative to the cwd)
    clock_file: bool = False  # emit gateway.sim_clock_file even when start and speed are the defaults

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-03-02T07:00:00+08:00")
        return v


class Endpoint(_Strict):
    host: str = "127.0.0.1"
    port: Port


class TcpEndpoint(_Strict):
    """A Modbus TCP listener on one port, a list of ports or a range ``"15100-15119"``."""

    name: Name
    host: str = "127.0.0.1"
    port: Port | None = None
    ports: list[Port] | Annotated[str, Field(pattern=r"^\d{1,5}-\d{1,5}$")] | None = None
    timeout_s: Seconds | None = None  # emitted into the gateway's bus when given
    max_parallel: Annotated[int, Field(ge=1, le=64)] | None = None

    @field_validator("ports", mode="before")
    @classmethod
    def _ports_shape(cls, v: object) -> object:
        # one message for a wrong shape, rather than one per member of the union
        if v is None or (isinstance(v, str) and re.fullmatch(r"\d{1,5}-\d{1,5}", v)):
            return v
        if isinstance(v, list):
            for k, port in enumerate(v):
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    raise ValueError(f"ports[{k}] = {port!r} is not a port (1..65535)")
            return v
        raise ValueError(f"ports is a list of ports ([15300, 15301]) or a range (\"15300-15319\"), not {v!r}")

    @model_validator(mode="after")
    def _ports(self) -> "TcpEndpoint":
        if (self.port is None) == (self.ports is None):
            raise ValueError("give exactly one of port or ports")
        if isinstance(self.ports, str):
            first, last = (int(x) for x in self.ports.split("-"))
            if not 1 <= first <= last <= 65535:
                raise ValueError(f"ports {self.ports!r}: need 1 <= first <= last <= 65535")
        ports = self.port_list()
        if len(set(ports)) != len(ports):
            raise ValueError("ports lists a port twice")
        return self

    def port_list(self) -> list[int]:
        if self.port is not None:
            return [self.port]
        if isinstance(self.ports, str):
            first, last = (int(x) for x in self.ports.split("-"))
            return list(range(first, last + 1))
        return list(self.ports or [])

    def bus_name(self, port: int) -> str:
        """The gateway's bus for one port (a bus is one host and port)."""
        return self.name if self.port is not None else f"{self.name}-{port}"


class SerialLine(_Strict):
    """An RS-485 line the simulator puts on a socat pty pair: it serves on one end, the gateway opens the other."""

    name: Name
    protocol: Literal["modbus_rtu", "dlt645"]
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] = 1
    device_link: str | None = None  # default <data_dir>/<name>.device
    gateway_link: str | None = None  # default <data_dir>/<name>.gateway
    timeout_s: Seconds | None = None  # emitted into the gateway's bus when given

    @model_validator(mode="after")
    def _dlt645_speeds(self) -> "SerialLine":
        if self.protocol == "dlt645" and self.baudrate is not None and self.baudrate > 9600:
            raise ValueError("DL/T 645 meters run at 1200, 2400, 4800 or 9600 baud")
        return self

    @property
    def serial_settings(self) -> tuple[int, str]:
        """(baud rate, parity): as given, or what the meters ship with (RTU 9600 8N1, DL/T 645 2400 8E1)."""
        if self.protocol == "dlt645":
            return self.baudrate or 2400, self.parity or "E"
        return self.baudrate or 9600, self.parity or "N"

    def links(self, sim_dir: Path) -> tuple[str, str]:
        """(device end, gateway end) as absolute paths (not resolved: they are symlinks to /dev/pts)."""
        device = self.device_link or str(sim_dir / f"{self.name}.device")
        gateway = self.gateway_link or str(sim_dir / f"{self.name}.gateway")
        return os.path.abspath(device), os.path.abspath(gateway)


MeterKind = Literal["household", "common", "pv"]


class Meter(_Strict):
    """An energy meter on a Modbus TCP endpoint, a Modbus RTU line (unit_id + profile) or a DL/T 645 line (address)."""

    device: DeviceId
    bus: Name | None = None  # a tcp endpoint or serial line; default: the [modbus_tcp] listener
    port: Port | None = None  # on a multi-port tcp endpoint; default its first port
    unit_id: Annotated[int, Field(ge=1, le=247)] | None = None
    profile: Name | None = None
    address: Address | None = None
    fields: list[str] | None = None  # DL/T 645: what the gateway asks for (default its three-phase set)
    building: DeviceId
    kind: MeterKind = "household"
    start_kwh: Annotated[float, Field(ge=0)] = 0.0
    scale_w: Annotated[float, Field(gt=0)] | None = None
    poll_interval_s: PollSeconds = 5.0


class MeterGroup(_Strict):
    """``count`` similar meters named ``<prefix>-0001``..., placed on free unit ids (or addresses) of a bus."""

    prefix: DeviceId
    count: Annotated[int, Field(ge=1, le=100_000)]
    bus: Name | None = None
    profiles: list[Name] | None = None  # Modbus: cycled over the group
    first_unit_id: Annotated[int, Field(ge=1, le=247)] = 1
    units_per_port: Annotated[int, Field(ge=1, le=247)] = UNITS_PER_PORT
    first_address: Address | None = None  # DL/T 645: consecutive addresses from this one
    fields: list[str] | None = None
    buildings: list[DeviceId] = Field(min_length=1)  # split into consecutive blocks of equal size
    kind: MeterKind = "household"
    start_kwh_max: Annotated[float, Field(ge=0)] = 5000.0  # each counter starts in [0, max), hashed from its name
    scale_w: Annotated[float, Field(gt=0)] | None = None
    poll_interval_s: PollSeconds = 60.0


class Parking(_Strict):
    dev_eui: DevEui
    bay: str
    zone: Literal["general", "fire_lane"] = "general"
    heartbeat_s: Annotated[float, Field(gt=0)] = 300.0
    slot_s: Annotated[float, Field(gt=0)] = 600.0


class ParkingGroup(_Strict):
    """``count`` sensors with consecutive DevEUIs from ``first_dev_eui``, bays ``<bay_prefix>0001``..."""

    first_dev_eui: DevEui
    count: Annotated[int, Field(ge=1, le=100_000)]
    bay_prefix: Annotated[str, Field(max_length=32)] = "P-"
    zone: Literal["general", "fire_lane"] = "general"
    heartbeat_s: Annotated[float, Field(gt=0)] = 600.0
    slot_s: Annotated[float, Field(gt=0)] = 600.0


class ElevatorModel(_Strict):
    """A lift's data (firmware_sim.elevators.ElevatorSpec; defaults are a residential high-rise lift)."""

    lowest_floor: Annotated[int, Field(ge=-10, le=100)] = -1
    top_floor: Annotated[int, Field(ge=-9, le=150)] = 18
    lobby_floor: int = 1
    floor_height_m: Annotated[float, Field(ge=2.4, le=10)] = 3.0
    rated_speed_mps: Annotated[float, Field(gt=0, le=10)] = 1.75
    acceleration_mps2: Annotated[float, Field(gt=0, le=2)] = 0.8
    rated_load_kg: Annotated[float, Field(ge=100, le=5000)] = 1000.0
    door_open_s: Seconds = 2.5
    door_dwell_s: Seconds = 3.0
    door_close_s: Seconds = 3.0
    calls_per_hour: Annotated[float, Field(gt=0, le=3600)] = 40.0
    status_moving_s: Seconds = 5.0
    status_idle_s: Seconds = 60.0
    fault_probability: Annotated[float, Field(ge=0, le=1)] = 0.001
    outside_zone_alarm_s: Seconds = 90.0
    trapped_alarm_s: Seconds = 180.0
    rescue_s: Seconds = 1200.0
    start_run_count: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _floors(self) -> "ElevatorModel":
        if not self.lowest_floor <= self.lobby_floor < self.top_floor:
            raise ValueError(f"need lowest_floor <= lobby_floor < top_floor, got {self.lowest_floor}, "
                             f"{self.lobby_floor}, {self.top_floor}")
        return self

    def spec_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ElevatorModel.model_fields}


class Elevator(ElevatorModel):
    """An elevator monitor."""

    elevator_id: DeviceId
    building: DeviceId


class ElevatorGroup(ElevatorModel):
    """``per_building`` identical lifts in each building, named ``<building>-L1``, ``<building>-L2``..."""

    buildings: list[DeviceId] = Field(min_length=1)
    per_building: Annotated[int, Field(ge=1, le=32)] = 1


class Camera(_Strict):
    """A people-counting camera at a gate (firmware_sim.cameras.CameraSpec)."""

    device: DeviceId
    gate: Annotated[str, Field(min_length=1, max_length=64)]
    channel_id: Annotated[int, Field(ge=1, le=64)] = 1
    report_s: Seconds = 60.0
    peak_per_min: Annotated[float, Field(ge=0, le=600)] = 4.0
    slot_s: Annotated[float, Field(ge=0.1, le=3600)] = 10.0
    reboot_interval_s: Seconds | None = None

    @model_validator(mode="after")
    def _slot_mean(self) -> "Camera":
        # a slot's count is a Poisson draw by inversion, which needs exp(-mean) to stay representable
        if self.peak_per_min * self.slot_s / 60 > 300:
            raise ValueError("peak_per_min * slot_s / 60 must be at most 300 people per slot; use a shorter slot_s")
        return self


class Fault(_Strict):
    """A fault injected into one device: ``at`` seconds (or ``"1h30m"``) after the start, or an absolute time."""

    device: DeviceId
    kind: FaultKind
    at: Union[float, datetime, str]
    duration: Union[float, str]
    magnitude: float | None = None

    @field_validator("at", "duration", mode="before")
    @classmethod
    def _time_shape(cls, v: object, info: ValidationInfo) -> object:
        # one message for a wrong shape, rather than one per member of the union
        if isinstance(v, bool) or not isinstance(v, (int, float, str, datetime)) or \
                (info.field_name == "duration" and isinstance(v, datetime)):
            what = ("seconds after the start (90), a time after the start (\"1h30m\") or an absolute time "
                    "(2026-03-02T08:00:00+08:00)") if info.field_name == "at" else "seconds (90) or a duration (\"15m\")"
            raise ValueError(f"expected {what}, got {v!r}")
        return v

    @field_validator("at")
    @classmethod
    def _at(cls, v: float | datetime | str) -> float | datetime | str:
        if isinstance(v, datetime):
            if v.tzinfo is None:
                raise ValueError("an absolute time needs a UTC offset, e.g. 2026-03-02T08:00:00+08:00")
        elif isinstance(v, str):
            try:
                parse_duration(v)
            except ValueError:
                try:
                    when = datetime.fromisoformat(v)
                except ValueError:
                    raise ValueError(f"{v!r} is neither a time after the start (90s, 15m, 1h30m, 2d) nor an "
                                     "absolute time (2026-03-02T08:00:00+08:00)") from None
                if when.tzinfo is None:
                    raise ValueError("an absolute time needs a UTC offset, e.g. 2026-03-02T08:00:00+08:00") from None
        elif not math.isfinite(v) or v < 0:
            raise ValueError("seconds after the start must be a finite number >= 0")
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: float | str) -> float | str:
        seconds = parse_duration(v) if isinstance(v, str) else v
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError("the duration must be > 0")
        return v

    @property
    def duration_s(self) -> float:
        return parse_duration(self.duration) if isinstance(self.duration, str) else float(self.duration)

    @property
    def magnitude_value(self) -> float:
        return self.magnitude if self.magnitude is not None else DEFAULT_MAGNITUDE.get(self.kind, 0.0)

    def start_s(self, scenario_start_s: float) -> float:
        """The simulated unix time the fault starts, given the scenario's start."""
        if isinstance(self.at, datetime):
            return self.at.timestamp()
        if isinstance(self.at, str):
            try:
                return scenario_start_s + parse_duration(self.at)
            except ValueError:
                return datetime.fromisoformat(self.at).timestamp()
        return scenario_start_s + float(self.at)


@dataclass(frozen=True, slots=True)
class PlacedMeter:
    """A meter with everything about where it is resolved (groups expanded, defaults applied)."""

    meter: Meter
    protocol: Literal["modbus_tcp", "modbus_rtu", "dlt645"]
    bus: str  # the tcp endpoint or serial line name
    gateway_bus: str  # the gateway's bus name (tcp: one per port)
    host: str = ""
    port: int = 0

    @property
    def device_type(self) -> str:
        return f"{self.protocol}_meter"


class Scenario(_Strict):
    sim: SimSection = SimSection()
    modbus_tcp: Endpoint | None = None
    tcp_endpoints: list[TcpEndpoint] = []
    serial_lines: list[SerialLine] = []
    mqtt: Endpoint | None = None
    meters: list[Meter] = []
    meter_groups: list[MeterGroup] = []
    parking: list[Parking] = []
    parking_groups: list[ParkingGroup] = []
    elevators: list[Elevator] = []
    elevator_groups: list[ElevatorGroup] = []
    cameras: list[Camera] = []
    faults: list[Fault] = []

    _placed: list[PlacedMeter] = PrivateAttr(default_factory=list)
    _parking: list[Parking] = PrivateAttr(default_factory=list)
    _elevators: list[Elevator] = PrivateAttr(default_factory=list)
    _types: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self) -> "Scenario":
        issues = _Resolver(self).run()
        if issues:
            raise ValueError("\n".join(issues))
        return self

    # the community, groups expanded ------------------------------------------------------------
    def all_meters(self) -> list[PlacedMeter]:
        return self._placed

    def all_parking(self) -> list[Parking]:
        return self._parking

    def all_elevators(self) -> list[Elevator]:
        return self._elevators

    def device_types(self) -> dict[str, str]:
        """Every device id (a meter's name, a sensor's DevEUI, a lift, a camera) -> its device type."""
        return self._types

    def tcp_endpoint_list(self) -> list[TcpEndpoint]:
        """The [[tcp_endpoints]], and the [modbus_tcp] listener as the endpoint "plant-room"."""
        legacy = [TcpEndpoint(name=LEGACY_BUS, host=self.modbus_tcp.host, port=self.modbus_tcp.port)] \
            if self.modbus_tcp is not None else []
        return legacy + list(self.tcp_endpoints)

    def sim_dir(self, override: Path | str | None = None) -> Path:
        """Where the simulator keeps its ptys, clock file and ground truth (absolute)."""
        return Path(os.path.abspath(override or self.sim.data_dir or f".sim/{self.sim.site}"))

    def device_count(self) -> int:
        return len(self._placed) + len(self._parking) + len(self._elevators) + len(self.cameras)


class _Resolver:
    """Expands groups, places meters on buses and checks every cross-reference, collecting the problems."""

    def __init__(self, s: Scenario) -> None:
        self.s = s
        self.issues: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.issues.append(f"{path}: {message}")

    def run(self) -> list[str]:
        s = self.s
        endpoints = {e.name: e for e in s.tcp_endpoint_list()}
        named: set[str] = set()
        for i, e in enumerate(s.tcp_endpoints):
            if s.modbus_tcp is not None and e.name == LEGACY_BUS:
                self.err(f"tcp_endpoints[{i}].name", f"{LEGACY_BUS!r} is the [modbus_tcp] listener's bus; pick another name")
            elif e.name in named:
                self.err(f"tcp_endpoints[{i}].name", f"another endpoint is also named {e.name!r}")
            named.add(e.name)
        seen_names = set(endpoints)
        seen_ports: dict[tuple[str, int], str] = {}
        listeners = [("modbus_tcp", e) for e in s.tcp_endpoint_list()[:1] if s.modbus_tcp is not None]
        listeners += [(f"tcp_endpoints[{i}]", e) for i, e in enumerate(s.tcp_endpoints)]
        for path, e in listeners:
            for p in e.port_list():
                if (e.host, p) in seen_ports:
                    self.err(path, f"port {p} on {e.host} is already used by endpoint {seen_ports[(e.host, p)]!r}")
                seen_ports[(e.host, p)] = e.name
        lines = {}
        for i, line in enumerate(s.serial_lines):
            if line.name in seen_names or line.name in lines:
                self.err(f"serial_lines[{i}].name", f"bus name {line.name!r} is already used")
            lines[line.name] = line
        self.endpoints, self.lines = endpoints, lines
        self.used_units: dict[tuple[str, int], set[int]] = {}  # (bus, port) -> unit ids
        self.used_addresses: dict[str, set[str]] = {}
        placed = [pm for i, m in enumerate(s.meters) if (pm := self._place(m, f"meters[{i}]")) is not None]
        for i, g in enumerate(s.meter_groups):
            placed += self._expand_meters(g, f"meter_groups[{i}]")
        parking = list(s.parking)
        for i, g in enumerate(s.parking_groups):
            base = int(g.first_dev_eui, 16)
            if base + g.count > 1 << 64:
                self.err(f"parking_groups[{i}].count", "the DevEUIs run past ffffffffffffffff")
                continue
            parking += [Parking(dev_eui=f"{base + k:016x}", bay=f"{g.bay_prefix}{k + 1:04d}", zone=g.zone,
                                heartbeat_s=g.heartbeat_s, slot_s=g.slot_s) for k in range(g.count)]
        lifts = list(s.elevators)
        for g in s.elevator_groups:
            spec = g.spec_fields()
            lifts += [Elevator(elevator_id=f"{b}-L{k}", building=b, **spec)
                      for b in g.buildings for k in range(1, g.per_building + 1)]
        types: dict[str, str] = {}
        where: dict[str, str] = {}

        def claim(device: str, kind: str, path: str) -> None:
            if device in types:
                self.err(path, f"device {device!r} is also {where[device]} (device names are the gateway's "
                               "device tag and must be unique)")
                return
            types[device] = kind
            where[device] = path

        for pm in placed:
            claim(pm.meter.device, pm.device_type, f"meter {pm.meter.device!r}")
        for p in parking:
            claim(p.dev_eui, "parking", f"parking sensor {p.dev_eui}")
        for e in lifts:
            claim(e.elevator_id, "elevator", f"elevator {e.elevator_id!r}")
        for c in s.cameras:
            claim(c.device, "camera", f"camera {c.device!r}")
        if (parking or lifts or s.cameras) and s.mqtt is None:
            self.err("mqtt", "parking sensors, elevators and cameras need an [mqtt] broker")
        s._placed, s._parking, s._elevators, s._types = placed, parking, lifts, types
        self._check_faults({p.dev_eui: p for p in parking}, {e.elevator_id: e for e in lifts})
        return self.issues

    # meters --------------------------------------------------------------------------------------
    def _bus_of(self, bus: str | None, path: str) -> tuple[str, Literal["modbus_tcp", "modbus_rtu", "dlt645"]] | None:
        s = self.s
        if bus is None:
            if s.modbus_tcp is not None:
                return LEGACY_BUS, "modbus_tcp"
            if len(self.endpoints) == 1 and not self.lines:
                return next(iter(self.endpoints)), "modbus_tcp"
            known = ", ".join(sorted([*self.endpoints, *self.lines])) or "none declared"
            self.err(f"{path}.bus", f"give the meter's bus: a [[tcp_endpoints]] or [[serial_lines]] name ({known})")
            return None
        if bus in self.endpoints:
            return bus, "modbus_tcp"
        if bus in self.lines:
            return bus, self.lines[bus].protocol
        known = ", ".join(sorted([*self.endpoints, *self.lines])) or "none declared"
        self.err(f"{path}.bus", f"no tcp endpoint or serial line named {bus!r} (declared: {known})")
        return None

    def _check_profile(self, profile: str | None, path: str) -> bool:
        from firmware_sim.register_map import profile_dir  # data only: the profile files ship with drivers

        if profile is None:
            self.err(path, "a Modbus meter needs a profile (e.g. sdm630, sdm120, dtsu666)")
            return False
        if not (profile_dir() / f"{profile}.toml").exists():
            known = ", ".join(sorted(p.stem for p in profile_dir().glob("*.toml")))
            self.err(path, f"unknown profile {profile!r} (known: {known})")
            return False
        return True

    def _check_fields(self, fields: list[str] | None, path: str) -> None:
        for k, f in enumerate(fields or []):
            if f not in FIELD_DI:
                self.err(f"{path}[{k}]", f"a DL/T 645 meter here serves no field {f!r} (served: {', '.join(FIELD_DI)})")

    def _place(self, m: Meter, path: str) -> PlacedMeter | None:
        found = self._bus_of(m.bus, path)
        if found is None:
            return None
        bus, protocol = found
        if protocol == "dlt645":
            for key in ("unit_id", "profile", "port"):
                if getattr(m, key) is not None:
                    self.err(f"{path}.{key}", f"{key!r} is for Modbus meters; bus {bus!r} is a DL/T 645 line")
            if m.address is None:
                self.err(f"{path}.address", f"a meter on DL/T 645 line {bus!r} needs its 12-digit address")
                return None
            self._check_fields(m.fields, f"{path}.fields")
            used = self.used_addresses.setdefault(bus, set())
            if m.address in used:
                self.err(f"{path}.address", f"address {m.address} is already on line {bus!r}")
            used.add(m.address)
            return PlacedMeter(m, protocol, bus, bus)
        for key in ("address", "fields"):
            if getattr(m, key) is not None:
                self.err(f"{path}.{key}", f"{key!r} is for DL/T 645 meters; bus {bus!r} is {protocol}")
        ok = self._check_profile(m.profile, f"{path}.profile")
        if m.unit_id is None:
            self.err(f"{path}.unit_id", "a Modbus meter needs a unit_id (1..247)")
            return None
        if protocol == "modbus_rtu":
            if m.port is not None:
                self.err(f"{path}.port", f"'port' is for tcp endpoints; bus {bus!r} is a serial line")
            port, host, gateway_bus = 0, "", bus
        else:
            e = self.endpoints[bus]
            port = m.port if m.port is not None else e.port_list()[0]
            if port not in e.port_list():
                self.err(f"{path}.port", f"port {port} is not one of endpoint {bus!r}'s ports")
                return None
            host, gateway_bus = e.host, e.bus_name(port)
        used = self.used_units.setdefault((bus, port), set())
        if m.unit_id in used:
            where = f"port {port} of {bus!r}" if protocol == "modbus_tcp" else f"line {bus!r}"
            self.err(f"{path}.unit_id", f"unit id {m.unit_id} on {where} is already used")
        used.add(m.unit_id)
        return PlacedMeter(m, protocol, bus, gateway_bus, host, port) if ok else None

    def _expand_meters(self, g: MeterGroup, path: str) -> list[PlacedMeter]:
        found = self._bus_of(g.bus, path)
        if found is None:
            return []
        bus, protocol = found
        seed = self.s.sim.seed
        width = max(4, len(str(g.count)))
        names = [f"{g.prefix}-{k + 1:0{width}d}" for k in range(g.count)]
        buildings = [g.buildings[k * len(g.buildings) // g.count] for k in range(g.count)]
        common = {"building": None, "kind": g.kind, "scale_w": g.scale_w, "poll_interval_s": g.poll_interval_s}
        out = []
        if protocol == "dlt645":
            if g.first_address is None or g.profiles is not None:
                self.err(f"{path}.first_address" if g.first_address is None else f"{path}.profiles",
                         f"meters on DL/T 645 line {bus!r} take first_address, not profiles")
                return []
            self._check_fields(g.fields, f"{path}.fields")
            first = int(g.first_address)
            if first + g.count > 10**12:
                self.err(f"{path}.count", "the addresses run past 999999999999")
                return []
            used = self.used_addresses.setdefault(bus, set())
            for k, name in enumerate(names):
                address = f"{first + k:012d}"
                if address in used:
                    self.err(f"{path}.first_address", f"address {address} is already on line {bus!r}")
                    return []
                used.add(address)
                m = Meter.model_construct(device=name, bus=bus, address=address, fields=g.fields,
                                          start_kwh=round(g.start_kwh_max * _hash01(seed, name, "kwh"), 2),
                                          **{**common, "building": buildings[k]})
                out.append(PlacedMeter(m, protocol, bus, bus))
            return out
        if not g.profiles:
            self.err(f"{path}.profiles", f"meters on Modbus bus {bus!r} need profiles (e.g. [\"sdm120\"])")
            return []
        if g.first_address is not None or g.fields is not None:
            self.err(f"{path}.first_address", f"first_address and fields are for DL/T 645 lines; {bus!r} is {protocol}")
        if not all([self._check_profile(p, f"{path}.profiles[{k}]") for k, p in enumerate(g.profiles)]):
            return []
        last_unit = min(247, g.first_unit_id + g.units_per_port - 1)
        if protocol == "modbus_rtu":
            slots = [(0, u) for u in range(g.first_unit_id, last_unit + 1)]
            host, endpoint = "", None
        else:
            endpoint = self.endpoints[bus]
            host = endpoint.host
            slots = [(p, u) for p in endpoint.port_list() for u in range(g.first_unit_id, last_unit + 1)]
        free = [(p, u) for p, u in slots if u not in self.used_units.get((bus, p), set())]
        if len(free) < g.count:
            self.err(f"{path}.count", f"bus {bus!r} has {len(free)} free unit ids for this group's {g.count} meters "
                                      f"(at most {g.units_per_port} per port or line): add ports or lines")
            return []
        for k, name in enumerate(names):
            port, unit = free[k]
            self.used_units.setdefault((bus, port), set()).add(unit)
            m = Meter.model_construct(device=name, bus=bus, port=port or None, unit_id=unit,
                                      profile=g.profiles[k % len(g.profiles)],
                                      start_kwh=round(g.start_kwh_max * _hash01(seed, name, "kwh"), 2),
                                      **{**common, "building": buildings[k]})
            gateway_bus = endpoint.bus_name(port) if endpoint is not None else bus
            out.append(PlacedMeter(m, protocol, bus, gateway_bus, host, port))
        return out

    # faults --------------------------------------------------------------------------------------
    def _check_faults(self, parking: dict[str, Parking], lifts: dict[str, Elevator]) -> None:
        types = self.s._types
        forced: dict[str, list[tuple[float, float, str]]] = {}
        for i, f in enumerate(self.s.faults):
            path = f"faults[{i}]"
            kind_of = types.get(f.device)
            if kind_of is None:
                self.err(f"{path}.device", f"no device {f.device!r} in the scenario (a meter's device, a parking "
                                           "sensor's dev_eui, an elevator_id or a camera's device)")
                continue
            if f.kind not in KINDS_OF_DEVICE[kind_of]:
                name = DEVICE_TYPE_NAMES[kind_of]
                article = "an" if name[0] in "aeiou" else "a"
                self.err(f"{path}.kind", f"{f.kind!r} does not apply to {f.device!r}, {article} {name} "
                                         f"(it takes: {', '.join(KINDS_OF_DEVICE[kind_of])})")
                continue
            magnitude = f.magnitude_value
            if f.kind in ("spike", "rollover", "crowding") and magnitude <= 0:
                self.err(f"{path}.magnitude", f"{f.kind} needs a magnitude > 0")
            if f.kind == "clock_skew" and magnitude == 0:
                self.err(f"{path}.magnitude", "clock_skew needs the skew in hours (e.g. 3 or -5), not 0")
            if f.kind == "fire_lane" and parking[f.device].zone != "fire_lane":
                self.err(f"{path}.device", f"sensor {f.device} is in zone {parking[f.device].zone!r}: a fire_lane "
                                           "fault needs a bay with zone = \"fire_lane\"")
            if kind_of == "elevator" and f.kind in elevators.FORCED_KINDS:
                lift = lifts[f.device]
                if f.kind == "door_open_while_moving":
                    try:
                        creep_speed_mps(lift.floor_height_m, f.duration_s, lift.acceleration_mps2)
                    except ValueError:
                        shortest = 2 * math.sqrt(lift.floor_height_m / lift.acceleration_mps2)
                        self.err(f"{path}.duration", f"the car needs at least {shortest:.1f} s to creep one floor")
                # relative times compare without knowing the start; absolute ones with each other
                key = "abs" if isinstance(f.at, datetime) or (isinstance(f.at, str) and not _DURATION.match(f.at)) \
                    else "rel"
                at = f.start_s(0.0)
                lead = lift.door_open_s + lift.door_dwell_s + lift.door_close_s + 4 * DWELL_PER_PASSENGER_S + 60.0
                for a, b, other in forced.get(f"{f.device}/{key}", []):
                    if at - lead < b and a - lead < at + f.duration_s:
                        self.err(f"{path}.at", f"overlaps {other} on elevator {f.device!r} (leave a minute or more "
                                               "between two forced faults of one lift)")
                forced.setdefault(f"{f.device}/{key}", []).append((at, at + f.duration_s, path))


class ScenarioError(Exception):
    """Everything wrong with a scenario file, each problem with the path of its key."""

    def __init__(self, source: str, issues: list[str]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(f"{source}: {len(issues)} scenario error(s)\n" + "\n".join(f"  {i}" for i in issues))


_TYPE_TAGS = {"float", "int", "str", "bool", "datetime"}


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "-" in part:
            continue  # the union member pydantic tried (list[constrained-int]...): the user never wrote it as a key
        else:
            out += ("." if out else "") + str(part)
    return out


def issues_of(err: ValidationError) -> list[str]:
    """pydantic's errors as ``path: message`` lines (cross-reference problems already carry their path)."""
    out: list[str] = []
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        path = _loc(tuple(e["loc"]))
        for line in msg.splitlines():
            out.append(f"{path}: {line}" if path else line)
    return list(dict.fromkeys(out))  # a union reports one problem per member; say it once


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(source, [f"not valid TOML: {e}"]) from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(source, issues_of(e)) from None


def load_scenario(path: Path | str) -> Scenario:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(str(path), [f"cannot read the file: {e.strerror}"]) from None
    return parse_scenario(text, str(path))


def start_time_s(scenario: Scenario, now_s: float) -> float:
    """The simulated unix time the run starts at: the scenario's ``start`` or now."""
    return scenario.sim.start.timestamp() if scenario.sim.start is not None else now_s


def follows_sim_clock(scenario: Scenario) -> bool:
    """Whether a gateway must follow the simulator's clock file to agree with the devices' time."""
    return scenario.sim.clock_file or scenario.sim.speed != 1.0 or scenario.sim.start is not None


def gateway_config(scenario: Scenario, influx_url: str, database: str, data_dir: str,
                   status_interval_s: float = 10.0, *, sim_dir: Path | str | None = None,
                   clock_file: bool | None = None) -> dict:
    """A gateway configuration that reads every device of the scenario (written out with tomli-w).

    ``sim_dir`` is where the simulator keeps its ptys and clock file (default the scenario's);
    ``clock_file`` adds ``gateway.sim_clock_file`` (default: when the scenario's clock is not the
    wall clock, see follows_sim_clock).
    """
    where = scenario.sim_dir(sim_dir)
    gateway: dict[str, Any] = {"site": scenario.sim.site, "name": "demo-gateway", "data_dir": data_dir,
                               "status_interval_s": status_interval_s}
    if clock_file if clock_file is not None else follows_sim_clock(scenario):
        gateway["sim_clock_file"] = str(where / "clock.json")
    meters = scenario.all_meters()
    cfg: dict[str, Any] = {
        "gateway": gateway,
        "buses": [],
        "devices": [],
        "buildings": [{"id": b} for b in sorted({pm.meter.building for pm in meters}
                                                | {e.building for e in scenario.all_elevators()})],
        "sinks": [{"type": "influxdb1", "name": "local", "url": influx_url, "database": database}],
    }
    used_buses = {pm.gateway_bus for pm in meters}
    for e in scenario.tcp_endpoint_list():
        for port in e.port_list():
            name = e.bus_name(port)
            if name not in used_buses:
                continue
            bus: dict[str, Any] = {"type": "modbus_tcp", "name": name, "host": e.host, "port": port}
            if e.timeout_s is not None:
                bus["timeout_s"] = e.timeout_s
            if e.max_parallel is not None:
                bus["max_parallel"] = e.max_parallel
            cfg["buses"].append(bus)
    for line in scenario.serial_lines:
        if line.name not in used_buses:
            continue
        baudrate, parity = line.serial_settings
        bus = {"type": "modbus_rtu" if line.protocol == "modbus_rtu" else "dlt645_serial", "name": line.name,
               "device": line.links(where)[1], "baudrate": baudrate, "parity": parity, "stopbits": line.stopbits}
        if line.timeout_s is not None:
            bus["timeout_s"] = line.timeout_s
        cfg["buses"].append(bus)
    for pm in meters:
        m = pm.meter
        device: dict[str, Any] = {"id": m.device, "bus": pm.gateway_bus}
        if pm.protocol == "dlt645":
            device["address"] = m.address
            if m.fields is not None:
                device["fields"] = list(m.fields)
        else:
            device.update(unit_id=m.unit_id, profile=m.profile)
        device.update(building=m.building, poll_interval_s=m.poll_interval_s)
        if m.kind == "pv":
            device["pv"] = True  # its energy offsets the building's grid import in the roll-ups
        cfg["devices"].append(device)
    subscriptions = []
    if scenario.all_parking():
        subscriptions.append({"topic": "application/+/device/+/event/up", "decoder": "chirpstack_parking", "qos": 1})
    if scenario.all_elevators():
        subscriptions.append({"topic": f"{elevators.TOPIC_ROOT}/+/+/+", "decoder": "elevator", "qos": 1})
    if scenario.cameras:
        subscriptions.append({"topic": f"{cameras.TOPIC_ROOT}/+/peopleCounting", "decoder": "people_counter",
                              "qos": 1})
    if subscriptions:
        assert scenario.mqtt is not None, "checked when the scenario was validated"
        cfg["mqtt"] = {"host": scenario.mqtt.host, "port": scenario.mqtt.port,
                       "client_id": f"cgw-{scenario.sim.site}"}
        cfg["subscriptions"] = subscriptions
    return {k: v for k, v in cfg.items() if v != []}
