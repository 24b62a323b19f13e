"""firmware-sim at scale: the large scenario (5,174 devices) served at its rates for a bounded time.

    .venv/bin/python benchmarks/bench_sim.py [--window 120] [--warmup 20] [--scenario firmware-sim/scenarios/large.toml]

What runs, all on loopback:

- a private mosquitto;
- firmware-sim (``python -m firmware_sim``) in its own process, the scenario moved to free ports:
  Modbus TCP meters on 20 ports, a Modbus RTU and a DL/T 645 line on socat pty pairs it makes,
  parking sensors, elevator monitors and cameras publishing on MQTT;
- the load, in this process: the gateway's own pollers (``ModbusDevicePoller`` on every Modbus bus,
  ``Dlt645DevicePoller`` on the DL/T 645 pty) on the emitted configuration's schedule, a poll a
  minute per meter aligned to the minute as ``cgw run`` does it, and an MQTT subscriber counting
  what the devices publish.

Measured over the window, after the warm-up (startup and the first round of polls): the
simulator's CPU time (user + system of its process, all threads, from /proc/<pid>/stat) per wall
second, its busiest second, and the request and message rates it served (its ``--stats`` counters)
next to the rates the scenario asks for. Whole minutes make a fair window: every meter is polled
once a minute, all at the minute.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import tomli_w

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.dlt645.poller import DEFAULT_FIELDS, Dlt645DevicePoller, line_client  # noqa: E402
from drivers.modbus.blocks import plan_blocks  # noqa: E402
from drivers.modbus.poller import BusSettings, HostLimits, ModbusBus, ModbusDevicePoller  # noqa: E402
from drivers.modbus.profile import load_profiles  # noqa: E402
from firmware_sim.scenario import gateway_config, load_scenario  # noqa: E402
from gateway.devservices import free_port, start_mosquitto, stop_process  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def free_port_range(n: int, host: str = "127.0.0.1") -> int:
    """The first of n consecutive free ports (an endpoint's port range needs them together)."""
    for base in range(21000, 60000, n + 7):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat(5))


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def relocated(scenario_path: Path, workdir: Path, mqtt_port: int) -> Path:
    """The scenario with its TCP ports, broker and data dir moved to this run's."""
    import tomllib

    data = tomllib.loads(scenario_path.read_text())
    data["sim"]["data_dir"] = str(workdir / "sim")
    data["mqtt"] = {"host": "127.0.0.1", "port": mqtt_port}
    if "modbus_tcp" in data:
        data["modbus_tcp"]["port"] = free_port()
    for e in data.get("tcp_endpoints", []):
        if "ports" in e:
            n = len(e["ports"]) if isinstance(e["ports"], list) else int(e["ports"].split("-")[1]) - int(
                e["ports"].split("-")[0]) + 1
            base = free_port_range(n)
            e["ports"] = f"{base}-{base + n - 1}"
        else:
            e["port"] = free_port()
    out = workdir / scenario_path.name
    out.write_text(tomli_w.dumps(data))
    return out


def expected_rates(cfg: dict) -> dict[str, float]:
    """Requests per second the configuration's schedule asks for: one request per block (Modbus) or per field (DL/T 645)."""
    profiles = load_profiles()
    bus_type = {b["name"]: b["type"] for b in cfg["buses"]}
    blocks = {name: len(plan_blocks(p.registers, p.max_block_registers, p.max_gap)) for name, p in profiles.items()}
    rates: Counter[str] = Counter()
    for d in cfg["devices"]:
        kind = bus_type[d["bus"]]
        per_poll = blocks[d["profile"]] if "profile" in d else len(d.get("fields") or DEFAULT_FIELDS)
        rates[kind] += per_poll / d["poll_interval_s"]
    return dict(rates)


