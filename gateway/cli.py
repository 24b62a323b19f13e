"""``cgw``: the gateway's command line."""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import ConfigError, GatewayConfig, load_config

if TYPE_CHECKING:
    from gateway.sinks.outbox import OutboxStats


def _summary(cfg: GatewayConfig) -> str:
    from drivers.modbus.profile import load_profiles

    from drivers.dlt645.poller import DEFAULT_FIELDS

    profiles = load_profiles(list(cfg.gateway.profile_dirs))

    def model(d) -> str:
        return d.profile if d.profile is not None else "dlt645"

    def series_of(d) -> int:
        return len(profiles[d.profile].registers) if d.profile is not None else len(d.fields or DEFAULT_FIELDS)

    series = sum(series_of(d) for d in cfg.devices)
    lines = [f"site {cfg.gateway.site!r}, gateway {cfg.gateway.name!r}: configuration OK"]
    lines.append(f"buses ({len(cfg.buses)}):")
    for b in cfg.buses:
        where = f"{b.host}:{b.port}" if hasattr(b, "host") else f"{b.device} {b.baudrate} {b.parity}{b.stopbits}"
        n = sum(1 for d in cfg.devices if d.bus == b.name)
        lines.append(f"  {b.name:<20} {b.type:<13} {where:<28} {n} device(s)")
    by_model: dict[str, int] = {}
    for d in cfg.devices:
        by_model[model(d)] = by_model.get(model(d), 0) + 1
    lines.append(f"devices ({len(cfg.devices)} polled): " + ", ".join(f"{n} x {p}" for p, n in sorted(by_model.items())))
    lines.append(f"series polled: {series}")
    if cfg.mqtt is not None:
        lines.append(f"mqtt: {cfg.mqtt.host}:{cfg.mqtt.port} as {cfg.mqtt.client_id!r}"
                     + (" with TLS" if cfg.mqtt.tls else ""))
        for s in cfg.subscriptions:
            lines.append(f"  {s.topic} -> {s.decoder} (QoS {s.qos})")
    lines.append(f"sinks ({len(cfg.sinks)}):")
    for s in cfg.sinks:
        lines.append(f"  {s.name:<20} {s.type:<11} {s.target()}")
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
            print(f"{name:<17} {p.manufacturer:<10} {len(p.registers):>3} registers  {p.description}")
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


def cmd_score(args: argparse.Namespace) -> int:
    from pipelines.detect import PARAM_NAMES
    from gateway.score_csv import CsvError, read_series, score_series, write_scores

    overrides: dict[str, float] = {}
    for item in args.param:
        name, _, value = item.partition("=")
        if name not in PARAM_NAMES:
            print(f"--param {item}: unknown parameter {name!r} (known: {', '.join(PARAM_NAMES)})", file=sys.stderr)
            return 2
        try:
            overrides[name] = float(value)  # every parameter is packed into a float64 table row
        except ValueError:
            print(f"--param {item}: {value!r} is not a number", file=sys.stderr)
            return 2
    try:
        text = args.input.read_text(encoding="utf-8-sig")
    except OSError as e:
        print(f"{args.input}: cannot read: {e.strerror}", file=sys.stderr)
        return 1
    try:
        raw, ts, values = read_series(text)
    except CsvError as e:
        print(f"{args.input}: {e}", file=sys.stderr)
        return 1
    scored = score_series(raw, ts, values, args.kind, overrides)
    args.output.write_text(write_scores(scored, args.reason), encoding="utf-8")
    flagged = int((scored.score >= 0.8).sum())
    print(f"{len(raw)} rows scored, {flagged} at or above 0.8 -> {args.output}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def outbox_report(name: str, sink_type: str, target: str, path: Path, st: OutboxStats, file_bytes: tuple[int, int],
                  fsync: str, now_ns: int) -> tuple[str, dict]:
    """The human-readable status of one sink's outbox and the same figures as a dict (--json)."""
    c = st.counters
    age_s = (now_ns - st.oldest_created_ns) / 1e9 if st.oldest_created_ns else None
    rate = st.drain_rate(now_ns)
    last = c.get("last_delivery_ns", 0)
    doc = {
        "sink": name, "type": sink_type, "target": target, "path": str(path), "fsync": fsync,
        "queued_batches": st.batches, "queued_points": st.points, "queued_bytes": st.bytes,
        "max_outbox_bytes": st.max_bytes, "oldest_age_s": None if age_s is None else round(age_s, 3),
        "drain_rate_points_per_s": round(rate, 1), "delivered_points": c.get("delivered_points", 0),
        "last_delivery_age_s": round((now_ns - last) / 1e9, 1) if last else None,
        "dropped_points": c.get("dropped_points", 0), "dropped_batches": c.get("dropped_batches", 0),
        "disk_full_events": c.get("disk_full_events", 0),
        "dead_letters": st.dead_letters, "dead_letter_points": st.dead_letter_points,
        "dead_letters_pruned_points": c.get("dead_letters_pruned_points", 0),
        "file_bytes": file_bytes[0], "wal_bytes": file_bytes[1],
    }
    share = 100.0 * (st.bytes + st.dead_letter_bytes) / st.max_bytes if st.max_bytes else 0.0
    since = f", last {_age(doc['last_delivery_age_s'])} ago" if last else ", nothing delivered yet"
    text = "\n".join([
        f"{name} ({sink_type} {target})",
        f"  queued        {st.batches} batches, {st.points} points, {_size(st.bytes)} "
        f"({share:.1f} % of the {_size(st.max_bytes)} bound)",
        f"  oldest        {_age(age_s) if age_s is not None else '-'}",
        f"  drain rate    {rate:.1f} points/s over the last 30-60 s; {doc['delivered_points']} points delivered in total{since}",
        f"  dropped       {doc['dropped_points']} points ({doc['dropped_batches']} batches) to stay within the bound; "
        f"disk full {doc['disk_full_events']} times",
        f"  dead letters  {st.dead_letters} lines, {st.dead_letter_points} points (cgw outbox deadletter)"
        + (f"; {doc['dead_letters_pruned_points']} older points pruned" if doc["dead_letters_pruned_points"] else ""),
        f"  file          {path} ({_size(file_bytes[0])} + WAL {_size(file_bytes[1])}), fsync={fsync}",
    ])
    return text, doc


