"""The faults scenario run accelerated (`cgw sim --speed 120`) and read by `cgw run`:

* the ground truth the simulator wrote lines up with what the devices really put on the wire:
  every labelled fault of every kind is found in the served log, in its window and nowhere else
  (meter values against the healthy load model, serial-line and MQTT faults by what was sent);
* the gateway raises its safety alerts (trapped passenger, door open while moving, fire lane
  blocked, crowding) for each safety fault of the ground truth, and for nothing else.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime

import numpy as np
import pytest

from drivers.clock import SimClock
from firmware_sim.loads import LoadModel
from firmware_sim.scenario import load_scenario
from tests.conftest import wait_for
from tests.test_scenario_small import SCENARIOS, Run, emitted_config, scenario_copy, stored

SPEED = 120.0
RUN_S = 52 * 60  # simulated seconds: the last fault ends at 48 min
DI_POWER, DI_ENERGY = 0x02030000, 0x00010000
SAFETY_RULES = {"trapped_passenger": "trapped_passenger", "door_open_while_moving": "door_open_while_moving",
                "fire_lane": "fire_lane_blocked", "crowding": "crowding"}
ALERT_GRACE_S = 300.0  # a rule raises after its hold time (fire lane: 5 min) and a rules tick (2 simulated min)


@pytest.fixture(scope="module")
def faults_run(tmp_path_factory, mosquitto, influx):
    tmp = tmp_path_factory.mktemp("faults")
    db = f"faults_{time.time_ns()}"
    scenario_path = scenario_copy("faults.toml", tmp, mosquitto)
    cfg = emitted_config(scenario_path, tmp, influx.url, db, "--speed", str(SPEED))
    cfg["analytics"] = {"write_scores": False}
    run = Run(tmp, scenario_path, cfg, "--speed", str(SPEED), "--stats", str(tmp / "stats.json"))
    try:
        clock = SimClock.from_file(run.clock)
        wait_for(lambda: "event=started" in run.gw_log.read_text(), 30, "the gateway's pollers")
        start_ns = int(load_scenario(SCENARIOS / "faults.toml").sim.start.timestamp() * 1e9)
        ready_after_s = (clock.now_ns() - start_ns) / 1e9
        assert ready_after_s < 9 * 60, f"the gateway took {ready_after_s / 60:.1f} simulated min to start"
        wait_for(lambda: clock.now_ns() >= start_ns + RUN_S * 10**9, RUN_S / SPEED + 30, "the faults' hour")
        run.stop_all(settle_s=2.0)
    finally:
        run.kill()
    truth = [json.loads(line) for line in run.truth.read_text().splitlines()]
    yield {"records": run.records(), "truth": truth, "db": db, "cfg": cfg, "start_ns": start_ns,
           "gateway_log": run.gw_log.read_text(),
           "stats": json.loads((tmp / "stats.json").read_text()), "scenario": load_scenario(scenario_path)}


def inside(t_ns: int, f: dict) -> bool:
    return f["start_ns"] <= t_ns < f["end_ns"]


def test_ground_truth_lines_up_with_what_the_devices_served(faults_run):
    records, truth, scenario = faults_run["records"], faults_run["truth"], faults_run["scenario"]
    kinds = defaultdict(int)
    for f in truth:
        kinds[f["kind"]] += 1
    assert {k for k, n in kinds.items() if n >= 3} == set(SAFETY_RULES) | {
        "spike", "level_shift", "drift", "stuck", "rollover", "replacement", "offline", "crc_error", "garbled",
        "malformed_payload", "clock_skew"}
    assert {f["device_type"] for f in truth} == {"modbus_tcp_meter", "modbus_rtu_meter", "dlt645_meter", "parking",
                                                 "elevator", "camera"}
    # what each meter served: power (W) and energy (kWh) over time, from Modbus values or DL/T 645 DIs
    power, energy = defaultdict(list), defaultdict(list)
    for r in records:
        if r["kind"] == "modbus" and "values" in r:
            if "active_power" in r["values"]:
                power[r["device"]].append((r["t_ns"], r["values"]["active_power"]))
            if "energy_import" in r["values"]:
                energy[r["device"]].append((r["t_ns"], r["values"]["energy_import"]))
        elif r["kind"] == "dlt645" and "value" in r:
            if r["di"] == DI_POWER:
                power[r["device"]].append((r["t_ns"], r["value"] * 1000.0))
            elif r["di"] == DI_ENERGY:
                energy[r["device"]].append((r["t_ns"], r["value"]))
    seed = scenario.sim.seed
    models = {pm.meter.device: LoadModel(pm.meter.kind, seed, pm.meter.device, pm.meter.scale_w)
              for pm in scenario.all_meters()}
    flagged = defaultdict(list)  # (device, flag) -> times the device served with that fault on the wire
    for r in records:
        for flag in ("offline", "malformed", "line_fault", "skew_s"):
            if flag in r:
                key = r["line_fault"] if flag == "line_fault" else flag
                flagged[(r["device"], key)].append(r.get("true_t_ns", r["t_ns"]))
    statuses = defaultdict(list)
    for r in records:
        if r.get("measurement") in ("elevator", "elevator_alarm", "parking_bay", "people_counter"):
            statuses[r["device"]].append(r)

    found = defaultdict(int)
    for f in truth:
        device, kind = f["device"], f["kind"]
        label = f"{kind} on {device}"
        if kind in ("spike", "level_shift", "drift"):
            model = models[device]
            during = [(t, v) for t, v in power[device] if inside(t, f)]
            before = [(t, v) for t, v in power[device] if f["start_ns"] - 600e9 <= t < f["start_ns"]]
            assert during and before, label
            for t, v in before:  # healthy before the fault: exactly the load curve
                assert v == pytest.approx(model.power_w(t / 1e9), rel=1e-4, abs=2.0), label
            for t, v in during:
                healthy = model.power_w(t / 1e9)
                expected = {"spike": healthy * f["magnitude"], "level_shift": healthy + f["magnitude"],
                            "drift": healthy + f["magnitude"] * (t - f["start_ns"]) / 3.6e12}[kind]
                assert v == pytest.approx(expected, rel=1e-4, abs=2.0), (label, t, v, healthy)
        elif kind == "stuck":
            during = [v for t, v in power[device] if inside(t, f)]
            counter = [v for t, v in energy[device] if inside(t, f)]
            assert len(during) >= 3 and len(set(during)) == 1 and len(set(counter)) == 1, (label, during)
            before = [v for t, v in power[device] if f["start_ns"] - 600e9 <= t < f["start_ns"]]
            assert len(set(before)) > 1, label  # it was alive before
        elif kind in ("rollover", "replacement"):
            before = [v for t, v in energy[device] if t < f["start_ns"]]
            after = [v for t, v in energy[device] if t >= f["start_ns"]]
            assert before and after, label
            if kind == "rollover":
                assert before[-1] > f["magnitude"] - 5 and after[0] < 5, (label, before[-1], after[0])
            else:
                assert before[-1] > 40 and after[0] < 1, (label, before[-1], after[0])
        elif kind == "offline" and f["device_type"].endswith("_meter"):
            key = (device, "offline") if f["device_type"] != "dlt645_meter" else (device, "offline")
            times = flagged[key]
            assert times and all(inside(t, f) for t in times), (label, len(times))
            assert not [t for t, _ in power[device] if inside(t, f)], label  # and no value in the window
        elif kind in ("crc_error", "garbled"):
            times = flagged[(device, kind)]
            windows = [g for g in truth if g["device"] == device and g["kind"] == kind]
            assert any(inside(t, f) for t in times), label
            assert all(any(inside(t, g) for g in windows) for t in times), label
        elif kind in ("offline", "malformed_payload", "clock_skew"):
            key = {"offline": "offline", "malformed_payload": "malformed", "clock_skew": "skew_s"}[kind]
            times = flagged[(device, key)]
            assert times and all(inside(t, f) for t in times), (label, len(times))
            if kind == "clock_skew":
                skewed = [r for r in records if r.get("device") == device and "skew_s" in r]
                # lifts and cameras stamp milliseconds: within one of the true time plus the skew
                assert all(abs(r["t_ns"] - r["true_t_ns"] - f["magnitude"] * 3.6e12) < 1e6 for r in skewed), label
        elif kind == "trapped_passenger":
            during = [r["values"] for r in statuses[device] if r["measurement"] == "elevator"
                      and f["start_ns"] + 1e9 <= r["t_ns"] < f["end_ns"]]
            assert len(during) >= 3, label
            assert all((v["moving"], v["in_door_zone"], v["door_state"], v["occupied"]) == (0.0, 0.0, 0.0, 1.0)
                       for v in during), (label, during)
            raised = [r for r in statuses[device] if r["measurement"] == "elevator_alarm" and inside(r["t_ns"], f)
                      and r["tags"]["code"] == "TRAPPED_BETWEEN_FLOORS" and r["values"]["active"] == 1.0]
            assert raised, f"{label}: the monitor raised no TRAPPED_BETWEEN_FLOORS"
        elif kind == "door_open_while_moving":
            during = [r["values"] for r in statuses[device] if r["measurement"] == "elevator" and inside(r["t_ns"], f)]
            assert len(during) >= 2 and all(v["moving"] == 1.0 and v["door_state"] == 1.0 for v in during), label
        elif kind == "fire_lane":
            during = [r["values"]["occupied"] for r in statuses[device] if inside(r["t_ns"], f)]
            assert len(during) >= 3 and set(during) == {1.0}, (label, during)
        elif kind == "crowding":
            reports = sorted((r["t_ns"], r["values"]["in_total"]) for r in statuses[device]
                             if r["measurement"] == "people_counter")
            rates = [(b[1] - a[1]) * 60e9 / (b[0] - a[0]) for a, b in zip(reports, reports[1:])
                     if inside(a[0], f) and inside(b[0], f) and b[1] >= a[1]]
            assert len(rates) >= 3 and np.median(rates) > 0.6 * f["magnitude"], (label, rates)
        else:
            raise AssertionError(f"no check for {label}")
        found[kind] += 1
    assert found == kinds  # every labelled fault was found where the ground truth says


def test_the_gateway_raises_the_safety_alerts_of_the_ground_truth(faults_run, influx):
    truth, db = faults_run["truth"], faults_run["db"]
    raised = [a for a in stored(influx, "SELECT * FROM alert WHERE active = 1 GROUP BY *", db)]
    assert raised, "no alerts at all"
    safety = [f for f in truth if f["kind"] in SAFETY_RULES]
    assert len(safety) == 12
    for f in safety:
        hits = [a for a in raised if a["device"] == f["device"] and a["rule"] == SAFETY_RULES[f["kind"]]
                and f["start_ns"] <= a["time"] <= f["end_ns"] + ALERT_GRACE_S * 1e9]
        assert hits, f"no {SAFETY_RULES[f['kind']]} alert for {f['kind']} on {f['device']} at {f['start_ns']}"
        if f["kind"] == "trapped_passenger":
            assert any(a["device"] == f["device"] and a["rule"] == "stopped_outside_landing" for a in raised)
    # and no safety alert that no fault explains
    for a in raised:
        kinds = [k for k, rule in SAFETY_RULES.items() if rule == a["rule"]]
        if not kinds:
            continue
        assert any(f["device"] == a["device"] and f["kind"] == kinds[0]
                   and f["start_ns"] <= a["time"] <= f["end_ns"] + ALERT_GRACE_S * 1e9 for f in truth), a
    # the MQTT faults reached the gateway as what they are: payloads it could not decode, clocks it refused
    log = faults_run["gateway_log"]
    assert "error=malformed_json" in log and "error=clock_skew" in log
    assert all(f"device={d} error=clock_skew" in log for d in ("a840410001830002", "cam-b"))  # ahead: dropped
    stats = faults_run["stats"]
    assert stats["cpu_s"] / stats["wall_s"] < 0.8, stats  # the simulator within one core at x120


def test_the_ground_truth_is_the_same_for_the_same_seed(tmp_path):
    """Deterministic: the faults, the lifts' windows and their order do not depend on the run."""
    from firmware_sim.runner import Simulation

    scenario = load_scenario(SCENARIOS / "faults.toml")
    start = datetime.fromisoformat("2026-03-02T07:00:00+08:00").timestamp()
    a = [f.ground_truth() for f in Simulation(scenario, start_s=start, sim_dir=tmp_path / "a").ground_truth()]
    b = [f.ground_truth() for f in Simulation(scenario, start_s=start, sim_dir=tmp_path / "b").ground_truth()]
    assert a == b and len(a) == len(scenario.faults)
