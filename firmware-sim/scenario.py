"""Scenario files: which simulated devices run, where they listen, and the matching gateway config."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class Scenario(_Strict):
    sim: SimSection = SimSection()
    modbus_tcp: Endpoint | None = None
    mqtt: Endpoint | None = None
    meters: list[Meter] = []
    parking: list[Parking] = []


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
        "buildings": [{"id": b} for b in sorted({m.building for m in scenario.meters})],
        "sinks": [{"type": "influxdb1", "name": "local", "url": influx_url, "database": database}],
    }
    if scenario.meters:
        assert scenario.modbus_tcp is not None, "meters need a [modbus_tcp] endpoint"
        cfg["buses"].append({"type": "modbus_tcp", "name": "plant-room", "host": scenario.modbus_tcp.host,
                             "port": scenario.modbus_tcp.port})
        for m in scenario.meters:
            cfg["devices"].append({"id": m.device, "bus": "plant-room", "unit_id": m.unit_id, "profile": m.profile,
                                   "building": m.building, "poll_interval_s": m.poll_interval_s})
    if scenario.parking:
        assert scenario.mqtt is not None, "parking sensors need an [mqtt] broker"
        cfg["mqtt"] = {"host": scenario.mqtt.host, "port": scenario.mqtt.port,
                       "client_id": f"cgw-{scenario.sim.site}"}
        cfg["subscriptions"] = [{"topic": "application/+/device/+/event/up", "decoder": "chirpstack_parking", "qos": 1}]
    return {k: v for k, v in cfg.items() if v != []}
