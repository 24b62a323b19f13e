"""Following firmware-sim's accelerated clock: polls scheduled and stamped in simulated time."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from drivers.clock import SimClock
from drivers.modbus.poller import BusSettings, ModbusBus, ModbusDevicePoller
from drivers.modbus.profile import load_profiles
from firmware_sim.loads import LoadModel
from firmware_sim.modbus_meter import MeterBank, SimMeter, tcp_server
from firmware_sim.register_map import load_register_map
from gateway.devservices import free_port

SIM_T0 = 1_767_225_600 * 10**9  # 2026-01-01 00:00 UTC


def test_clock_file_round_trip_and_errors(tmp_path):
    c = SimClock(time.time_ns(), SIM_T0, 60.0)
    c.write(tmp_path / "clock.json")
    d = SimClock.from_file(tmp_path / "clock.json")
    assert (d.wall_ns, d.sim_ns, d.speed) == (c.wall_ns, c.sim_ns, 60.0)
    assert abs(d.now_ns() - SIM_T0) < 60 * 10**9  # a minute of sim time per wall second, at most
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a simulator clock file"):
        SimClock.from_file(tmp_path / "bad.json")
    with pytest.raises(TimeoutError, match="is firmware-sim running"):
        SimClock.from_file(tmp_path / "missing.json", wait_s=0.2)


def test_polls_follow_simulated_time():
    clock = SimClock(time.time_ns(), SIM_T0, 100.0)  # 100 simulated seconds per wall second
    meter = SimMeter("m", 1, load_register_map("sdm120"), LoadModel("household", 1, "m"), start_kwh=5.0,
                     clock_ns=clock.now_ns)
    port = free_port()
    profile = load_profiles()["sdm120"]

    async def main():
        server = tcp_server(MeterBank([meter]), "127.0.0.1", port)
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.3)
        out: list = []
        bus = ModbusBus(BusSettings("t", "tcp", host="127.0.0.1", port=port))
        p = ModbusDevicePoller("m", bus, 1, profile, np.arange(len(profile.registers), dtype=np.int32), 5.0,
                               lambda b, ack=None: out.append(b), clock=clock)
        run = asyncio.create_task(p.run())
        await asyncio.sleep(1.0)  # 100 simulated seconds: about 20 polls of a 5 s device
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        bus.close()
        await server.shutdown()
        task.cancel()
        return out

    out = asyncio.run(main())
    assert 12 <= len(out) <= 22, len(out)
    ts = np.array([b.ts_ns[0] for b in out])
    assert (ts >= SIM_T0).all() and (ts < SIM_T0 + 200 * 10**9).all()  # simulated time, not the wall clock
    # every 5 simulated seconds (a wall-clock hiccup of a few ms is a few hundred simulated ms here)
    assert np.median(np.diff(ts)) == pytest.approx(5e9, rel=0.1)
    energy = np.array([b.value[list(r.field for r in profile.registers).index("energy_import")] for b in out])
    assert np.all(np.diff(energy) >= 0) and energy[-1] > energy[0]  # the meter's counter moves in sim time too
