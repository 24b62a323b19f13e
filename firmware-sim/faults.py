"""Faults injected into simulated devices on purpose, and the ground truth that labels them.

A fault is scheduled in the scenario (device, kind, start, duration, magnitude) and changes what
the device serves while it is active. Every fault is also a ground-truth record (device, series,
kind, start, end) so detection can be scored against what was really injected.

Meter faults and what they do to the served values (any meter: Modbus TCP, Modbus RTU, DL/T 645):

| kind | effect | series |
|---|---|---|
| ``spike`` | power (total, phases, currents) x ``magnitude`` for ``duration_s`` | active_power |
| ``level_shift`` | power + ``magnitude`` W | active_power |
| ``drift`` | power + ``magnitude`` W per hour since the start | active_power |
| ``stuck`` | every register frozen at its value when the fault started (a hung meter CPU) | energy_import |
| ``rollover`` | the kWh register wraps at ``magnitude`` (e.g. 100000) at the fault's start | energy_import |
| ``replacement`` | a new meter: the counter restarts from ~0 at the start | energy_import |
| ``offline`` | no answer at all while active (the gateway times out) | device |

The other kinds act on the wire or on the devices' behaviour; the simulator applies them where the
device is (serial line, MQTT publisher, elevator plan, parking sensor, camera):

| kind | devices | effect | series |
|---|---|---|---|
| ``crc_error`` | meters on a serial line | every reply carries a wrong CRC / checksum | frame |
| ``garbled`` | meters on a serial line | one data byte of every reply flipped | frame |
| ``offline`` | MQTT devices too | nothing published | device |
| ``malformed_payload`` | MQTT devices | every payload cut in half (not JSON) | payload |
| ``clock_skew`` | MQTT devices | device timestamps off by ``magnitude`` hours | time |
| ``trapped_passenger`` | elevators | car stopped between floors, door closed, people inside | in_door_zone |
| ``door_open_while_moving`` | elevators | the car creeps to the next floor with its door open | door_state |
| ``fire_lane`` | fire-lane parking bays | a car parked over the sensor | occupied |
| ``crowding`` | cameras | ``magnitude`` extra people per minute entering | in_count |
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Literal

MeterFaultKind = Literal["spike", "level_shift", "drift", "stuck", "rollover", "replacement", "offline"]
FaultKind = Literal["spike", "level_shift", "drift", "stuck", "rollover", "replacement", "offline", "crc_error",
                    "garbled", "malformed_payload", "clock_skew", "trapped_passenger", "door_open_while_moving",
                    "fire_lane", "crowding"]
METER_KINDS: tuple[str, ...] = ("spike", "level_shift", "drift", "stuck", "rollover", "replacement", "offline")
LINE_KINDS: tuple[str, ...] = ("crc_error", "garbled")
MQTT_KINDS: tuple[str, ...] = ("offline", "malformed_payload", "clock_skew")
POWER_FIELDS = ("active_power", "active_power_l1", "active_power_l2", "active_power_l3", "current", "current_l1",
                "current_l2", "current_l3", "apparent_power", "reactive_power")
SERIES_OF: dict[str, str] = {"spike": "active_power", "level_shift": "active_power", "drift": "active_power",
                             "stuck": "energy_import", "rollover": "energy_import",
                             "replacement": "energy_import", "offline": "device", "crc_error": "frame",
                             "garbled": "frame", "malformed_payload": "payload", "clock_skew": "time",
                             "trapped_passenger": "in_door_zone", "door_open_while_moving": "door_state",
                             "fire_lane": "occupied", "crowding": "in_count"}
# which device types take which kinds (a device type as firmware_sim.scenario names it)
KINDS_OF_DEVICE: dict[str, tuple[str, ...]] = {
    "modbus_tcp_meter": METER_KINDS,
    "modbus_rtu_meter": METER_KINDS + LINE_KINDS,
    "dlt645_meter": METER_KINDS + LINE_KINDS,
    "parking": MQTT_KINDS + ("fire_lane",),
    "elevator": MQTT_KINDS + ("trapped_passenger", "door_open_while_moving"),
    "camera": MQTT_KINDS + ("crowding",),
}
# what ``magnitude`` means when a scenario leaves it out
DEFAULT_MAGNITUDE: dict[str, float] = {"spike": 6.0, "level_shift": 3000.0, "drift": 900.0, "rollover": 100000.0,
                                       "clock_skew": 3.0, "crowding": 150.0}


@dataclass
class Fault:
    """One injected fault of any device; times are simulated unix seconds."""

    device: str
    kind: FaultKind
    start_s: float
    duration_s: float
    magnitude: float = 0.0

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s

    def ground_truth(self) -> dict:
        # to the microsecond: below that a float time near 2026 is only rounding noise
        return {"device": self.device, "series": SERIES_OF[self.kind], "kind": self.kind,
                "start_ns": round(self.start_s * 1e6) * 1000, "end_ns": round(self.end_s * 1e6) * 1000,
                "magnitude": self.magnitude}


@dataclass
class MeterFault(Fault):
    """A fault of a meter's values; keeps what it needs between requests (frozen values, offsets)."""

    _frozen: dict[str, float] | None = field(default=None, repr=False)
    _offset_kwh: float | None = field(default=None, repr=False)


