"""``cgw demo``: the simulated community end to end on this machine.

Uses an InfluxDB already answering on 127.0.0.1:8086 if there is one, otherwise starts a private
influxd there; starts a private mosquitto, firmware-sim and the gateway; prints what is flowing
until Ctrl-C or --duration, then stops everything it started.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path

import tomli_w

from gateway.devservices import Service, influx_ping, port_open, start_influxd, start_mosquitto, stop_process

DATABASE = "community"


def influx_query(url: str, q: str, db: str = DATABASE) -> list[dict]:
    params = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=5) as r:
        doc = json.load(r)
    return [s for res in doc.get("results", []) for s in res.get("series", [])]


def run_demo(args: argparse.Namespace) -> int:
    from firmware_sim.scenario import gateway_config, load_scenario

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scenario_path = args.scenario or Path(str(resources.files("firmware_sim.scenarios") / "demo.toml"))
    scenario = load_scenario(scenario_path)
    started: list[Service] = []
    sim = gw = None
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        influx_url = "http://127.0.0.1:8086"
        if influx_ping(influx_url):
            print(f"using the InfluxDB already answering at {influx_url}")
        else:
            port = 8086 if not port_open("127.0.0.1", 8086) else None
            svc = start_influxd(workdir / "influxdb", port=port)
            started.append(svc)
            influx_url = f"http://127.0.0.1:{svc.port}"
            print(f"started a private InfluxDB at {influx_url} (data in {svc.workdir})")
        assert scenario.mqtt is not None
        if port_open(scenario.mqtt.host, scenario.mqtt.port):
            print(f"using the MQTT broker already at {scenario.mqtt.host}:{scenario.mqtt.port}")
        else:
            started.append(start_mosquitto(workdir / "mosquitto", port=scenario.mqtt.port, host=scenario.mqtt.host))
            print(f"started a private mosquitto at {scenario.mqtt.host}:{scenario.mqtt.port}")
        config = workdir / "gateway.toml"
        if args.scenario is None:
            # the shipped example configuration, pointed at this InfluxDB and this work directory
            cfg = tomllib.loads((resources.files("gateway.examples") / "demo-community.toml").read_text())
            for sink in cfg["sinks"]:
                sink["url"] = influx_url
        else:
            cfg = gateway_config(scenario, influx_url, DATABASE, str(workdir / "data"), status_interval_s=10.0,
                                 sim_dir=workdir / "sim")
        cfg["gateway"]["data_dir"] = str(workdir / "data")
        config.write_text(tomli_w.dumps(cfg))
        gw_log = open(workdir / "gateway.log", "ab")
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
                              stdout=gw_log, stderr=gw_log)
        time.sleep(2.0)  # the gateway subscribes first, so the sensors' first uplinks are not missed
        sim_log = open(workdir / "firmware-sim.log", "ab")
        # its ptys, clock file and ground truth in the work directory, where the configuration points
        sim = subprocess.Popen([sys.executable, "-m", "firmware_sim", "--scenario", str(scenario_path),
                                "--sim-dir", str(workdir / "sim")], stdout=sim_log, stderr=sim_log)
        n_devices = scenario.device_count()
        print(f"firmware-sim: {describe(scenario)}")
        print(f"gateway: config {config}, logs {workdir / 'gateway.log'}")
        print(f"query it:  influx -host 127.0.0.1 -port {urllib.parse.urlparse(influx_url).port} -database {DATABASE} "
              f"-execute 'SELECT * FROM energy_meter ORDER BY time DESC LIMIT 5'")
        t0 = time.monotonic()
        next_report = t0 + 10
        while not stopping:
            if args.duration and time.monotonic() - t0 >= args.duration:
                break
            for name, proc in (("firmware-sim", sim), ("gateway", gw)):
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {workdir}/{name}.log", file=sys.stderr)
                    return 1
            if time.monotonic() >= next_report:
                next_report += 10
                try:
                    report(influx_url, n_devices)
                except OSError as e:
                    print(f"InfluxDB query failed: {e}")
            time.sleep(0.2)
        return 0
    finally:
        for proc in (gw, sim):
            if proc is not None:
                stop_process(proc, 15.0)
        for svc in reversed(started):
            svc.stop()
        print("demo stopped")


def describe(scenario) -> str:
    """What the simulator serves, by device type and where."""
    meters = scenario.all_meters()
    by_protocol = {p: sum(1 for m in meters if m.protocol == p) for p in ("modbus_tcp", "modbus_rtu", "dlt645")}
    tcp = sorted({(m.host, m.port) for m in meters if m.protocol == "modbus_tcp"})
    parts = []
    if by_protocol["modbus_tcp"]:
        where = f"Modbus TCP {tcp[0][0]}:{tcp[0][1]}" if len(tcp) == 1 else f"{len(tcp)} Modbus TCP ports"
        parts.append(f"{by_protocol['modbus_tcp']} meters on {where}")
    if by_protocol["modbus_rtu"]:
        parts.append(f"{by_protocol['modbus_rtu']} on Modbus RTU")
    if by_protocol["dlt645"]:
        parts.append(f"{by_protocol['dlt645']} on DL/T 645")
    mqtt = [(len(scenario.all_parking()), "parking sensors"), (len(scenario.all_elevators()), "elevators"),
            (len(scenario.cameras), "cameras")]
    parts += [f"{n} {what}" for n, what in mqtt if n]
    return ", ".join(parts) + (" over MQTT" if any(n for n, _ in mqtt) else "")


MEASUREMENTS = ("energy_meter", "parking_bay", "elevator", "people_counter")


def report(influx_url: str, n_devices: int) -> None:
    window = "time > now() - 10s"
    points = 0
    for meas in MEASUREMENTS:
        for s in influx_query(influx_url, f"SELECT count(*) FROM {meas} WHERE {window}"):
            points += sum(v for v in s["values"][0][1:] if isinstance(v, (int, float)))
    online = 0
    for meas in MEASUREMENTS:
        rows = influx_query(influx_url, f'SHOW TAG VALUES FROM {meas} WITH KEY = "device" WHERE time > now() - 5m')
        online += sum(len(s.get("values", [])) for s in rows)
    total = influx_query(influx_url, "SELECT count(energy_import) FROM energy_meter")
    stored = total[0]["values"][0][1] if total else 0
    print(f"{time.strftime('%H:%M:%S')}  {points / 10:7.1f} values/s into InfluxDB   devices reporting: "
          f"{online}/{n_devices}   meter readings stored: {stored}", flush=True)
