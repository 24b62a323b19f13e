"""The whole path against real services: firmware-sim devices -> `cgw run` -> private influxd.

Values, tags and timestamps stored in InfluxDB are compared with what the simulated devices
actually put on the wire (firmware-sim's served log), exactly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import tomli_w

from firmware_sim.scenario import Scenario, gateway_config
from gateway.devservices import free_port
from tests.conftest import REPO, wait_for

POLL_S = 1.0
METERS = [
    {"device": "b1-101", "unit_id": 1, "profile": "sdm630", "building": "B1", "start_kwh": 1520.25,
     "poll_interval_s": POLL_S},
    {"device": "b1-102", "unit_id": 2, "profile": "sdm120", "building": "B1", "start_kwh": 88.5,
     "poll_interval_s": POLL_S},
    {"device": "b2-common", "unit_id": 7, "profile": "dtsu666", "building": "B2", "kind": "common",
     "start_kwh": 20411.0, "poll_interval_s": POLL_S},
]
SENSORS = [
    {"dev_eui": "a840410001810001", "bay": "P-001", "heartbeat_s": 1.5, "slot_s": 2.0},
    {"dev_eui": "a840410001810002", "bay": "FL-001", "zone": "fire_lane", "heartbeat_s": 1.5, "slot_s": 2.0},
]


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=None if env is None else {**os.environ, **env})


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            time.sleep(1)
            proc.kill()
            proc.wait(5)
            raise AssertionError("process did not exit within %.0fs of SIGTERM" % timeout)
    return proc.returncode


@pytest.fixture
def community(tmp_path, mosquitto, influx):
    """A small community running: returns (paths, database, processes) and stops them after."""
    database = f"e2e_{time.time_ns()}"
    scenario = Scenario.model_validate({
        "sim": {"seed": 7, "site": "test-community", "tick_s": 0.2},
        "modbus_tcp": {"host": "127.0.0.1", "port": free_port()},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "meters": METERS, "parking": SENSORS,
    })
    scenario_path = tmp_path / "scenario.toml"
    scenario_path.write_text(tomli_w.dumps(scenario.model_dump(exclude_none=True)))
    cfg = gateway_config(scenario, influx.url, database, str(tmp_path / "data"), status_interval_s=1.0)
    cfg["mqtt"]["client_id"] = f"cgw-e2e-{time.time_ns()}"
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(tomli_w.dumps(cfg))
    served = tmp_path / "served.jsonl"
    procs: list[subprocess.Popen] = []
    ctx = {"tmp": tmp_path, "db": database, "config": config_path, "served": served, "procs": procs,
           "gw_log": tmp_path / "gateway.log"}
    # the gateway first, so that its MQTT subscription exists before the sensors publish
    ctx["gw"] = start(["-m", "gateway.cli", "run", "-c", str(config_path)], ctx["gw_log"])
    procs.append(ctx["gw"])
    wait_for(lambda: "event=mqtt_connected" in ctx["gw_log"].read_text(), 30, "the gateway's MQTT subscription")
    ctx["sim"] = start(["-m", "firmware_sim", "--scenario", str(scenario_path), "--served-log", str(served)],
                       tmp_path / "sim.log")
    procs.append(ctx["sim"])
    yield ctx
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def served_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_readings_land_in_influxdb_exactly_as_served(community, influx):
    ctx = community
    db = ctx["db"]
    wait_for(lambda: len(influx.rows("SELECT energy_import FROM energy_meter", db)) >= 3 * 5, 40,
             "five polls of each meter in InfluxDB")
    wait_for(lambda: len(influx.rows("SELECT occupied FROM parking_bay", db)) >= 6, 30,
             "parking uplinks in InfluxDB")
    assert stop(ctx["sim"]) == 0
    time.sleep(1.5)  # let the last polls and uplinks reach the outbox
    assert stop(ctx["gw"]) == 0, ctx["gw_log"].read_text()[-3000:]
    records = served_records(ctx["served"])

    # --- Modbus meters: every stored value equals a value served to that device within the poll period
    served_modbus: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["kind"] == "modbus":
            for field, value in r["values"].items():
                served_modbus[(r["device"], field)].append((r["t_ns"], value))
    rows = influx.rows("SELECT * FROM energy_meter GROUP BY *", db)
    assert rows, "no energy_meter points stored"
    checked = 0
    by_device = {m["device"]: m for m in METERS}
    for row in rows:
        m = by_device[row["device"]]
        assert row["site"] == "test-community"
        assert row["building"] == m["building"]
        assert row["model"] == m["profile"]
        ts = row["time"]
        for field, value in row.items():
            if field in ("time", "site", "building", "device", "model") or value is None:
                continue
            candidates = [v for t, v in served_modbus[(row["device"], field)] if ts - POLL_S * 1e9 <= t <= ts]
            assert candidates, f"{row['device']}.{field} at {ts}: nothing was served in the poll period before"
            assert value in candidates, f"{row['device']}.{field}={value!r} not among served {candidates}"
            checked += 1
    assert checked >= 3 * 5 * 10
    # polls are aligned to the interval and stamped when the answer arrived
    for device in by_device:
        times = sorted({r["time"] for r in rows if r["device"] == device})
        assert len(times) >= 5
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(0.5e9 < g < 2.5e9 for g in gaps), gaps
    # the counter is the meter's: it starts where the scenario put it and never goes back
    imports = [r["energy_import"] for r in sorted(rows, key=lambda r: r["time"]) if r["device"] == "b1-101"]
    assert imports[0] >= 1520.25 and imports == sorted(imports)

    # --- Parking sensors: every uplink published while the gateway listened is stored, same time and value
    uplinks = [r for r in records if r["kind"] == "mqtt"]
    assert len(uplinks) >= 6
    stored = {(r["device"], r["time"]): r for r in influx.rows("SELECT * FROM parking_bay GROUP BY *", db)}
    for u in uplinks:
        row = stored.get((u["device"], u["t_ns"]))
        assert row is not None, f"uplink {u} missing from InfluxDB"
        assert row["occupied"] == int(u["values"]["occupied"])
        if "temperature" in u["values"]:
            assert row["temperature"] == u["values"]["temperature"]
        sensor = next(s for s in SENSORS if s["dev_eui"] == u["device"])
        assert row["bay"] == sensor["bay"] and row["zone"] == sensor.get("zone", "general")
        assert row["site"] == "test-community"
        assert -100 <= row["rssi"] <= -70
    assert len(stored) == len(uplinks)


def test_sigterm_loses_nothing_already_read(community, influx):
    ctx = community
    db = ctx["db"]
    wait_for(lambda: len(influx.rows("SELECT energy_import FROM energy_meter", db)) >= 6, 40, "polls in InfluxDB")
    time.sleep(0.7)  # stop in the middle of the flow, with readings buffered and not yet committed
    t0 = time.monotonic()
    assert stop(ctx["gw"]) == 0
    assert time.monotonic() - t0 < 8, "shutdown took too long"
    stop(ctx["sim"])
    log = ctx["gw_log"].read_text()
    stopped = [line for line in log.splitlines() if "event=stopped" in line]
    assert stopped, log[-2000:]
    fields = dict(kv.split("=", 1) for kv in stopped[-1].split() if "=" in kv)
    read = int(fields["readings_total"])
    # every value the gateway read is in InfluxDB: meters' fields, parking fields and health
    total = 0
    for meas in ("energy_meter", "parking_bay", "device_health"):
        for s in influx.query(f"SELECT count(*) FROM {meas}", db):
            total += sum(v for v in s["values"][0][1:] if isinstance(v, int))
    assert read > 50
    assert total == read, f"gateway read {read} values, InfluxDB holds {total}"
