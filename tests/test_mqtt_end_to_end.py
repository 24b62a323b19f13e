"""Elevator monitors and people-counting cameras over a real broker: firmware-sim -> `cgw run` -> influxd.

Every status, alarm event and counter report firmware-sim published (its served log) is in
InfluxDB with the same timestamp, tags and values; interval counts are recomputed here from the
served totals, independently of the decoder, including the resets of a camera that reboots.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict

import tomli_w

from firmware_sim.scenario import Scenario, gateway_config
from tests.conftest import wait_for
from tests.test_end_to_end import start, stop

FAST_LIFT = {"lowest_floor": 1, "top_floor": 6, "lobby_floor": 1, "rated_speed_mps": 1.75, "door_open_s": 1.0,
             "door_dwell_s": 1.0, "door_close_s": 1.0, "calls_per_hour": 3600, "status_moving_s": 1.0,
             "status_idle_s": 2.0}
ELEVATORS = [
    # every trip of this one has a fault, with timers short enough to raise and clear in the test
    {"elevator_id": "B1-L1", "building": "B1", **FAST_LIFT, "fault_probability": 1.0, "outside_zone_alarm_s": 1.0,
     "trapped_alarm_s": 2.0, "rescue_s": 4.0},
    {"elevator_id": "B2-L1", "building": "B2", **FAST_LIFT, "fault_probability": 0.0},
]
CAMERAS = [
    {"device": "cam-north", "gate": "north-gate", "report_s": 1.0, "slot_s": 1.0, "peak_per_min": 120,
     "reboot_interval_s": 5.0},
    {"device": "cam-south", "gate": "south-gate", "report_s": 1.0, "slot_s": 1.0, "peak_per_min": 60},
]


def test_elevators_and_cameras_land_in_influxdb_exactly_as_served(tmp_path, mosquitto, influx):
    db = f"mqtt_e2e_{time.time_ns()}"
    scenario = Scenario.model_validate({
        "sim": {"seed": 11, "site": "lift-community", "tick_s": 0.2},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "elevators": ELEVATORS, "cameras": CAMERAS,
    })
    scenario_path = tmp_path / "scenario.toml"
    scenario_path.write_text(tomli_w.dumps(scenario.model_dump(exclude_none=True)))
    cfg = gateway_config(scenario, influx.url, db, str(tmp_path / "data"), status_interval_s=1.0)
    cfg["mqtt"]["client_id"] = f"cgw-mqtt-e2e-{time.time_ns()}"
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(tomli_w.dumps(cfg))
    served_path, gw_log = tmp_path / "served.jsonl", tmp_path / "gateway.log"
    gw = start(["-m", "gateway.cli", "run", "-c", str(config_path)], gw_log)
    sim = None
    try:
        wait_for(lambda: "event=mqtt_connected" in gw_log.read_text(), 30, "the gateway's MQTT subscription")
        sim = start(["-m", "firmware_sim", "--scenario", str(scenario_path), "--served-log", str(served_path)],
                    tmp_path / "sim.log")

        def found(query: str) -> int:
            try:
                return len(influx.rows(query, db))
            except AssertionError:  # the gateway has not created the database yet
                return 0

        wait_for(lambda: found("SELECT * FROM elevator_alarm WHERE active = 0"), 60, "an alarm raised and cleared")
        wait_for(lambda: found("SELECT resets FROM people_counter WHERE resets = 1"), 30,
                 "a camera reboot seen as a counter reset")
        # enough reports per camera for the checks below, however fast the events above came
        wait_for(lambda: min(found(f"SELECT in_total FROM people_counter WHERE device = '{d}'")
                             for d in ("cam-north", "cam-south")) >= 9, 60, "nine reports of each camera")
        assert stop(sim) == 0
        records = [json.loads(line) for line in served_path.read_text().splitlines() if line.strip()]
        served = {m: sum(1 for r in records if r["measurement"] == m)
                  for m in ("elevator", "elevator_alarm", "people_counter")}
        # QoS 1 deliveries are paced by the outbox commits that acknowledge them: wait for the last ones
        wait_for(lambda: all(found(f"SELECT * FROM {m}") >= n for m, n in served.items()), 30,
                 f"the gateway to store what firmware-sim served ({served})")
        assert stop(gw) == 0, gw_log.read_text()[-3000:]
    finally:
        for p in (sim, gw):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
    log = gw_log.read_text()
    assert "event=payload_dropped" not in log, "the simulated devices' messages must decode cleanly"

    # --- elevator status: one row per status, every value as served
    statuses = [r for r in records if r["measurement"] == "elevator"]
    rows = {(r["device"], r["time"]): r for r in influx.rows("SELECT * FROM elevator GROUP BY *", db)}
    assert len(statuses) >= 10
    assert len(rows) == len(statuses), f"{len(rows)} rows stored for {len(statuses)} statuses served"
    for s in statuses:
        row = rows[(s["device"], s["t_ns"])]
        assert row["site"] == "lift-community" and row["building"] == s["tags"]["building"]
        assert {k: row[k] for k in s["values"]} == s["values"], s
    assert {r["device"] for r in statuses} == {"B1-L1", "B2-L1"}

    # --- alarms: every raise and clear, with the car's floor and occupancy at that moment
    events = [r for r in records if r["measurement"] == "elevator_alarm"]
    alarms = {(r["device"], r["code"], r["time"]): r for r in influx.rows("SELECT * FROM elevator_alarm GROUP BY *", db)}
    assert len(alarms) == len(events), "the decoder wrote alarm points the monitor never sent"
    for e in events:
        row = alarms[(e["device"], e["tags"]["code"], e["t_ns"])]
        assert {k: row[k] for k in e["values"]} == e["values"]
    assert {e["device"] for e in events} == {"B1-L1"}
    assert {e["values"]["active"] for e in events} == {0.0, 1.0}

    # --- cameras: totals as served; interval counts recomputed here from consecutive totals
    stored = {(r["device"], r["time"]): r for r in influx.rows("SELECT * FROM people_counter GROUP BY *", db)}
    reports = defaultdict(list)
    for r in records:
        if r["measurement"] == "people_counter":
            reports[r["device"]].append(r)
    assert set(reports) == {"cam-north", "cam-south"}
    resets_seen = 0
    for device, seq in reports.items():
        assert len(seq) >= 8
        previous = None
        for r in seq:
            row = stored[(device, r["t_ns"])]
            enter, exit_ = r["values"]["in_total"], r["values"]["out_total"]
            assert (row["in_total"], row["out_total"], row["net_total"]) == (enter, exit_, enter - exit_)
            assert row["gate"] == r["tags"]["gate"]
            if previous is None:
                assert row["in_count"] is None  # no baseline yet: no interval invented
            else:
                reset = enter < previous[0] or exit_ < previous[1]
                expected = (enter, exit_) if reset else (enter - previous[0], exit_ - previous[1])
                assert (row["in_count"], row["out_count"], row["resets"]) == (*expected, int(reset)), (device, r)
                assert row["net_count"] == expected[0] - expected[1]
                resets_seen += reset
            previous = (enter, exit_)
    assert resets_seen >= 1
    assert len(stored) == sum(len(s) for s in reports.values())

    # --- and the gateway reports every MQTT device healthy, without decode errors
    health = influx.rows("SELECT last(errors) AS errors, last(online) AS online FROM device_health "
                         "WHERE driver = 'mqtt' GROUP BY device", db)
    assert {h["device"]: (h["online"], h["errors"]) for h in health} == {
        d: (1, 0) for d in ("B1-L1", "B2-L1", "cam-north", "cam-south")}
