"""Modbus TCP against code nobody here wrote, and the scheduling rules.

- ``mbpoll`` (Debian) reads a firmware-sim meter and gets the same words and values as our poller;
- our poller reads pymodbus' own server, whose registers pymodbus itself encoded;
- requests in flight to one host stay within its limit, across ports;
- a dead device never delays the others, and a TCP link that dies comes back by itself.
"""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.poller import BusSettings, HostLimits, ModbusBus, ModbusDevicePoller
from drivers.modbus.profile import load_profiles, parse_profile
from firmware_sim.loads import LoadModel
from firmware_sim.modbus_meter import MeterBank, SimMeter, tcp_server
from firmware_sim.register_map import load_register_map
from gateway.devservices import free_port

PROFILES = load_profiles()
FROZEN_NS = 1_700_000_123_000_000_000


def frozen_meter(device: str, unit: int, model: str) -> SimMeter:
    return SimMeter(device, unit, load_register_map(model), LoadModel("household", 3, device), start_kwh=4321.5,
                    clock_ns=lambda: FROZEN_NS)


async def serving(server):
    task = asyncio.create_task(server.serve_forever())
    for _ in range(100):
        await asyncio.sleep(0.02)
        if server.transport is not None:
            break
    return task


async def stop(server, task):
    await server.shutdown()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def collect(out: list):
    return lambda batch, ack=None: out.append(batch)


