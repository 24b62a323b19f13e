"""One `cgw sim --scenario small.toml` run read by `cgw run` with the configuration the simulator
emitted: every device type through its real protocol (Modbus TCP, Modbus RTU and DL/T 645 over the
simulator's own socat ptys, ChirpStack parking uplinks, elevator monitors and cameras over MQTT),
and every value stored in InfluxDB equal to what the devices served (their served log).

Also the helpers the other scenario tests share: a shipped scenario pointed at private services,
the emitted gateway configuration, and the two processes started in the right order.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Callable

import pytest
import tomli_w

from drivers.dlt645.identifiers import BY_FIELD
from gateway.devservices import free_port
from tests.conftest import REPO, wait_for
from tests.test_end_to_end import start, stop

SCENARIOS = REPO / "firmware-sim" / "scenarios"


def scenario_copy(name: str, tmp_path: Path, mosquitto=None, edit: Callable[[dict], None] | None = None) -> Path:
    """A shipped scenario with its ports, broker and data dir moved to this test's."""
    data = tomllib.loads((SCENARIOS / name).read_text())
    data.setdefault("sim", {})["data_dir"] = str(tmp_path / "sim")
    if "modbus_tcp" in data:
        data["modbus_tcp"]["port"] = free_port()
    if mosquitto is not None:
        data["mqtt"] = {"host": mosquitto.host, "port": mosquitto.port}
    if edit is not None:
        edit(data)
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def emitted_config(scenario: Path, tmp_path: Path, influx_url: str, db: str, *args: str) -> dict:
    """What `cgw sim --emit-config` writes for the scenario, with a client id and status period for tests."""
    out = tmp_path / "emitted.toml"
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", "--scenario", str(scenario), "--emit-config",
                        str(out), "--influx-url", influx_url, "--database", db, "--data-dir", str(tmp_path / "gw-data"),
                        *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = tomllib.loads(out.read_text())
    if "mqtt" in cfg:
        cfg["mqtt"]["client_id"] = f"cgw-{tmp_path.name[-20:]}-{time.time_ns() % 10**9}"
    cfg["gateway"]["status_interval_s"] = 1.0
    return cfg


class Run:
    """firmware-sim first (it makes the ptys and the clock file), then the gateway; both stopped after."""

    def __init__(self, tmp_path: Path, scenario: Path, cfg: dict, *sim_args: str) -> None:
        self.tmp = tmp_path
        self.served = tmp_path / "served.jsonl"
        self.truth = tmp_path / "truth.jsonl"
        self.sim_log = tmp_path / "sim.log"
        self.gw_log = tmp_path / "gateway.log"
        self.clock = tmp_path / "sim" / "clock.json"
        self.sim = start(["-m", "gateway.cli", "sim", "--scenario", str(scenario), "--served-log", str(self.served),
                          "--ground-truth", str(self.truth), *sim_args], self.sim_log)
        self.gw = None
        try:
            # logged once every server listens (and the clock file, if any, is written)
            wait_for(lambda: "simulation started" in self.sim_log.read_text() or self.sim.poll() is not None, 60,
                     "the simulator to start")
            assert self.sim.poll() is None, self.sim_log.read_text()[-3000:]
            config = tmp_path / "gateway.toml"
            config.write_text(tomli_w.dumps(cfg))
            self.gw = start(["-m", "gateway.cli", "run", "-c", str(config)], self.gw_log)
            if "mqtt" in cfg:
                wait_for(lambda: "event=mqtt_connected" in self.gw_log.read_text() or self.gw.poll() is not None, 60,
                         "the gateway's MQTT subscription")
            assert self.gw.poll() is None, self.gw_log.read_text()[-3000:]
        except BaseException:
            self.kill()
            raise

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.served.read_text().splitlines() if line.strip()]

    def stop_all(self, settle_s: float = 1.5) -> None:
        assert stop(self.sim) == 0, self.sim_log.read_text()[-3000:]
        time.sleep(settle_s)  # the last polls and uplinks on their way to the outbox
        assert stop(self.gw) == 0, self.gw_log.read_text()[-3000:]

    def kill(self) -> None:
        for p in (self.gw, self.sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)


def stored(influx, q: str, db: str) -> list[dict]:
    try:
        return influx.rows(q, db)
    except AssertionError:  # the sink creates the database with its first delivery
        return []


