"""``python -m firmware_sim`` and ``cgw sim``: run a scenario, or emit the gateway config that reads it."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path

import tomli_w

from firmware_sim.scenario import Scenario, ScenarioError, gateway_config, load_scenario
from firmware_sim.serial_link import SerialLinkError, socat_path


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="firmware-sim", description="Simulated community devices")
    p.add_argument("--scenario", required=True, type=Path, help="scenario TOML file")
    p.add_argument("--served-log", type=Path, help="append every served value to this JSONL file")
    p.add_argument("--duration", type=float, default=None, help="stop after this many (wall) seconds")
    p.add_argument("--speed", type=float, default=None,
                   help="simulated seconds per wall second, e.g. 60 runs an hour a minute "
                        "(default: the scenario's [sim] speed, else 1)")
    p.add_argument("--start", default=None,
                   help="simulated start, e.g. 2026-03-02T07:00:00+08:00 (default: the scenario's [sim] start, "
                        "else now)")
    p.add_argument("--sim-dir", type=Path, default=None,
                   help="where the ptys, the clock file and the ground truth go "
                        "(default: the scenario's [sim] data_dir, else .sim/<site>)")
    p.add_argument("--ground-truth", type=Path, default=None,
                   help="JSONL file of every injected fault (default: <sim dir>/ground-truth.jsonl)")
    p.add_argument("--stats", type=Path, default=None,
                   help="keep a JSON file of the requests and messages served, CPU and wall time")
    p.add_argument("--emit-config", type=Path, help="write a matching gateway configuration and exit")
    p.add_argument("--influx-url", default="http://127.0.0.1:8086", help="for --emit-config")
    p.add_argument("--database", default="community", help="for --emit-config")
    p.add_argument("--data-dir", default="/var/lib/community-gateway", help="for --emit-config: the gateway's")
    return p


def _start_s(text: str | None) -> float | None:
    if text is None:
        return None
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"--start {text}: give a UTC offset, e.g. 2026-03-02T07:00:00+08:00")
    return when.timestamp()


def _needs_socat(scenario: Scenario) -> bool:
    lines = {pm.bus for pm in scenario.all_meters() if pm.protocol != "modbus_tcp"}
    return bool(lines)


def run(args: argparse.Namespace) -> int:
    from firmware_sim.runner import Simulation

    try:
        scenario = load_scenario(args.scenario)
        start_s = _start_s(args.start)
        if args.speed is not None and not args.speed > 0:
            raise ValueError(f"--speed {args.speed}: must be > 0")
    except ScenarioError as e:
        print(str(e), file=sys.stderr)
        return 1
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    if args.emit_config:
        # an accelerated or shifted clock on the command line: the gateway must follow the simulator's
        follow = True if (args.speed is not None or start_s is not None) else None
        cfg = gateway_config(scenario, args.influx_url, args.database, args.data_dir, sim_dir=args.sim_dir,
                             clock_file=follow)
        args.emit_config.write_text(tomli_w.dumps(cfg), encoding="utf-8")
        print(f"wrote {args.emit_config}")
        return 0
    if _needs_socat(scenario):
        try:
            socat_path()
        except SerialLinkError as e:
            print(f"{args.scenario}: {e}", file=sys.stderr)
            return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s firmware-sim %(levelname)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # a gateway's timeout is not the simulator's error

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        sim = Simulation(scenario, args.served_log, speed=args.speed, start_s=start_s, sim_dir=args.sim_dir,
                         ground_truth=args.ground_truth, stats_path=args.stats)
        await sim.run(stop)

    try:
        asyncio.run(main())
    except SerialLinkError as e:
        print(f"{args.scenario}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
