"""The one declaration of every measurement the gateway writes.

The line-protocol encoder, the drivers' field checks, the dashboards and the docs' table of
measurements are all derived from this module, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FieldKind = Literal["gauge", "counter", "state"]
FieldType = Literal["float", "int"]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    unit: str
    description: str
    kind: FieldKind = "gauge"  # counter: cumulative and only moves forward (rollover/replacement aside)
    type: FieldType = "float"  # how it is written to InfluxDB; fixed per field so types never conflict


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str
    description: str
    tags: tuple[str, ...]
    fields: dict[str, Field] = field(default_factory=dict)

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(f"measurement {self.name!r} has no field {name!r}") from None


def _m(name: str, description: str, tags: tuple[str, ...], *fields: Field) -> Measurement:
    return Measurement(name, description, tags, {f.name: f for f in fields})


_PHASES = ("l1", "l2", "l3")

ENERGY_METER = _m(
    "energy_meter",
    "Electricity meters: households, building common loads, PV; polled over Modbus or DL/T 645",
    ("site", "building", "device", "model"),
    *[Field(f"voltage_{p}", "V", f"Phase {p.upper()} to neutral voltage") for p in _PHASES],
    *[Field(f"current_{p}", "A", f"Phase {p.upper()} current") for p in _PHASES],
    *[Field(f"active_power_{p}", "W", f"Phase {p.upper()} active power") for p in _PHASES],
    Field("voltage", "V", "Voltage (single-phase meters)"),
    Field("current", "A", "Current (single-phase meters)"),
    Field("active_power", "W", "Total active power, positive when importing"),
    Field("reactive_power", "var", "Total reactive power"),
    Field("apparent_power", "VA", "Total apparent power"),
    Field("power_factor", "", "Total power factor"),
    Field("frequency", "Hz", "Grid frequency"),
    Field("energy_import", "kWh", "Cumulative imported active energy", kind="counter"),
    Field("energy_export", "kWh", "Cumulative exported active energy", kind="counter"),
    Field("energy_total", "kWh", "Cumulative import plus export active energy", kind="counter"),
)

PARKING_BAY = _m(
    "parking_bay",
    "LoRaWAN geomagnetic parking sensors received through ChirpStack",
    ("site", "device", "bay", "zone"),
    Field("occupied", "", "1 when a vehicle is over the sensor", kind="state", type="int"),
    Field("temperature", "°C", "Sensor temperature from heartbeats"),
    Field("rssi", "dBm", "Best gateway RSSI of the uplink"),
    Field("snr", "dB", "Best gateway SNR of the uplink"),
)

PEOPLE_COUNTER = _m(
    "people_counter",
    "People-counting cameras at gates and lobbies",
    ("site", "device", "gate"),
    Field("in_total", "people", "Cumulative entries as reported by the camera", kind="counter", type="int"),
    Field("out_total", "people", "Cumulative exits as reported by the camera", kind="counter", type="int"),
    Field("in_count", "people", "Entries since the previous report", type="int"),
    Field("out_count", "people", "Exits since the previous report", type="int"),
    Field("net_count", "people", "Entries minus exits since the previous report", type="int"),
    Field("net_total", "people", "Entries minus exits since the camera's last counter reset (the day's net flow "
          "for a daily reset)", type="int"),
    Field("resets", "", "Counter resets detected since the previous report (daily reset or camera reboot)",
          type="int"),
)

ELEVATOR = _m(
    "elevator",
    "Elevator monitors: real-time car status",
    ("site", "building", "device"),
    Field("floor", "", "Current floor (negative below ground)", kind="state", type="int"),
    Field("direction", "", "0 stopped, 1 up, 2 down", kind="state", type="int"),
    Field("door_state", "", "0 closed, 1 open, 2 closing, 3 opening", kind="state", type="int"),
    Field("moving", "", "1 while the car moves", kind="state", type="int"),
    Field("in_door_zone", "", "1 when the car is level with a landing", kind="state", type="int"),
    Field("occupied", "", "1 when someone is in the car", kind="state", type="int"),
    Field("speed", "m/s", "Car speed"),
    Field("run_count", "", "Cumulative trips", kind="counter", type="int"),
    Field("load", "%", "Car load as a share of the rated load"),
    Field("mode", "", "0 normal, 1 inspection, 2 maintenance, 3 fire, 4 out of service", kind="state", type="int"),
    Field("faults_active", "", "Number of faults the monitor reports active", type="int"),
)

ELEVATOR_ALARM = _m(
    "elevator_alarm",
    "Elevator monitors: faults and alarms as they are raised and cleared (code: TRAPPED_BETWEEN_FLOORS, ...)",
    ("site", "building", "device", "code"),
    Field("active", "", "1 when the alarm is raised, 0 when it is cleared", kind="state", type="int"),
    Field("floor", "", "Floor of the car when the alarm changed", kind="state", type="int"),
    Field("occupied", "", "1 when someone was in the car when the alarm changed", kind="state", type="int"),
)

DEVICE_HEALTH = _m(
    "device_health",
    "Per-device link health written by the gateway itself",
    ("site", "device", "driver"),
    Field("online", "", "1 when the last poll or message succeeded", kind="state", type="int"),
    Field("stale", "", "1 while the device's last values are stale (its last poll failed)", kind="state", type="int"),
    Field("errors", "", "Cumulative errors since the gateway started", kind="counter", type="int"),
    Field("error_code", "", "Why the last poll failed (drivers.polling.ERROR_KINDS), 0 when online",
          kind="state", type="int"),
)

ANOMALY = _m(
    "anomaly",
    "Anomaly scores of the numba core for every scored series (written when the score is above zero)",
    ("site", "building", "device", "source", "field"),
    Field("score", "", "Combined anomaly score in [0, 1]"),
    Field("reason", "", "Detector that fired: 1 level, 2 seasonal, 3 flatline, 4 spike, 5 counter", kind="state",
          type="int"),
)

ENERGY_INTERVAL = _m(
    "energy_interval",
    "Energy per meter and aligned interval from its cumulative counter (VEE applied); time = interval start",
    ("site", "building", "device", "interval"),
    Field("energy", "kWh", "Energy consumed (or generated, for PV) in the interval"),
    Field("coverage", "", "Share of the interval the meter's readings account for (1 = complete)"),
    Field("quality", "", "VEE flags: 1 estimated, 2 edited, 4 suspect (0 = measured)", kind="state", type="int"),
)

ENERGY_ROLLUP = _m(
    "energy_rollup",
    "Building and community energy, demand and carbon per aligned interval; time = interval start",
    ("site", "scope", "building", "interval"),
    Field("load", "kWh", "Consumption of the ordinary meters"),
    Field("pv", "kWh", "PV generation"),
    Field("import", "kWh", "Grid import: load net of PV used on site"),
    Field("export", "kWh", "PV exported to the grid"),
    Field("demand", "kW", "Mean import demand over the interval"),
    Field("carbon", "kgCO2e", "Import times the configured grid emission factor"),
    Field("carbon_avoided", "kgCO2e", "PV used on site times the emission factor"),
    Field("complete", "", "1 when every meter delivered a complete interval", kind="state", type="int"),
    Field("peak_demand", "kW", "Daily rows: highest 15-minute import demand of the day"),
    Field("load_factor", "", "Daily rows: mean demand / peak demand"),
)

ALERT = _m(
    "alert",
    "Alerts raised and cleared by the gateway's rules and detectors (1 raised, 0 cleared)",
    ("site", "building", "device", "rule"),
    Field("active", "", "1 when raised, 0 when cleared", kind="state", type="int"),
    Field("value", "", "What triggered it: the anomaly score, or seconds the condition had held"),
)

MEASUREMENTS: dict[str, Measurement] = {
    m.name: m for m in (ENERGY_METER, PARKING_BAY, PEOPLE_COUNTER, ELEVATOR, ELEVATOR_ALARM, DEVICE_HEALTH,
                        ANOMALY, ENERGY_INTERVAL, ENERGY_ROLLUP, ALERT)
}


def measurement(name: str) -> Measurement:
    try:
        return MEASUREMENTS[name]
    except KeyError:
        raise KeyError(f"unknown measurement {name!r}; known: {', '.join(sorted(MEASUREMENTS))}") from None
