"""Modbus TCP polling throughput: 500 simulated meters on loopback, the gateway's poller against peers.

    .venv/bin/python benchmarks/bench_modbus.py [--meters 500] [--rounds 4]

firmware-sim serves the meters from its own process (SDM630, SDM120 and DTSU666 spread over several
ports, at most 247 unit ids per port), so the figures measure the gateway's side alone: its CPU time
(user + system of this process) and wall time.

Measured side by side, on the same meters:
- ``gateway``: ``ModbusDevicePoller.poll_once`` for every meter at once, as the run loop does (block
  reads planned from the profile, a pool of connections per port, vectorised decoding);
- ``pymodbus-blocks``: pymodbus' async client, same block reads, one meter after the other, decoding
  with pymodbus' own ``convert_from_registers`` per field (what a careful hand-written script does);
- ``pymodbus-per-field``: one request per field, as a naive integration (or a register-per-point
  configuration in a generic tool) does.

Prints registers per second, polls per second and CPU milliseconds per 1,000 polls, and the ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.modbus.poller import BusSettings, HostLimits, ModbusBus, ModbusDevicePoller  # noqa: E402
from drivers.modbus.profile import load_profiles  # noqa: E402
from gateway.devservices import free_port  # noqa: E402

MODELS = ("sdm630", "sdm120", "dtsu666")
PER_PORT = 100

SIM = """
import asyncio, sys
from firmware_sim.loads import LoadModel
from firmware_sim.modbus_meter import MeterBank, SimMeter, tcp_server
from firmware_sim.register_map import load_register_map
MODELS = {models!r}
ports = {ports!r}
per_port = {per_port}
n = {n}
async def main():
    servers = []
    k = 0
    for port in ports:
        meters = []
        for unit in range(1, per_port + 1):
            if k == n:
                break
            model = MODELS[k % len(MODELS)]
            meters.append(SimMeter(f"m{{k}}", unit, load_register_map(model), LoadModel("household", 1, f"m{{k}}"),
                                   start_kwh=100.0))
            k += 1
        servers.append(tcp_server(MeterBank(meters), "127.0.0.1", port))
    tasks = [asyncio.create_task(s.serve_forever()) for s in servers]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await asyncio.gather(*tasks)
asyncio.run(main())
"""


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def layout(n: int) -> list[tuple[int, int, str]]:
    """(port index, unit id, model) of every meter, as the simulator lays them out."""
    out = []
    for k in range(n):
        out.append((k // PER_PORT, k % PER_PORT + 1, MODELS[k % len(MODELS)]))
    return out


async def bench_gateway(ports: list[int], meters, rounds: int) -> dict:
    profiles = load_profiles()
    limits = HostLimits(64)
    buses = [ModbusBus(BusSettings(f"p{p}", "tcp", host="127.0.0.1", port=p, max_parallel=4, timeout_s=5.0), limits)
             for p in ports]
    sink: list = []
    pollers = []
    for i, (pi, unit, model) in enumerate(meters):
        prof = profiles[model]
        ids = np.arange(len(prof.registers), dtype=np.int32) + 32 * i
        pollers.append(ModbusDevicePoller(f"m{i}", buses[pi], unit, prof, ids, 1.0, lambda b, ack=None: None))
    await asyncio.gather(*(p.poll_once() for p in pollers))  # connect and warm up
    regs_per_round = sum(b.count for p in pollers for b in p.blocks)
    c0, t0 = cpu_s(), time.perf_counter()
    for _ in range(rounds):
        batches = await asyncio.gather(*(p.poll_once() for p in pollers))
        sink.extend(batches)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    requests = sum(len(p.blocks) for p in pollers) * rounds
    for b in buses:
        b.close()
    values = sum(len(b) for b in sink)
    return {"name": "gateway", "wall": wall, "cpu": cpu, "polls": len(pollers) * rounds, "registers": regs_per_round * rounds,
            "requests": requests, "values": values}


async def bench_pymodbus(ports: list[int], meters, rounds: int, per_field: bool) -> dict:
    from pymodbus.client import AsyncModbusTcpClient

    profiles = load_profiles()
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=5.0, retries=0) for p in ports]
    for c in clients:
        await c.connect()
    T = AsyncModbusTcpClient.DATATYPE
    dtype = {"float32": T.FLOAT32, "uint32": T.UINT32, "int32": T.INT32, "uint16": T.UINT16, "int16": T.INT16}

    from drivers.modbus.blocks import plan_blocks

    plans = {m: plan_blocks(profiles[m].registers, profiles[m].max_block_registers, profiles[m].max_gap) for m in MODELS}
    registers = 0
    requests = 0
    values = 0

    async def read(c, fn, address, count, unit):
        if fn == "input":
            return await c.read_input_registers(address, count=count, device_id=unit)
        return await c.read_holding_registers(address, count=count, device_id=unit)

    c0, t0 = cpu_s(), time.perf_counter()
    for _ in range(rounds):
        for pi, unit, model in meters:
            c = clients[pi]
            prof = profiles[model]
            if per_field:
                for r in prof.registers:
                    rr = await read(c, r.function, r.address, r.width, unit)
                    v = c.convert_from_registers(rr.registers, dtype[r.type], word_order=r.word_order) * r.scale
                    values += 1
                    registers += r.width
                    requests += 1
            else:
                for b in plans[model]:
                    rr = await read(c, b.function, b.address, b.count, unit)
                    requests += 1
                    registers += b.count
                    for r in prof.registers:
                        if r.function == b.function and b.address <= r.address < b.address + b.count:
                            off = r.address - b.address
                            v = c.convert_from_registers(rr.registers[off:off + r.width], dtype[r.type],
                                                         word_order=r.word_order) * r.scale
                            values += 1
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    for c in clients:
        c.close()
    return {"name": "pymodbus-per-field" if per_field else "pymodbus-blocks", "wall": wall, "cpu": cpu,
            "polls": len(meters) * rounds, "registers": registers, "requests": requests, "values": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    n = args.meters
    ports = [free_port() for _ in range((n + PER_PORT - 1) // PER_PORT)]
    code = SIM.format(models=MODELS, ports=ports, per_port=PER_PORT, n=n)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert sim.stdout.readline().strip() == b"ready", "simulator did not start"
        meters = layout(n)
        results = [asyncio.run(bench_gateway(ports, meters, args.rounds)),
                   asyncio.run(bench_pymodbus(ports, meters, args.rounds, per_field=False)),
                   asyncio.run(bench_pymodbus(ports, meters, max(1, args.rounds // 2), per_field=True))]
    finally:
        sim.terminate()
        sim.wait(5)
    print(f"\nModbus TCP, {n} meters ({', '.join(MODELS)}) on {len(ports)} loopback ports, "
          f"simulator in its own process; {os.cpu_count()} cores\n")
    print(f"{'client':<20} {'requests':>9} {'registers/s':>12} {'polls/s':>9} {'CPU ms/1000 polls':>18} {'wall s':>7}")
    base = results[0]
    for r in results:
        print(f"{r['name']:<20} {r['requests']:>9} {r['registers'] / r['wall']:>12,.0f} {r['polls'] / r['wall']:>9,.0f} "
              f"{1000 * r['cpu'] / r['polls'] * 1000:>18,.0f} {r['wall']:>7.2f}")
    print()
    for r in results[1:]:
        print(f"gateway vs {r['name']}: {(base['registers'] / base['wall']) / (r['registers'] / r['wall']):.1f}x "
              f"registers/s, {(r['cpu'] / r['polls']) / (base['cpu'] / base['polls']):.1f}x less CPU per poll")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