def cmd_outbox(args: argparse.Namespace) -> int:
    import json
    import sqlite3
    import time

    from gateway.sinks.outbox import Outbox

    cfg = _load_or_report(args.config)
    if cfg is None:
        return 1
    data_dir = Path(args.data_dir or cfg.gateway.data_dir)
    docs = []
    for s in cfg.sinks:
        if args.sink and s.name != args.sink:
            continue
        path = data_dir / f"outbox-{s.name}.sqlite3"
        if not path.exists():
            if args.json:
                docs.append({"sink": s.name, "path": str(path), "missing": True})
            else:
                print(f"{s.name}: no outbox yet at {path}")
            continue
        try:
            # read-only: safe next to a running gateway, which keeps writing meanwhile
            ob = Outbox(path, fsync=s.fsync, max_bytes=s.max_outbox_bytes, read_only=True)
        except sqlite3.Error as e:
            print(f"{s.name}: cannot open {path}: {e}", file=sys.stderr)
            return 1
        try:
            if args.action == "status":
                text, doc = outbox_report(s.name, s.type, s.target(), path, ob.stats(), ob.file_bytes(), s.fsync,
                                          time.time_ns())
                if args.json:
                    docs.append(doc)
                else:
                    print(text)
            else:
                for d in ob.dead_letters(limit=args.limit):
                    failed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.failed_ns / 1e9))
                    lines = d.text().splitlines()
                    if args.json:
                        docs.append({"sink": s.name, "id": d.id, "failed_ns": d.failed_ns, "created_ns": d.created_ns,
                                     "points": d.points, "reason": d.reason, "lines": lines})
                        continue
                    print(f"{s.name} #{d.id} {failed} points={d.points} reason: {d.reason}")
                    for line in lines[:args.show_lines]:
                        print(f"    {line[:300]}")
                    if len(lines) > args.show_lines:
                        print(f"    ... {len(lines) - args.show_lines} more lines")
        finally:
            ob.close()
    if args.json:
        print(json.dumps(docs, indent=2))
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
    o.add_argument("action", choices=["status", "deadletter"],
                   help="status: depth, oldest age, drain rate, drops; deadletter: lines the server refused, with its reason")
    o.add_argument("-c", "--config", required=True, type=Path)
    o.add_argument("--data-dir", type=Path)
    o.add_argument("--sink", help="only this sink")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    o.add_argument("--limit", type=int, default=None, help="deadletter: at most this many entries")
    o.add_argument("--show-lines", type=int, default=3, help="deadletter: lines shown per entry")
    o.set_defaults(func=cmd_outbox)

    from firmware_sim.cli import build_parser as sim_parser

    s = sub.add_parser("sim", help="run simulated devices (firmware-sim)")
    sim_parser(s)
    s.set_defaults(func=cmd_sim)

    sc = sub.add_parser("score", help="score a CSV of timestamp,value with the gateway's anomaly detector")
    sc.add_argument("--input", required=True, type=Path, help="CSV: timestamp (ISO 8601 or epoch s), value")
    sc.add_argument("--output", required=True, type=Path, help="CSV written: timestamp, value, anomaly_score")
    sc.add_argument("--kind", choices=("gauge", "counter"), default="gauge",
                    help="a gauge (power, voltage...) or a cumulative counter (kWh)")
    sc.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="override a detector parameter, e.g. warmup_samples=50 (repeatable)")
    sc.add_argument("--reason", action="store_true", help="add a column naming the detector that fired")
    sc.set_defaults(func=cmd_score)

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