def test_every_device_type_of_the_small_scenario_lands_in_influxdb_as_served(tmp_path, mosquitto, influx):
    db = f"small_{time.time_ns()}"
    scenario = scenario_copy("small.toml", tmp_path, mosquitto)
    cfg = emitted_config(scenario, tmp_path, influx.url, db)
    cfg["analytics"] = {"enabled": False}  # this test is about the data path; the core has its own
    buses = {b["name"]: b for b in cfg["buses"]}
    assert buses["rs485-rtu"]["type"] == "modbus_rtu" and buses["rs485-dlt645"]["type"] == "dlt645_serial"
    assert buses["rs485-rtu"]["device"] == str(tmp_path / "sim" / "rs485-rtu.gateway")
    assert {d["id"]: d.get("pv", False) for d in cfg["devices"]}["s1-pv"] is True
    assert "sim_clock_file" not in cfg["gateway"]  # speed 1 from now: the system clock is the devices' clock

    run = Run(tmp_path, scenario, cfg)
    try:
        def polls(device: str) -> int:
            return len(stored(influx, f"SELECT energy_import FROM energy_meter WHERE device='{device}'", db))

        wait_for(lambda: all(polls(d) >= 4 for d in ("s1-101", "s1-102", "s1-common", "s1-pv", "s2-101",
                                                      "s2-common", "s2-201", "s2-202")), 60,
                 "four polls of every meter (TCP, RTU, DL/T 645)")
        wait_for(lambda: len(stored(influx, "SELECT in_total FROM people_counter", db)) >= 4, 30, "camera reports")
        # sensors come up at spread-out moments within their first heartbeat: three uplinks from each
        wait_for(lambda: len(stored(influx, "SELECT occupied FROM parking_bay", db)) >= 9, 30, "parking uplinks")
        run.stop_all()
    finally:
        run.kill()
    records = run.records()
    assert "event=payload_dropped" not in run.gw_log.read_text(), "the simulated devices' messages must decode"

    # --- Modbus TCP and RTU: every stored value was served to that meter within the poll before it
    served_modbus: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["kind"] == "modbus":
            for field, value in r["values"].items():
                served_modbus[(r["device"], field)].append((r["t_ns"], value))
    rows = stored(influx, "SELECT * FROM energy_meter GROUP BY *", db)
    profiles = {d["id"]: d.get("profile") for d in cfg["devices"]}
    checked = defaultdict(int)
    for row in rows:
        if row["model"] == "dlt645":
            continue
        assert row["model"] == profiles[row["device"]] and row["site"] == "small-community"
        for field, value in row.items():
            if field in ("time", "site", "building", "device", "model") or value is None:
                continue
            candidates = [v for t, v in served_modbus[(row["device"], field)] if row["time"] - 3e9 <= t <= row["time"]]
            assert value in candidates, f"{row['device']}.{field}={value!r} at {row['time']} not among {candidates}"
            checked[row["device"]] += 1
    assert set(checked) == {"s1-101", "s1-102", "s1-common", "s1-pv", "s2-101", "s2-common"}
    assert min(checked.values()) >= 4 * 8

    # --- DL/T 645: each field's stored values are exactly what the meter put on the wire, in order
    fields = {d["id"]: d["fields"] for d in cfg["devices"] if "address" in d}
    for device, wanted in fields.items():
        dlt_rows = [r for r in rows if r["device"] == device]
        assert len(dlt_rows) >= 4 and {r["model"] for r in dlt_rows} == {"dlt645"}
        for field in wanted:
            row = BY_FIELD[field]
            wire = [r["value"] * row.to_field for r in records
                    if r["kind"] == "dlt645" and r.get("device") == device and r["di"] == row.di]
            values = [r[field] for r in dlt_rows]
            assert values == pytest.approx(wire[: len(values)], rel=1e-12, abs=1e-9), (device, field)
            assert len(wire) - len(values) <= 1, (device, field)  # a poll cut by the stop may be missing

    # --- MQTT devices: everything published once the gateway listened is stored, same time and values
    measurement_of = {"parking_bay": "parking_bay", "elevator": "elevator", "people_counter": "people_counter"}
    for measurement in measurement_of:
        got = {(r["device"], r["time"]): r for r in stored(influx, f"SELECT * FROM {measurement} GROUP BY *", db)}
        sent = [r for r in records if r["kind"] == "mqtt" and r.get("measurement") == measurement]
        first = {}
        for device, t in got:
            first[device] = min(first.get(device, t), t)
        assert len(first) == {"parking_bay": 3, "elevator": 2, "people_counter": 2}[measurement], measurement
        listened = [r for r in sent if r["device"] in first and r["t_ns"] >= first[r["device"]]]
        assert len(listened) >= 2 * len(first), measurement
        for r in listened:
            row = got.get((r["device"], r["t_ns"]))
            assert row is not None, f"{measurement} {r} missing from InfluxDB"
            for field, value in r["values"].items():
                assert row[field] == value, (measurement, field, r, row)
            for tag, value in r["tags"].items():
                assert row[tag] == value, (measurement, tag, r, row)
