"""Time acceleration: `cgw sim --speed 60` runs an hour a minute from the scenario's start, writes
its clock file, and `cgw run` following it (gateway.sim_clock_file, emitted because of --speed)
stores simulated timestamps spaced by the simulated poll interval; MQTT devices publish at their
simulated rates (a 300 s heartbeat every 5 wall seconds); the simulator stays well within a core.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime

import numpy as np

from drivers.clock import SimClock
from tests.conftest import wait_for
from tests.test_scenario_small import Run, emitted_config, scenario_copy, stored

SPEED = 60.0
START = "2026-01-05T08:00:00+08:00"
START_NS = int(datetime.fromisoformat(START).timestamp() * 1e9)
POLL_S = 60.0
HEARTBEAT_S = 300.0


def realistic_rates(data: dict) -> None:
    """Monitoring rates rather than the small scenario's test rates: a poll a minute, a heartbeat
    every five minutes, a camera report a minute."""
    for m in data["meters"]:
        m["poll_interval_s"] = POLL_S
    for p in data["parking"]:
        p.update(heartbeat_s=HEARTBEAT_S, slot_s=4 * 3600.0)
    for c in data["cameras"]:
        c["report_s"] = 60.0
    for e in data["elevators"]:
        e.update(calls_per_hour=40, status_moving_s=5.0, status_idle_s=60.0)


def test_an_accelerated_run_stores_simulated_time(tmp_path, mosquitto, influx):
    db = f"speed_{time.time_ns()}"
    scenario = scenario_copy("small.toml", tmp_path, mosquitto, realistic_rates)
    cfg = emitted_config(scenario, tmp_path, influx.url, db, "--speed", str(SPEED))
    assert cfg["gateway"]["sim_clock_file"] == str(tmp_path / "sim" / "clock.json")
    cfg["analytics"] = {"enabled": False}
    stats_path = tmp_path / "stats.json"
    run = Run(tmp_path, scenario, cfg, "--speed", str(SPEED), "--start", START, "--stats", str(stats_path))
    try:
        clock = SimClock.from_file(run.clock)  # the gateway's own reader agrees with the simulator's file
        assert clock.speed == SPEED and abs(clock.sim_ns - START_NS) < 10**9

        def polls(device: str) -> int:
            return len(stored(influx, f"SELECT energy_import FROM energy_meter WHERE device='{device}'", db))

        wait_for(lambda: min(polls(d) for d in ("s1-101", "s2-101", "s2-201")) >= 17, 50,
                 "seventeen simulated minutes of polls")
        run.stop_all()
    finally:
        run.kill()
    records = run.records()
    stats = json.loads(stats_path.read_text())
    end_ns = START_NS + int((stats["wall_s"] + 5) * SPEED * 1e9)

    # --- polled meters (TCP, RTU, DL/T 645): simulated stamps, one poll interval apart
    rows = stored(influx, "SELECT energy_import FROM energy_meter GROUP BY device", db)
    by_device = defaultdict(list)
    for r in rows:
        by_device[r["device"]].append(r["time"])
    assert len(by_device) == 8
    for device, times in by_device.items():
        t = np.array(sorted(times))
        assert START_NS <= t[0] and t[-1] <= end_ns, (device, t[0], t[-1])  # not the wall clock's today
        gaps = np.diff(t) / 1e9
        assert abs(np.median(gaps) - POLL_S) < 0.05 * POLL_S, (device, gaps)
        # polls are aligned to the simulated minute and stamped when the answer came, which moves
        # with the wall clock's jitter x60 (100 ms is 6 simulated seconds) and, on a serial line,
        # with the line's time for the poll's requests: one poll per minute, never two, nearly every minute
        minute = t // int(POLL_S * 1e9)
        assert len(set(minute)) == len(minute), (device, gaps)
        assert np.mean(np.diff(minute) == 1) >= 0.8, (device, gaps)
    # the served log says the same: the meters answered in simulated time
    modbus = [r["t_ns"] for r in records if r["kind"] in ("modbus", "dlt645")]
    assert modbus and START_NS <= min(modbus) and max(modbus) <= end_ns

    # --- the clock ran at x60 (the simulator's own wall time includes its startup, before the clock starts)
    sim_elapsed_s = (stats["sim_time_ns"] - START_NS) / 1e9
    assert (stats["wall_s"] - 5) * SPEED <= sim_elapsed_s <= stats["wall_s"] * SPEED, (sim_elapsed_s, stats)

    # --- parking heartbeats every 300 simulated seconds: every 5 wall seconds at x60 (sensors came
    # up at different moments, within a heartbeat of the start)
    beats = defaultdict(list)
    for r in records:
        if r.get("measurement") == "parking_bay" and "temperature" in r["values"]:
            beats[r["device"]].append(r["t_ns"])
    assert len(beats) == 3
    for device, ts in beats.items():
        gaps = np.diff(ts) / 1e9
        assert len(gaps) >= 1 and np.allclose(gaps, HEARTBEAT_S, atol=1e-3), (device, gaps)
    stored_parking = {(r["device"], r["time"]) for r in stored(influx, "SELECT occupied FROM parking_bay GROUP BY *", db)}
    listened = [r for r in records if r.get("measurement") == "parking_bay"
                and r["t_ns"] >= min(t for _, t in stored_parking)]
    assert listened and all((r["device"], r["t_ns"]) in stored_parking for r in listened)

    # --- elevators and cameras stamp simulated time too, stored as sent
    for measurement in ("elevator", "people_counter"):
        got = {(r["device"], r["time"]) for r in stored(influx, f"SELECT * FROM {measurement} GROUP BY *", db)}
        assert got and all(START_NS <= t <= end_ns for _, t in got), measurement
        sent = {(r["device"], r["t_ns"]) for r in records if r.get("measurement") == measurement}
        assert got <= sent, measurement
    reports = sorted(r["t_ns"] for r in records if r.get("measurement") == "people_counter" and r["device"] == "cam-north")
    # a first report when the camera comes up, then one at every simulated minute
    assert len(reports) >= 10 and np.allclose(np.diff(reports[1:]) / 1e9, 60.0, atol=1e-3)

    # --- the simulator kept up within a fraction of one core, and its MQTT devices ran on time
    # (lateness is wall time: what a machine shared with other work adds is not the simulator's)
    assert stats["speed"] == SPEED and stats["wall_s"] > 5
    assert stats["cpu_s"] / stats["wall_s"] < 0.8, stats
    assert stats["mqtt_late"] <= 0.5 * stats["mqtt_fired"] and stats["mqtt_lag_max_s"] < 5.0, stats