def mbpoll(*args: str) -> str:
    path = shutil.which("mbpoll")
    if path is None:
        pytest.fail("mbpoll not found: install it with `apt-get install mbpoll`", pytrace=False)
    r = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def mbpoll_values(out: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\[(\d+)\]:\s+(\S+)", out, re.M)}


def test_mbpoll_reads_what_our_poller_reads():
    meter = frozen_meter("mb-1", 5, "sdm630")
    profile = PROFILES["sdm630"]
    port = free_port()

    async def ours():
        server = tcp_server(MeterBank([meter]), "127.0.0.1", port)
        task = await serving(server)
        bus = ModbusBus(BusSettings("t", "tcp", host="127.0.0.1", port=port))
        out: list = []
        p = ModbusDevicePoller("mb-1", bus, 5, profile, np.arange(len(profile.registers), dtype=np.int32), 1.0,
                               collect(out))
        words = [await bus.read_block(5, b) for b in p.blocks]
        assert await p.poll_and_emit()
        bus.close()
        # mbpoll runs while the same server is up
        loop = asyncio.get_running_loop()
        theirs = []
        for b in p.blocks:
            hex_out = await loop.run_in_executor(None, lambda b=b: mbpoll(
                "-m", "tcp", "-p", str(port), "-a", "5", "-t", "3:hex", "-0", "-r", str(b.address),
                "-c", str(b.count), "-1", "127.0.0.1"))
            theirs.append(hex_out)
        floats = await loop.run_in_executor(None, lambda: mbpoll(
            "-m", "tcp", "-p", str(port), "-a", "5", "-t", "3:float", "-B", "-0", "-r", "0", "-c", "9", "-1",
            "127.0.0.1"))
        await stop(server, task)
        return p, words, out[0], theirs, floats

    p, words, batch, theirs, floats = asyncio.run(ours())
    for block, mine, text in zip(p.blocks, words, theirs):
        got = mbpoll_values(text)
        assert len(got) == block.count
        assert [int(got[block.address + i], 16) for i in range(block.count)] == mine.tolist()
    # decoded: mbpoll prints six significant digits
    by_address = {r.address: v for r, v in zip(profile.registers, batch.value)}
    for address, text in mbpoll_values(floats).items():
        if address in by_address:
            assert float(text) == pytest.approx(by_address[address], rel=5e-6), address


def test_our_decoder_reads_pymodbus_own_server():
    """pymodbus encodes the values (its typed SimData and convert_to_registers); we decode them."""
    encode = AsyncModbusTcpClient.convert_to_registers
    T = AsyncModbusTcpClient.DATATYPE
    values = {"frequency": 49.98, "voltage_l1": -17, "voltage_l2": 51234, "current_l1": -123456,
              "current_l2": 3_000_000_000, "energy_import": 123456.789012, "energy_export": -9_000_000_000_123,
              "active_power": 1234.5, "energy_total": 98765.4321}
    holding = [
        SimData(0, values=[49.98], datatype=DataType.FLOAT32),
        SimData(2, values=[-17], datatype=DataType.INT16),
        SimData(3, values=[51234], datatype=DataType.UINT16),
        SimData(4, values=[-123456], datatype=DataType.INT32),
        SimData(6, values=[3_000_000_000], datatype=DataType.UINT32),
        SimData(8, values=[123456.789012], datatype=DataType.FLOAT64),
        SimData(12, values=[-9_000_000_000_123], datatype=DataType.INT64),
        # little word order (CDAB), as many Chinese meters send it: pymodbus' converter does the swap
        SimData(16, values=encode(1234.5, T.FLOAT32, word_order="little"), datatype=DataType.REGISTERS),
        SimData(18, values=encode(98765.4321, T.FLOAT64, word_order="little"), datatype=DataType.REGISTERS),
    ]
    coils = [SimData(0, values=[True, False, True], datatype=DataType.BITS)]
    device = SimDevice(9, simdata=(coils, [SimData(0, values=[False], datatype=DataType.BITS)], holding,
                                   [SimData(0, datatype=DataType.INVALID)]))
    profile = parse_profile({
        "model": "pymodbus-own", "measurement": "energy_meter", "function": "holding", "registers": [
            {"field": "frequency", "address": 0, "type": "float32"},
            {"field": "voltage_l1", "address": 2, "type": "int16"},
            {"field": "voltage_l2", "address": 3, "type": "uint16"},
            {"field": "current_l1", "address": 4, "type": "int32"},
            {"field": "current_l2", "address": 6, "type": "uint32"},
            {"field": "energy_import", "address": 8, "type": "float64"},
            {"field": "energy_export", "address": 12, "type": "int64"},
            {"field": "active_power", "address": 16, "type": "float32", "word_order": "little"},
            {"field": "energy_total", "address": 18, "type": "float64", "word_order": "little"},
            {"field": "active_power_l1", "address": 0, "type": "bit", "function": "coil"},
            {"field": "active_power_l2", "address": 1, "type": "bit", "function": "coil"},
            {"field": "active_power_l3", "address": 2, "type": "bit", "function": "coil"},
        ]}, "test")
    port = free_port()

    async def main():
        server = ModbusTcpServer([device], address=("127.0.0.1", port))
        task = await serving(server)
        bus = ModbusBus(BusSettings("own", "tcp", host="127.0.0.1", port=port))
        out: list = []
        p = ModbusDevicePoller("own", bus, 9, profile, np.arange(12, dtype=np.int32), 1.0, collect(out))
        ok = await p.poll_and_emit()
        bus.close()
        await stop(server, task)
        return ok, p, out

    ok, p, out = asyncio.run(main())
    assert ok, p.health.last_error_detail
    assert len(p.blocks) == 2  # the holding registers in one request, the coils in another
    got = dict(zip((r.field for r in profile.registers), out[0].value.tolist()))
    assert got["frequency"] == pytest.approx(49.98, rel=1e-7)  # float32
    assert got["active_power"] == 1234.5
    for f in ("voltage_l1", "voltage_l2", "current_l1", "current_l2", "energy_import", "energy_export", "energy_total"):
        assert got[f] == values[f], f
    assert [got["active_power_l1"], got["active_power_l2"], got["active_power_l3"]] == [1.0, 0.0, 1.0]


class SlowBank(MeterBank):
    """Answers after a delay and records how many requests it was serving at once, across servers."""

    active = 0
    peak = 0

    async def _serve(self, meter, *args):
        if args[-1] is None:  # a read
            SlowBank.active += 1
            SlowBank.peak = max(SlowBank.peak, SlowBank.active)
            try:
                await asyncio.sleep(0.05)
            finally:
                SlowBank.active -= 1
        return await super()._serve(meter, *args)


def test_requests_to_one_host_stay_within_its_limit():
    SlowBank.active = SlowBank.peak = 0
    ports = [free_port(), free_port()]
    banks = [SlowBank([frozen_meter(f"h{k}-{u}", u, "sdm120") for u in range(1, 5)]) for k in range(2)]

    async def main(per_host: int):
        servers = [tcp_server(b, "127.0.0.1", p) for b, p in zip(banks, ports)]
        tasks = [await serving(s) for s in servers]
        limits = HostLimits(per_host)
        buses = [ModbusBus(BusSettings(f"p{p}", "tcp", host="127.0.0.1", port=p, max_parallel=4), limits)
                 for p in ports]
        profile = PROFILES["sdm120"]
        out: list = []
        pollers = [ModbusDevicePoller(f"{k}-{u}", bus, u, profile, np.arange(len(profile.registers), dtype=np.int32),
                                      1.0, collect(out)) for k, bus in enumerate(buses) for u in range(1, 5)]
        t0 = time.monotonic()
        ok = await asyncio.gather(*(p.poll_and_emit() for p in pollers))
        elapsed = time.monotonic() - t0
        for bus in buses:
            bus.close()
        for s, t in zip(servers, tasks):
            await stop(s, t)
        return ok, elapsed, buses

    ok, elapsed, buses = asyncio.run(main(per_host=3))
    assert all(ok)
    assert SlowBank.peak == 3  # in parallel, but never more than the host's limit over both ports
    assert max(b.max_in_flight for b in buses) <= 3
    SlowBank.active = SlowBank.peak = 0
    ok, _, buses = asyncio.run(main(per_host=8))
    assert all(ok) and SlowBank.peak == 8  # 2 ports x 4 connections each


async def black_hole(port: int) -> asyncio.Server:
    """Accepts connections and never answers: a meter that lost power behind its converter."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    return await asyncio.start_server(swallow, "127.0.0.1", port)


def test_dead_device_does_not_delay_the_others_and_tcp_link_comes_back():
    alive = frozen_meter("alive", 1, "sdm120")
    port, dead_port = free_port(), free_port()
    profile = PROFILES["sdm120"]

    async def main():
        server = tcp_server(MeterBank([alive]), "127.0.0.1", port)
        task = await serving(server)
        hole = await black_hole(dead_port)
        limits = HostLimits(4)
        bus = ModbusBus(BusSettings("t", "tcp", host="127.0.0.1", port=port, timeout_s=0.4), limits)
        dead_bus = ModbusBus(BusSettings("d", "tcp", host="127.0.0.1", port=dead_port, timeout_s=0.4), limits)
        good_out: list = []
        dead_out: list = []
        ids = np.arange(len(profile.registers), dtype=np.int32)
        good = ModbusDevicePoller("alive", bus, 1, profile, ids, 0.5, collect(good_out))
        dead = ModbusDevicePoller("dead", dead_bus, 1, profile, ids + 100, 0.5, collect(dead_out))
        runs = [asyncio.create_task(good.run()), asyncio.create_task(dead.run())]
        await asyncio.sleep(3.2)
        good_polls, dead_polls = good.polls, dead.polls
        # the link dies: the server goes away; then it comes back on the same port
        await stop(server, task)
        await asyncio.sleep(1.2)
        failures_during_outage = good.failures_in_row
        server = tcp_server(MeterBank([alive]), "127.0.0.1", port)
        task = await serving(server)
        await asyncio.sleep(good.next_delay_s() * 1.3 + 1.5)
        for r in runs:
            r.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        bus.close()
        dead_bus.close()
        hole.close()
        await stop(server, task)
        return good, dead, good_polls, dead_polls, failures_during_outage, good_out, dead_out

    good, dead, good_polls, dead_polls, failures_during_outage, good_out, dead_out = asyncio.run(main())
    assert good_polls >= 6, good_polls  # every 0.5 s for 3.2 s, undisturbed by its dead neighbour
    assert dead_polls <= 4, dead_polls  # 0.5, 1, 2 s backoff
    assert dead.health.last_error == "timeout" and not dead.health.online
    assert all(np.isnan(b.value).all() for b in dead_out)  # stale marks only, never a value
    assert failures_during_outage >= 1
    assert good.health.errors.keys() & {"connection_lost", "connection_refused", "timeout"}
    assert good.health.online and good.failures_in_row == 0  # it came back by itself
    assert np.isfinite(good_out[-1].value).all()
