"""``cgw``: the gateway's command line."""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import signal
import sys
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config


def _summary(cfg: GatewayConfig) -> str:
    from drivers.modbus.profile import load_profiles

    profiles = load_profiles(list(cfg.gateway.profile_dirs))
    series = sum(len(profiles[d.profile].registers) for d in cfg.devices)
    lines = [f"site {cfg.gateway.site!r}, gateway {cfg.gateway.name!r}: configuration OK"]
    lines.append(f"buses ({len(cfg.buses)}):")
    for b in cfg.buses:
        where = f"{b.host}:{b.port}" if b.type == "modbus_tcp" else f"{b.device} {b.baudrate} {b.parity}{b.stopbits}"
        n = sum(1 for d in cfg.devices if d.bus == b.name)
        lines.append(f"  {b.name:<20} {b.type:<11} {where:<28} {n} device(s)")
    by_profile: dict[str, int] = {}
    for d in cfg.devices:
        by_profile[d.profile] = by_profile.get(d.profile, 0) + 1
    lines.append(f"devices ({len(cfg.devices)} polled): " + ", ".join(f"{n} x {p}" for p, n in sorted(by_profile.items())))
    lines.append(f"series polled: {series}")
    if cfg.mqtt is not None:
        lines.append(f"mqtt: {cfg.mqtt.host}:{cfg.mqtt.port} as {cfg.mqtt.client_id!r}"
                     + (" with TLS" if cfg.mqtt.tls else ""))
        for s in cfg.subscriptions:
            lines.append(f"  {s.topic} -> {s.decoder} (QoS {s.qos})")
    lines.append(f"sinks ({len(cfg.sinks)}):")
    for s in cfg.sinks:
        lines.append(f"  {s.name:<20} {s.type:<11} {s.url} db={s.database}")
    return "\n".join(lines)


def _load_or_report(path: Path) -> GatewayConfig | None:
    """The configuration, or None after printing every problem with its path."""
    try:
        return load_config(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_or_report(args.file)
    if cfg is None:
        return 1
    print(_summary(cfg))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.runtime import Gateway

    cfg = _load_or_report(args.config)
    if cfg is None:
        return 1
    setup_logging(args.log_level or cfg.gateway.log_level)
    faulthandler.enable()  # a hung or crashed gateway leaves every thread's stack in its log

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gw = Gateway(cfg, data_dir=args.data_dir)
        await gw.run(stop, duration_s=args.duration)

    asyncio.run(main())
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from drivers.modbus.profile import ProfileError, load_profiles

    try:
        profiles = load_profiles([Path(d) for d in args.profile_dir])
    except ProfileError as e:
        print(str(e), file=sys.stderr)
        return 1
    if args.action == "list":
        for name, p in sorted(profiles.items()):
            print(f"{name:<12} {p.manufacturer:<10} {len(p.registers):>3} registers  {p.description}")
        return 0
    if args.name not in profiles:
        print(f"unknown profile {args.name!r}; known: {', '.join(sorted(profiles))}", file=sys.stderr)
        return 1
    p = profiles[args.name]
    print(f"{p.model} ({p.manufacturer}): {p.description}\nfile: {p.path}\nmeasurement: {p.measurement}\n"
          f"source: {p.source}\nmax registers per read: {p.max_block_registers}, max gap: {p.max_gap}")
    print(f"{'field':<18} {'function':<9} {'address (0-based)':<18} {'type':<8} {'bytes/words':<12} {'scale':>8}  unit")
    for r in p.registers:
        addr = f"{r.address} (0x{r.address:04X})"
        print(f"{r.field:<18} {r.function:<9} {addr:<18} {r.type:<8} {r.byte_order + '/' + r.word_order:<12} "
              f"{r.scale:>8g}  {r.unit}")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    import time

    from gateway.sinks.outbox import Outbox

    cfg = _load_or_report(args.config)
    if cfg is None:
        return 1
    data_dir = Path(args.data_dir or cfg.gateway.data_dir)
    for s in cfg.sinks:
        path = data_dir / f"outbox-{s.name}.sqlite3"
        if not path.exists():
            print(f"{s.name}: no outbox yet at {path}")
            continue
        ob = Outbox(path)
        st = ob.stats()
        if args.action == "status":
            age = f"{(time.time_ns() - st.oldest_created_ns) / 1e9:.1f}s" if st.oldest_created_ns else "-"
            print(f"{s.name}: {st.batches} batches, {st.points} points, {st.bytes} bytes queued; "
                  f"oldest {age}; {st.dead_letters} dead letters ({path})")
        else:
            for row_id, failed_ns, points, reason, _ in ob.dead_letters():
                print(f"{s.name} #{row_id} failed_ns={failed_ns} points={points}: {reason}")
        ob.close()
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from firmware_sim.cli import run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cgw", description="community-gateway: devices of a residential community into InfluxDB")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the gateway")
    r.add_argument("-c", "--config", required=True, type=Path)
    r.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    r.add_argument("--data-dir", type=Path, help="override gateway.data_dir (outbox location)")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a configuration file without touching devices")
    c.add_argument("file", type=Path)
    c.set_defaults(func=cmd_check_config)

    pr = sub.add_parser("profiles", help="list or show device profiles")
    pr.add_argument("action", choices=["list", "show"])
    pr.add_argument("name", nargs="?")
    pr.add_argument("--profile-dir", action="append", default=[], help="extra directory of profile files")
    pr.set_defaults(func=cmd_profiles)

    o = sub.add_parser("outbox", help="inspect the on-disk outbox of each sink")
    o.add_argument("action", choices=["status", "deadletter"])
    o.add_argument("-c", "--config", required=True, type=Path)
    o.add_argument("--data-dir", type=Path)
    o.set_defaults(func=cmd_outbox)

    from firmware_sim.cli import build_parser as sim_parser

    s = sub.add_parser("sim", help="run simulated devices (firmware-sim)")
    sim_parser(s)
    s.set_defaults(func=cmd_sim)

    d = sub.add_parser("demo", help="the simulated community end to end: services, devices, gateway")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    d.add_argument("--workdir", type=Path, default=Path(".demo"))
    d.add_argument("--scenario", type=Path, default=None, help="default: the shipped demo community")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "profiles" and args.action == "show" and not args.name:
        print("cgw profiles show NAME", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
