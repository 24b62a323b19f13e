"""`cgw run` with the core in the path: intervals, roll-ups, scores and alerts land in InfluxDB, and
alerts are published on the MQTT northbound topic.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict

import paho.mqtt.client as paho
import pytest
import tomli_w

from firmware_sim.scenario import Scenario, gateway_config
from gateway.devservices import free_port
from tests.conftest import wait_for
from tests.test_end_to_end import start, stop

METERS = [
    {"device": "a-101", "unit_id": 1, "profile": "sdm630", "building": "B1", "start_kwh": 10.0, "poll_interval_s": 1.0},
    {"device": "a-pv", "unit_id": 2, "profile": "sdm120", "building": "B1", "kind": "pv", "start_kwh": 3.0,
     "poll_interval_s": 1.0},
]
# the scenario's sensors are parked in general bays; the fire-lane car is parked by the test itself
BAYS = [{"dev_eui": "a840410001810001", "bay": "P-1", "heartbeat_s": 1.0, "slot_s": 5.0}]
FIRE_LANE_EUI = "a840410001810099"


def park_in_fire_lane(host: str, port: int) -> None:
    """What the fire-lane bay's sensor sends when a car stops over it: a ChirpStack v4 uplink."""
    from firmware_sim.parking import ParkingSensor

    sensor = ParkingSensor(FIRE_LANE_EUI, "FL-9", zone="fire_lane")
    topic, payload = sensor.uplink(time.time_ns(), 1, {"type": "parking status", "occupied": True})
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fl-{time.time_ns()}")
    pub.connect(host, port)
    pub.loop_start()
    pub.publish(topic, payload, qos=1).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()


def count(influx, q: str, db: str) -> int:
    try:
        return len(influx.rows(q, db))
    except AssertionError:  # the database appears with the first delivery
        return 0


def test_derived_series_and_alerts_end_to_end(tmp_path, mosquitto, influx):
    db = f"core_{time.time_ns()}"
    scenario = Scenario.model_validate({
        "sim": {"seed": 3, "site": "core-site", "tick_s": 0.2},
        "modbus_tcp": {"host": "127.0.0.1", "port": free_port()},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "meters": METERS, "parking": BAYS,
    })
    scenario_path = tmp_path / "scenario.toml"
    scenario_path.write_text(tomli_w.dumps(scenario.model_dump(exclude_none=True)))
    cfg = gateway_config(scenario, influx.url, db, str(tmp_path / "data"), status_interval_s=1.0)
    cfg["mqtt"]["client_id"] = f"cgw-core-{time.time_ns()}"
    for d in cfg["devices"]:
        d["pv"] = d["id"] == "a-pv"
    cfg["analytics"] = {"rules": {"fire_lane_minutes": 1 / 60, "clear_after_s": 1.0}}
    cfg["northbound"] = {"topic_prefix": "cgw-test"}
    config = tmp_path / "gateway.toml"
    config.write_text(tomli_w.dumps(cfg))

    northbound: list[dict] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"nb-{time.time_ns()}")
    sub.on_message = lambda c, u, m: northbound.append({"topic": m.topic, **json.loads(m.payload)})
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("cgw-test/#", qos=1)
    sub.loop_start()

    gw_log = tmp_path / "gateway.log"
    # an empty numba cache, as after an install: the gateway's warm-up compiles in two processes,
    # forking from the thread it runs in while the event loop waits
    cache = tmp_path / "numba-cache"
    gw = start(["-m", "gateway.cli", "run", "-c", str(config)], gw_log, env={"NUMBA_CACHE_DIR": str(cache)})
    sim = None
    try:
        wait_for(lambda: "event=mqtt_connected" in gw_log.read_text(), 60, "the gateway (core warm-up, MQTT)")
        sim = start(["-m", "firmware_sim", "--scenario", str(scenario_path), "--served-log", str(tmp_path / "s.jsonl")],
                    tmp_path / "sim.log")
        wait_for(lambda: count(influx, "SELECT energy_import FROM energy_meter WHERE device='a-101'", db) >= 8, 40,
                 "eight polls of a-101")
        park_in_fire_lane(mosquitto.host, mosquitto.port)
        wait_for(lambda: any(n["rule"] == "fire_lane_blocked" for n in northbound), 30,
                 "the fire-lane alert on the northbound topic")
        assert stop(sim) == 0
        assert stop(gw) == 0, gw_log.read_text()[-3000:]
    finally:
        for p in (sim, gw):
            if p is not None and p.poll() is None:
                p.kill()
        sub.loop_stop()
        sub.disconnect()

    log = gw_log.read_text()
    assert "event=core_ready" in log and "event=alert_raised" in log and "rule=fire_lane_blocked" in log
    # every kernel the gateway runs was compiled into the cache (the energy kernels by the child)
    cached = {p.name.split(".")[1].split("-")[0] for p in cache.rglob("*.nbi")}
    assert {"_score_kernel", "_alert_kernel", "_vee_kernel", "_interval_kernel", "_rollup_kernel"} <= cached, cached
    # --- intervals: a meter's 1-minute intervals add up to its counter's delta over the run
    readings = influx.rows("SELECT energy_import FROM energy_meter WHERE device='a-101'", db)
    delta = readings[-1]["energy_import"] - readings[0]["energy_import"]
    intervals = influx.rows("SELECT energy, coverage FROM energy_interval WHERE device='a-101' AND \"interval\"='1m'", db)
    assert intervals, "no energy_interval points"
    assert sum(r["energy"] for r in intervals) == pytest.approx(delta, rel=1e-6, abs=1e-9)
    assert all(r["time"] % (60 * 10**9) == 0 for r in intervals)  # aligned: time = interval start
    # --- roll-ups: the community's 15-minute row nets PV against load
    rollups = influx.rows("SELECT * FROM energy_rollup WHERE scope='community' AND \"interval\"='15m'", db)
    assert rollups
    last = rollups[-1]
    assert last["import"] == pytest.approx(max(last["load"] - last["pv"], 0.0), abs=1e-9)
    assert last["carbon"] == pytest.approx(last["import"] * 0.5306, rel=1e-9)
    assert count(influx, "SELECT * FROM energy_rollup WHERE \"interval\"='1d'", db) >= 1
    # --- alerts: in InfluxDB and on the northbound topic, the same event
    alerts = influx.rows("SELECT * FROM alert WHERE rule='fire_lane_blocked'", db)
    assert alerts and alerts[0]["active"] == 1 and alerts[0]["device"] == FIRE_LANE_EUI
    nb = [n for n in northbound if n["rule"] == "fire_lane_blocked"]
    assert nb[0]["state"] == "raised" and nb[0]["topic"] == "cgw-test/core-site/alerts/a840410001810099/fire_lane_blocked"
    assert nb[0]["time_ns"] == alerts[0]["time"]
    by_state = defaultdict(int)
    for a in alerts:
        by_state[a["active"]] += 1
    assert by_state[1] >= by_state[0]  # raised and cleared in pairs, never a clear without a raise
