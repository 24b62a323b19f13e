"""Injected faults: the ground truth lines up with what the meters really served, and the gateway's
core finds every kind of the catalogue (F1 >= 0.9) with no alert that no fault explains.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.clock import SimClock
from drivers.modbus.poller import BusSettings, ModbusBus, ModbusDevicePoller
from drivers.modbus.profile import load_profiles
from firmware_sim.faults import MeterFault, load_catalogue, write_ground_truth
from firmware_sim.loads import LoadModel
from firmware_sim.modbus_meter import MeterBank, SimMeter, tcp_server
from firmware_sim.register_map import load_register_map
from gateway.devservices import free_port
from tests.conftest import REPO

SIM_T0 = 1_767_571_200.0  # 2026-01-05 00:00 UTC


def test_ground_truth_lines_up_with_what_the_meters_served(tmp_path):
    """Meters with faults served over Modbus TCP on an accelerated clock, polled by the gateway's
    poller; the served log (the devices' raw output) is searched for every labelled fault."""
    at = lambda minutes: SIM_T0 + minutes * 60  # noqa: E731
    faults = [
        MeterFault("m-spike", "spike", at(20), 60, 6.0),  # 200 ms of wall time at x300: several polls
        MeterFault("m-shift", "level_shift", at(20), 1200, 3000.0),
        MeterFault("m-stuck", "stuck", at(20), 1200),
        MeterFault("m-roll", "rollover", at(30), 10, 100000.0),
        MeterFault("m-new", "replacement", at(30), 10),
        MeterFault("m-off", "offline", at(20), 900),
    ]
    truth_path = tmp_path / "truth.jsonl"
    write_ground_truth(str(truth_path), faults)
    clock = SimClock(time.time_ns(), int(SIM_T0 * 1e9), 300.0)  # 5 simulated minutes per wall second
    served: list[dict] = []
    devices = ["m-spike", "m-shift", "m-stuck", "m-roll", "m-new", "m-off"]
    meters = [SimMeter(d, u, load_register_map("sdm120"), LoadModel("household", 2, d), start_kwh=500.0,
                       clock_ns=clock.now_ns, faults=[f for f in faults if f.device == d])
              for u, d in enumerate(devices, 1)]
    port = free_port()
    profile = load_profiles()["sdm120"]

    async def main():
        server = tcp_server(MeterBank(meters, served_log=served.append), "127.0.0.1", port)
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.3)
        bus = ModbusBus(BusSettings("t", "tcp", host="127.0.0.1", port=port, timeout_s=2.0))
        ids = np.arange(len(profile.registers), dtype=np.int32)
        pollers = [ModbusDevicePoller(d, bus, u, profile, ids, 10.0, lambda b, ack=None: None, clock=clock)
                   for u, d in enumerate(devices, 1)]
        runs = [asyncio.create_task(p.run()) for p in pollers]
        while clock.now_ns() < (SIM_T0 + 45 * 60) * 1e9:  # 45 simulated minutes
            await asyncio.sleep(0.1)
        for r in runs:
            r.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        bus.close()
        await server.shutdown()
        task.cancel()

    asyncio.run(main())
    truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
    assert {t["kind"] for t in truth} == {"spike", "level_shift", "stuck", "rollover", "replacement", "offline"}

    def records(device: str) -> list[dict]:
        return [r for r in served if r["device"] == device]

    for t in truth:
        recs = records(t["device"])
        inside = [r for r in recs if t["start_ns"] <= r["t_ns"] < t["end_ns"]]
        before = [r for r in recs if r["t_ns"] < t["start_ns"] and "values" in r]
        after = [r for r in recs if r["t_ns"] >= t["start_ns"] and "values" in r]
        kind = t["kind"]
        if kind == "offline":
            assert inside and all(r.get("offline") for r in inside), "offline: no answer inside the window"
            assert not any(r.get("offline") for r in recs if not t["start_ns"] <= r["t_ns"] < t["end_ns"])
            continue
        assert before and after, kind
        power = lambda rs: np.array([r["values"]["active_power"] for r in rs if "active_power" in r["values"]])  # noqa: E731
        energy = lambda rs: np.array([r["values"]["energy_import"] for r in rs if "energy_import" in r["values"]])  # noqa: E731
        if kind == "spike":
            hit = power(inside)
            assert len(hit) and hit.max() > 4 * np.median(power(before)), "spike not in the served values"
        elif kind == "level_shift":
            assert np.median(power(inside)) - np.median(power(before[-20:])) > 2000
        elif kind == "stuck":
            frozen = [r["values"] for r in inside]
            assert len(frozen) > 3 and all(v == frozen[0] or set(v) != set(frozen[0]) for v in frozen)
            assert len({v["active_power"] for v in frozen if "active_power" in v}) == 1
        elif kind == "rollover":
            e_before, e_after = energy(before), energy(after)
            assert e_before[-1] > t["magnitude"] - 5 and e_after[0] < 5, (e_before[-1], e_after[0])
        elif kind == "replacement":
            assert energy(before)[-1] > 400 and energy(after)[0] < 5


def test_the_core_finds_every_fault_kind_of_the_catalogue():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_accuracy import FAMILY, GRACE_S, score, simulate

    events, truth, stats = simulate(str(REPO / "firmware-sim/scenarios/fault-catalogue.toml"))
    result = score(events, truth)
    cat = load_catalogue(str(REPO / "firmware-sim/scenarios/fault-catalogue.toml"))
    assert {k for k, r in result.items() if r["faults"] >= 3} == set(FAMILY)  # every kind, three times
    assert len(cat.meters) == 12
    for kind, r in result.items():
        assert r["f1"] >= 0.9, (kind, r)
    unexplained = [e for e in events if e.raised and not any(
        e.device == f["device"] and f["start_ns"] <= e.ts_ns <= f["end_ns"] + GRACE_S[f["kind"]] * 10**9
        for f in truth)]
    assert unexplained == []  # the four clean meters and the quiet days raise nothing


def test_catalogue_errors_name_the_fault(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('start = "2026-01-05T00:00:00+08:00"\ndays = 1\npoll_interval_s = 60\n'
                   'meters = [{ device = "a", profile = "sdm120", building = "B" }]\n'
                   'faults = [{ device = "b", kind = "spike", at_h = 1, duration_s = 60 }]\n')
    with pytest.raises(ValueError, match=r"faults\[0\]: device 'b' is not one of the meters"):
        load_catalogue(str(bad))
    bad.write_text(bad.read_text().replace('device = "b", kind = "spike"', 'device = "a", kind = "gremlin"'))
    with pytest.raises(ValueError, match=r"faults\[0\]: unknown kind 'gremlin'"):
        load_catalogue(str(bad))


def test_a_meter_counts_the_same_energy_whatever_its_poll_rate():
    """Regression: requests closer than the integration step used to count a whole step each."""
    t0 = SIM_T0
    fast = SimMeter("x", 1, load_register_map("sdm120"), LoadModel("household", 2, "x"), start_kwh=0.0)
    slow = SimMeter("x", 1, load_register_map("sdm120"), LoadModel("household", 2, "x"), start_kwh=0.0)
    for k in range(0, 361):
        e_fast = fast.values_at(t0 + 5 * k)["energy_import"]
    for k in range(0, 31):
        e_slow = slow.values_at(t0 + 60 * k)["energy_import"]
    assert e_fast == pytest.approx(e_slow, rel=1e-3)
    assert e_fast == pytest.approx(LoadModel("household", 2, "x").energy_kwh(t0, t0 + 1800), rel=1e-3)