def apply_faults(faults: list[MeterFault], values: dict[str, float], t_s: float,
                 energy_at: Callable[[float], float]) -> dict[str, float] | None:
    """The values a faulty meter serves at ``t_s`` (None: it does not answer).

    ``energy_at(t)``: the healthy counter at time t (kWh), used to place a rollover exactly.
    """
    for f in faults:
        if f.kind == "rollover":
            # the register's display wraps at the modulus; placed so it wraps at the fault's start
            if f._offset_kwh is None:
                f._offset_kwh = f.magnitude - energy_at(f.start_s)
            raw = values["energy_import"] + f._offset_kwh
            # the offset comes from the load curve on its grid, the served counter from request to
            # request: the two differ by a hair, which must not move the wrap off the fault's start
            if t_s >= f.start_s:
                values["energy_import"] = math.fmod(max(raw - f.magnitude, 0.0), f.magnitude)
            else:
                values["energy_import"] = min(raw, math.nextafter(f.magnitude, 0.0))
            values["energy_total"] = values["energy_import"]
            continue
        if f.kind == "replacement" and t_s >= f.start_s:
            if f._offset_kwh is None:
                f._offset_kwh = energy_at(f.start_s)
            values["energy_import"] = max(0.0, values["energy_import"] - f._offset_kwh)
            values["energy_total"] = values["energy_import"]
            continue
        if not f.active(t_s):
            continue
        if f.kind == "offline":
            return None
        if f.kind == "stuck":
            if f._frozen is None:
                f._frozen = dict(values)
            values = dict(f._frozen)
        elif f.kind == "spike":
            for k in POWER_FIELDS:
                if k in values:
                    values[k] *= f.magnitude
        elif f.kind == "level_shift":
            values["active_power"] += f.magnitude
        elif f.kind == "drift":
            values["active_power"] += f.magnitude * (t_s - f.start_s) / 3600.0
    return values


def write_ground_truth(path: str, faults: list[Fault], extra: Callable[[Fault], dict] | None = None) -> None:
    """One JSON line per fault, in start order; ``extra`` adds keys (device type, protocol) per fault."""
    with open(path, "w", encoding="utf-8") as out:
        for f in sorted(faults, key=lambda f: (f.start_s, f.device, f.kind)):
            out.write(json.dumps({**f.ground_truth(), **(extra(f) if extra else {})}) + "\n")


@dataclass(frozen=True)
class CatalogueMeter:
    device: str
    profile: str
    building: str
    start_kwh: float


@dataclass(frozen=True)
class FaultCatalogue:
    start_s: float
    days: float
    poll_interval_s: float
    seed: int
    meters: tuple[CatalogueMeter, ...]
    faults: tuple[MeterFault, ...]

    def fresh_faults(self, device: str) -> list[MeterFault]:
        """New fault objects for one device (they keep per-run state: frozen values, offsets)."""
        return [MeterFault(f.device, f.kind, f.start_s, f.duration_s, f.magnitude) for f in self.faults
                if f.device == device]


def load_catalogue(path: str) -> FaultCatalogue:
    import tomllib
    from datetime import datetime

    doc = tomllib.loads(open(path, encoding="utf-8").read())
    start = datetime.fromisoformat(doc["start"]).timestamp()
    meters = tuple(CatalogueMeter(m["device"], m["profile"], m["building"], float(m.get("start_kwh", 0.0)))
                   for m in doc["meters"])
    known = {m.device for m in meters}
    faults = []
    for i, f in enumerate(doc["faults"]):
        if f["device"] not in known:
            raise ValueError(f"{path}: faults[{i}]: device {f['device']!r} is not one of the meters")
        if f["kind"] not in METER_KINDS:
            raise ValueError(f"{path}: faults[{i}]: unknown kind {f['kind']!r} (known: {', '.join(METER_KINDS)})")
        faults.append(MeterFault(f["device"], f["kind"], start + float(f["at_h"]) * 3600, float(f["duration_s"]),
                                 float(f.get("magnitude", 0.0))))
    return FaultCatalogue(start, float(doc["days"]), float(doc["poll_interval_s"]), int(doc.get("seed", 1)),
                          meters, tuple(faults))
