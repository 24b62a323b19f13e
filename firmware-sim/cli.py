"""``python -m firmware_sim`` and ``cgw sim``: run a scenario, optionally emitting the gateway config."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import tomli_w
from pydantic import ValidationError

from firmware_sim.scenario import gateway_config, load_scenario


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="firmware-sim", description="Simulated community devices")
    p.add_argument("--scenario", required=True, type=Path, help="scenario TOML file")
    p.add_argument("--served-log", type=Path, help="append every served value to this JSONL file")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--emit-config", type=Path, help="write a matching gateway configuration and exit")
    p.add_argument("--influx-url", default="http://127.0.0.1:8086", help="for --emit-config")
    p.add_argument("--database", default="community", help="for --emit-config")
    p.add_argument("--data-dir", default="/var/lib/community-gateway", help="for --emit-config")
    return p


def run(args: argparse.Namespace) -> int:
    from firmware_sim.runner import Simulation

    try:
        scenario = load_scenario(args.scenario)
    except (OSError, ValidationError, ValueError) as e:
        print(f"{args.scenario}: {e}", file=sys.stderr)
        return 1
    if args.emit_config:
        cfg = gateway_config(scenario, args.influx_url, args.database, args.data_dir)
        args.emit_config.write_text(tomli_w.dumps(cfg), encoding="utf-8")
        print(f"wrote {args.emit_config}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s firmware-sim %(levelname)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        await Simulation(scenario, args.served_log).run(stop)

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
