"""Scenario files: which simulated devices run, where they listen, and the matching gateway config."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from firmware_sim import cameras, elevators

Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimSection(_Strict):
    seed: int = 1
    site: str = "community"
    tick_s: Annotated[float, Field(gt=0, le=60)] = 1.0


class Endpoint(_Strict):
    host: str = "127.0.0.1"
    port: Port


class Meter(_Strict):
    device: str
    unit_id: Annotated[int, Field(ge=1, le=247)]
    profile: str
    building: str
    kind: Literal["household", "common", "pv"] = "household"
    start_kwh: Annotated[float, Field(ge=0)] = 0.0
    scale_w: float | None = None
    poll_interval_s: Annotated[float, Field(gt=0)] = 5.0


class Parking(_Strict):
    dev_eui: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    bay: str
    zone: Literal["general", "fire_lane"] = "general"
    heartbeat_s: Annotated[float, Field(gt=0)] = 300.0
    slot_s: Annotated[float, Field(gt=0)] = 600.0


Seconds = Annotated[float, Field(gt=0, le=86400)]
DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]  # also a topic level: no / + #


class Elevator(_Strict):
    """An elevator monitor (firmware_sim.elevators.ElevatorSpec; defaults are a residential high-rise lift)."""

    elevator_id: DeviceId
    building: DeviceId
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
    def _floors(self) -> "Elevator":
        if not self.lowest_floor <= self.lobby_floor < self.top_floor:
            raise ValueError(f"need lowest_floor <= lobby_floor < top_floor, got {self.lowest_floor}, "
                             f"{self.lobby_floor}, {self.top_floor}")
        return self


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


class Scenario(_Strict):
    sim: SimSection = SimSection()
    modbus_tcp: Endpoint | None = None
    mqtt: Endpoint | None = None
    meters: list[Meter] = []
    parking: list[Parking] = []
    elevators: list[Elevator] = []
    cameras: list[Camera] = []


def load_scenario(path: Path | str) -> Scenario:
    return Scenario.model_validate(tomllib.loads(Path(path).read_text(encoding="utf-8")))


def gateway_config(scenario: Scenario, influx_url: str, database: str, data_dir: str,
                   status_interval_s: float = 10.0) -> dict:
    """A gateway configuration that reads every device of the scenario (written out with tomli-w)."""
    cfg: dict = {
        "gateway": {"site": scenario.sim.site, "name": "demo-gateway", "data_dir": data_dir,
                    "status_interval_s": status_interval_s},
        "buses": [],
        "devices": [],
        "buildings": [{"id": b} for b in sorted({m.building for m in scenario.meters}
                                                | {e.building for e in scenario.elevators})],
        "sinks": [{"type": "influxdb1", "name": "local", "url": influx_url, "database": database}],
    }
    if scenario.meters:
        assert scenario.modbus_tcp is not None, "meters need a [modbus_tcp] endpoint"
        cfg["buses"].append({"type": "modbus_tcp", "name": "plant-room", "host": scenario.modbus_tcp.host,
                             "port": scenario.modbus_tcp.port})
        for m in scenario.meters:
            cfg["devices"].append({"id": m.device, "bus": "plant-room", "unit_id": m.unit_id, "profile": m.profile,
                                   "building": m.building, "poll_interval_s": m.poll_interval_s})
    subscriptions = []
    if scenario.parking:
        subscriptions.append({"topic": "application/+/device/+/event/up", "decoder": "chirpstack_parking", "qos": 1})
    if scenario.elevators:
        subscriptions.append({"topic": f"{elevators.TOPIC_ROOT}/+/+/+", "decoder": "elevator", "qos": 1})
    if scenario.cameras:
        subscriptions.append({"topic": f"{cameras.TOPIC_ROOT}/+/peopleCounting", "decoder": "people_counter",
                              "qos": 1})
    if subscriptions:
        assert scenario.mqtt is not None, "parking sensors, elevators and cameras need an [mqtt] broker"
        cfg["mqtt"] = {"host": scenario.mqtt.host, "port": scenario.mqtt.port,
                       "client_id": f"cgw-{scenario.sim.site}"}
        cfg["subscriptions"] = subscriptions
    return {k: v for k, v in cfg.items() if v != []}