class Load:
    """The gateway's pollers on every meter, and a subscriber counting the MQTT devices' messages."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.polls_ok = 0
        self.polls_failed = 0
        self.mqtt = Counter()

    def _emit(self, batch, ack=None) -> None:
        if np.isnan(batch.value).all():
            self.polls_failed += 1
        else:
            self.polls_ok += 1

    async def run(self, stop: asyncio.Event) -> None:
        profiles = load_profiles()
        limits = HostLimits(8)
        buses: dict = {}
        for b in self.cfg["buses"]:
            if b["type"] == "modbus_tcp":
                buses[b["name"]] = ModbusBus(BusSettings(b["name"], "tcp", host=b["host"], port=b["port"],
                                                         timeout_s=b.get("timeout_s", 1.0)), limits)
            elif b["type"] == "modbus_rtu":
                buses[b["name"]] = ModbusBus(BusSettings(b["name"], "rtu", device=b["device"], baudrate=b["baudrate"],
                                                         parity=b["parity"], stopbits=b["stopbits"], timeout_s=0.5))
            else:
                buses[b["name"]] = line_client("serial", device=b["device"], baudrate=b["baudrate"], parity=b["parity"],
                                               stopbits=b["stopbits"], timeout_s=1.0)
        pollers = []
        for d in self.cfg["devices"]:
            bus = buses[d["bus"]]
            if "profile" in d:
                profile = profiles[d["profile"]]
                ids = np.arange(len(profile.registers), dtype=np.int32)
                pollers.append(ModbusDevicePoller(d["id"], bus, d["unit_id"], profile, ids, d["poll_interval_s"],
                                                  self._emit))
            else:
                fields = tuple(d.get("fields") or DEFAULT_FIELDS)
                pollers.append(Dlt645DevicePoller(d["id"], bus, d["address"], fields,
                                                  np.arange(len(fields), dtype=np.int32), d["poll_interval_s"],
                                                  self._emit, serial=True))
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sim-{os.getpid()}")
        sub.on_message = lambda c, u, m: self.mqtt.update([m.topic.split("/", 1)[0]])
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=0)
        m = self.cfg["mqtt"]
        sub.connect(m["host"], m["port"])
        sub.loop_start()
        tasks = [asyncio.create_task(p.run()) for p in pollers]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            # bounded: on Python 3.11 a cancel that lands as a reply completes can be swallowed inside
            # pymodbus' client (asyncio.wait_for), and that poller then keeps running
            await asyncio.wait(tasks, timeout=5.0)
            for bus in buses.values():
                if isinstance(bus, ModbusBus):
                    bus.close()
                else:
                    await bus.close()
            sub.loop_stop()
            sub.disconnect()


def read_stats(path: Path) -> dict:
    for _ in range(50):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced right now
            time.sleep(0.02)
    raise RuntimeError(f"cannot read {path}")


async def measure(args: argparse.Namespace, workdir: Path) -> dict:
    mosquitto = start_mosquitto(workdir / "mosquitto")
    sim = None
    try:
        scenario_path = relocated(Path(args.scenario), workdir, mosquitto.port)
        scenario = load_scenario(scenario_path)
        cfg = gateway_config(scenario, "http://127.0.0.1:9", "bench", str(workdir / "gw"))
        stats_path = workdir / "stats.json"
        t_spawn = time.monotonic()
        sim = subprocess.Popen([sys.executable, "-m", "firmware_sim", "--scenario", str(scenario_path), "--stats",
                                str(stats_path), "--duration", str(args.warmup + args.window + 120)],
                               cwd=REPO, stdout=open(workdir / "sim.log", "wb"), stderr=subprocess.STDOUT)
        while "simulation started" not in (workdir / "sim.log").read_text():  # logged once everything listens
            if sim.poll() is not None:
                raise RuntimeError(f"firmware-sim exited: {(workdir / 'sim.log').read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        startup_s = time.monotonic() - t_spawn
        stop = asyncio.Event()
        load = Load(cfg)
        load_task = asyncio.create_task(load.run(stop))
        await asyncio.sleep(args.warmup)
        s0, c0, w0 = read_stats(stats_path), proc_cpu_s(sim.pid), time.monotonic()
        mqtt0 = sum(load.mqtt.values())
        per_second = []
        last_c, last_w = c0, w0
        while time.monotonic() - w0 < args.window:
            await asyncio.sleep(1.0)
            c, w = proc_cpu_s(sim.pid), time.monotonic()
            per_second.append((c - last_c) / (w - last_w))
            last_c, last_w = c, w
        s1, c1, w1 = read_stats(stats_path), proc_cpu_s(sim.pid), time.monotonic()
        rss = proc_rss_mib(sim.pid)
        mqtt_received = sum(load.mqtt.values()) - mqtt0
        stop.set()
        await load_task
        wall = s1["wall_s"] - s0["wall_s"]
        return {
            "scenario": scenario, "cfg": cfg, "startup_s": startup_s, "window_s": w1 - w0,
            "cpu_per_s": (c1 - c0) / (w1 - w0), "cpu_peak_1s": max(per_second), "rss_mib": rss,
            "served": {k: (s1[k] - s0[k]) / wall for k in ("modbus_tcp_requests", "modbus_rtu_requests",
                                                           "dlt645_requests", "mqtt_messages")},
            "mqtt_received_per_s": mqtt_received / (w1 - w0), "mqtt_lag_max_s": s1["mqtt_lag_max_s"],
            "mqtt_fired": s1["mqtt_fired"] - s0["mqtt_fired"], "mqtt_late": s1["mqtt_late"] - s0["mqtt_late"],
            "expected": expected_rates(cfg), "polls_ok": load.polls_ok, "polls_failed": load.polls_failed,
        }
    finally:
        if sim is not None:
            stop_process(sim, 20)
        mosquitto.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default=str(REPO / "firmware-sim/scenarios/large.toml"))
    ap.add_argument("--window", type=float, default=120.0, help="measured wall seconds (whole minutes are fair)")
    ap.add_argument("--warmup", type=float, default=20.0, help="wall seconds before measuring")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        r = asyncio.run(measure(args, Path(tmp)))
    s = r["scenario"]
    types = Counter(s.device_types().values())
    tcp_ports = len({pm.gateway_bus for pm in s.all_meters() if pm.protocol == "modbus_tcp"})
    print(f"\nfirmware-sim, {Path(args.scenario).name}: {s.device_count():,} devices: {types['modbus_tcp_meter']:,} Modbus "
          f"TCP meters on {tcp_ports} ports, {types['modbus_rtu_meter']} Modbus RTU and {types['dlt645_meter']} DL/T 645 "
          f"meters on pty lines, {types['parking']} parking sensors, {types['elevator']} elevators, "
          f"{types['camera']} cameras")
    print(f"load: the gateway's pollers (a poll a minute per meter, aligned to the minute) and an MQTT subscriber; "
          f"measured {r['window_s']:.0f} s after a {args.warmup:.0f} s warm-up\n")
    exp = r["expected"]
    print(f"{'':<28} {'served /s':>10} {'scenario asks /s':>17}")
    for label, key, kind in (("Modbus TCP requests", "modbus_tcp_requests", "modbus_tcp"),
                             ("Modbus RTU requests", "modbus_rtu_requests", "modbus_rtu"),
                             ("DL/T 645 requests", "dlt645_requests", "dlt645_serial")):
        print(f"{label:<28} {r['served'][key]:>10.1f} {exp.get(kind, 0.0):>17.1f}")
    print(f"{'MQTT messages published':<28} {r['served']['mqtt_messages']:>10.1f} {'':>17}")
    print(f"{'MQTT messages received':<28} {r['mqtt_received_per_s']:>10.1f} {'':>17}")
    print()
    print(f"simulator CPU (user+sys)     {r['cpu_per_s']:.3f} s per wall second ({100 * r['cpu_per_s']:.1f} % of one core); "
          f"busiest second {100 * r['cpu_peak_1s']:.0f} %")
    on_time = 100.0 * (1 - r["mqtt_late"] / r["mqtt_fired"]) if r["mqtt_fired"] else 100.0
    print(f"MQTT devices on time         {on_time:.1f} % of {r['mqtt_fired']:,} firings within 100 ms of due; worst "
          f"{1000 * r['mqtt_lag_max_s']:.0f} ms (whole run, startup included)")
    print(f"simulator RSS                {r['rss_mib']:.0f} MiB; up and serving {r['startup_s']:.1f} s after start")
    print(f"polls by the load            {r['polls_ok']:,} answered, {r['polls_failed']:,} failed")


if __name__ == "__main__":
    main()
