#!/usr/bin/env python
"""Store-and-forward under a live load: an InfluxDB outage, the catch-up, and what it costs the disk.

    .venv/bin/python benchmarks/bench_outbox.py [--rate 10000] [--outage-s 60] [--steady-s 20] [--fsync normal]

Drives the gateway's OutboxSink (the real one: line protocol encoder, SQLite outbox, sender) with
synthetic meter readings at ``--rate`` points per second (1 point = 1 field value, as the gateway
counts them: meters of 10 fields, each polled once a second) against a private influxd, then:

1. steady state for ``--steady-s``: what is delivered, and the bytes this process wrote to disk
   per byte of compressed line protocol delivered (write amplification);
2. influxd terminated for ``--outage-s`` while readings keep coming: the backlog and its disk cost;
3. influxd started again on the same port and data directory: how fast the backlog drains while
   live readings keep coming, as a multiple of the live rate (target >= 5x);
4. steady state again, with the outbox file now at its high-water size.

Disk bytes are write_bytes of /proc/self/task/*/io (what the kernel accounts to this process'
threads for the block layer: SQLite's WAL, checkpoints and the database file; influxd is another
process, whose I/O /proc/self/io would add once it is reaped) and wchar (bytes passed to write(2),
which page-cache coalescing does not reduce). Use --workdir on the disk the outbox lives on.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.devservices import start_influxd  # noqa: E402
from gateway.sinks.influxdb import InfluxV1Writer, OutboxSink  # noqa: E402
from gateway.sinks.line_protocol import LineProtocolEncoder  # noqa: E402
from gateway.sinks.outbox import Outbox  # noqa: E402
from pipelines.batch import ReadingBatch  # noqa: E402
from pipelines.series import SeriesRegistry  # noqa: E402

FIELDS = ("voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3",
          "active_power", "power_factor", "frequency", "energy_import")
TICK_S = 0.1


def proc_io() -> dict[str, int]:
    """I/O of this process' threads. Summed per thread on purpose: /proc/self/io also adds the
    I/O of reaped children, and stopping influxd (our child) would add all of influxd's writes."""
    out: dict[str, int] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            text = (task / "io").read_text()
        except OSError:
            continue  # a thread that just ended
        for line in text.splitlines():
            k, v = line.split(":")
            out[k.strip()] = out.get(k.strip(), 0) + int(v)
    return out


class TimedWriter:
    """The sink's writer, with the start, end and outcome of every request recorded."""

    def __init__(self, inner: InfluxV1Writer) -> None:
        self.inner = inner
        self.log: list[tuple[float, float, int, int]] = []  # start, end, status, bytes

    def write(self, gz_payload: bytes):
        t0 = time.monotonic()
        result = self.inner.write(gz_payload)
        self.log.append((t0, time.monotonic(), result.status, len(gz_payload)))
        return result

    def describe(self) -> str:
        return self.inner.describe()

    def create_database(self):
        return self.inner.create_database()

    def close(self) -> None:
        self.inner.close()


class Load:
    """Meters of 10 fields, each polled once a second, spread over 0.1 s ticks; encoded by the
    gateway's own vectorised encoder, one ReadingBatch per tick."""

    def __init__(self, rate: int, sink: OutboxSink) -> None:
        self.sink = sink
        meters = max(10, rate // len(FIELDS))
        self.registry = SeriesRegistry()
        self.encoder = LineProtocolEncoder(self.registry)
        ids = [self.registry.register("energy_meter", {"site": "bench", "building": f"B{m % 20}",
                                                       "device": f"m{m:05d}", "model": "sdm630"}, f)
               for m in range(meters) for f in FIELDS]
        per_tick = int(round(1 / TICK_S))
        self.slices = [np.array(ids, dtype=np.int32).reshape(meters, len(FIELDS))[k::per_tick].ravel()
                       for k in range(per_tick)]
        self.base = np.tile(np.array([230, 231, 229, 5, 6, 4, 3500, 0.95, 50, 1000], dtype=np.float64),
                            meters).reshape(meters, len(FIELDS))
        self.rng = np.random.default_rng(1)
        self.tick = 0
        self.points = 0
        self.max_lag_s = 0.0

    def emit(self) -> None:
        k = self.tick % len(self.slices)
        series = self.slices[k]
        values = np.round(self.rng.normal(1.0, 0.01, len(series)) * self.base[k::len(self.slices)].ravel(), 2)
        lp, n = self.encoder.encode(ReadingBatch.from_arrays(series, time.time_ns(), values))
        self.sink.add(lp, n)
        self.points += n
        self.tick += 1

    async def run(self, stop: asyncio.Event) -> None:
        next_t = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            self.max_lag_s = max(self.max_lag_s, now - next_t)
            while next_t <= now:  # catch up after a stall, so the average rate stays the live rate
                self.emit()
                next_t += TICK_S
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))


class Meter:
    """Snapshots of the counters a phase is measured between."""

    def __init__(self, load: Load, sink: OutboxSink) -> None:
        self.load, self.sink = load, sink

    def snap(self) -> dict[str, float]:
        io = proc_io()
        c = self.sink.counters
        return {"t": time.monotonic(), "generated": self.load.points, "delivered": c.points_delivered,
                "delivered_bytes": c.bytes_delivered, "accepted_bytes": self.sink.outbox.queued_bytes + c.bytes_delivered,
                "write_bytes": io["write_bytes"], "wchar": io["wchar"], "queued": self.sink.outbox.stats().points}


def phase_row(name: str, a: dict, b: dict) -> dict:
    dt = b["t"] - a["t"]
    delivered_b = b["delivered_bytes"] - a["delivered_bytes"]
    accepted_b = b["accepted_bytes"] - a["accepted_bytes"]
    wb = b["write_bytes"] - a["write_bytes"]
    wc = b["wchar"] - a["wchar"]
    return {"phase": name, "seconds": dt, "live": (b["generated"] - a["generated"]) / dt,
            "delivered": (b["delivered"] - a["delivered"]) / dt, "accepted_bytes": accepted_b,
            "delivered_bytes": delivered_b, "write_bytes": wb, "wchar": wc,
            "wa_delivered": wb / delivered_b if delivered_b else float("nan"),
            "wa_accepted": wb / accepted_b if accepted_b else float("nan"),
            "wchar_accepted": wc / accepted_b if accepted_b else float("nan"),
            "queued_end": b["queued"]}


async def bench(args: argparse.Namespace, workdir: Path) -> None:
    influxd = start_influxd(workdir / "influxd")
    url = f"http://127.0.0.1:{influxd.port}"
    outbox = Outbox(workdir / "outbox-bench.sqlite3", fsync=args.fsync, max_bytes=args.max_outbox_bytes)
    writer = TimedWriter(InfluxV1Writer(url, "bench", timeout_s=10.0))
    sink = OutboxSink("bench", writer, outbox, args.batch_max_points, 1.0,
                      max_request_bytes=args.max_request_bytes, retry_max_s=2.0, create_database=True)
    load = Load(args.rate, sink)
    # how long a commit (compress + one SQLite transaction, with its fsync under fsync=batch) holds the loop
    commit_s: list[float] = []
    put = outbox.put

    def timed_put(*a, **kw):
        t = time.perf_counter()
        try:
            return put(*a, **kw)
        finally:
            commit_s.append(time.perf_counter() - t)

    outbox.put = timed_put  # type: ignore[method-assign]
    meter = Meter(load, sink)
    stop = asyncio.Event()
    sink.start()
    gen = asyncio.create_task(load.run(stop))
    rows = []
    try:
        print(f"live load: {args.rate} points/s ({len(load.slices[0]) * len(load.slices)} series), "
              f"fsync={args.fsync}, batches of <= {args.batch_max_points} points or 1 s, "
              f"requests of <= {args.max_request_bytes >> 10} KiB; outbox and influxd in {workdir}", flush=True)
        await asyncio.sleep(args.warmup_s)
        a = meter.snap()
        await asyncio.sleep(args.steady_s)
        b = meter.snap()
        rows.append(phase_row("steady", a, b))

        # in a thread: influxd's shutdown takes seconds, which must not stall the live load
        await asyncio.to_thread(influxd.stop)  # terminated: connections are refused from now on
        print(f"influxd stopped for {args.outage_s:.0f} s", flush=True)
        await asyncio.sleep(args.outage_s)
        c = meter.snap()
        rows.append(phase_row("outage", b, c))
        backlog = c["queued"]
        file_size = outbox.file_bytes()

        influxd = await asyncio.to_thread(start_influxd, workdir / "influxd", influxd.port)
        t_restart = time.monotonic()
        restart = meter.snap()
        requests_before = len(writer.log)
        deadline = t_restart + max(120.0, 5 * args.outage_s)
        while True:
            await asyncio.sleep(0.02)
            oldest = outbox.oldest(limit=1)
            delivered_since = sink.counters.points_delivered > restart["delivered"]
            # drained: what is queued is only the live batch being filled or sent
            if delivered_since and (not oldest or time.time_ns() - oldest[0].created_ns < 3e9):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the backlog did not drain within {deadline - t_restart:.0f} s")
        d = meter.snap()
        # the catch-up is timed from the first successful request after the restart (the sender may
        # still have been waiting out its backoff when influxd came back) to the drained queue
        ok = [r for r in writer.log[requests_before:] if 200 <= r[2] < 300]
        first_start = ok[0][0]
        catch_start = dict(restart, t=first_start)
        rows.append(phase_row("catch-up", catch_start, d))
        catch_requests = ok
        await asyncio.sleep(args.steady_s)
        e = meter.snap()
        rows.append(phase_row("steady after", d, e))
        # everything from the first steady phase on: the outage's pages reach the database file
        # at a checkpoint, which may fall in any later phase
        rows.append(phase_row("whole run", a, e))
    finally:
        stop.set()
        await gen
        await sink.close(drain_timeout_s=5.0)
        influxd.stop()

    live = rows[0]["live"]
    catch = rows[2]
    print()
    print(f"{'phase':<13} {'s':>6} {'live pts/s':>11} {'delivered pts/s':>16} {'x live':>7} "
          f"{'disk MiB':>9} {'LP gz MiB':>10} {'WA':>6} {'wchar/LP':>9}")
    for r in rows:
        lp_bytes = r["accepted_bytes"] if r["phase"] == "outage" else r["delivered_bytes"]
        wa = r["wa_accepted"] if r["phase"] == "outage" else r["wa_delivered"]
        wc = r["wchar"] / lp_bytes if lp_bytes else float("nan")
        print(f"{r['phase']:<13} {r['seconds']:>6.1f} {r['live']:>11.0f} {r['delivered']:>16.0f} "
              f"{r['delivered'] / live:>7.1f} {r['write_bytes'] / 2**20:>9.2f} {lp_bytes / 2**20:>10.2f} "
              f"{wa:>6.2f} {wc:>9.2f}")
    drain_s = d["t"] - first_start
    print()
    print(f"backlog at restart: {backlog} points ({rows[1]['accepted_bytes'] / 2**20:.2f} MiB compressed; "
          f"outbox file {file_size[0] / 2**20:.1f} MiB + WAL {file_size[1] / 2**20:.1f} MiB)")
    sizes = [r[3] for r in catch_requests]
    print(f"first request after the restart sent {first_start - t_restart:.1f} s after it (backoff); backlog "
          f"drained {d['t'] - first_start:.1f} s later in {len(catch_requests)} requests of up to "
          f"{max(sizes) / 2**20:.2f} MiB, each taking up to {max(r[1] - r[0] for r in catch_requests):.2f} s")
    print(f"catch-up delivery rate {catch['delivered']:.0f} points/s = {catch['delivered'] / live:.1f}x the live "
          f"rate ({live:.0f} points/s), net backlog reduction {backlog / drain_s:.0f} points/s "
          f"(target: >= 5x)")
    print(f"write amplification (disk write_bytes per byte of compressed line protocol): steady "
          f"{rows[0]['wa_delivered']:.2f} (target <= 2), outage {rows[1]['wa_accepted']:.2f} per byte queued, "
          f"catch-up {catch['wa_delivered']:.2f}, steady after {rows[3]['wa_delivered']:.2f}, "
          f"whole run {rows[4]['wa_delivered']:.2f}")
    q = np.percentile(np.array(commit_s) * 1000, [50, 99, 100])
    print(f"commit (gzip + transaction): p50 {q[0]:.1f} ms, p99 {q[1]:.1f} ms, max {q[2]:.1f} ms over {len(commit_s)} commits")
    print(f"generator: {load.points} points, max lag {load.max_lag_s * 1000:.0f} ms; "
          f"{sink.counters.requests} requests, {sink.counters.write_failures} failed, "
          f"{sink.counters.points_dropped} points dropped")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=int, default=10_000, help="live points per second (default 10000)")
    p.add_argument("--outage-s", type=float, default=60.0, help="how long influxd is down (default 60)")
    p.add_argument("--steady-s", type=float, default=20.0, help="steady-state phases (default 20)")
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--fsync", choices=["batch", "normal", "off"], default="normal")
    p.add_argument("--batch-max-points", type=int, default=5000)
    p.add_argument("--max-request-bytes", type=int, default=1 << 20)
    p.add_argument("--max-outbox-bytes", type=int, default=512 << 20)
    p.add_argument("--workdir", type=Path, help="default: a temporary directory, removed afterwards")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    # the outage makes the sender log its failures; the benchmark reports them in its summary
    logging.getLogger("gateway.sinks").setLevel(logging.ERROR)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        check_disk(args.workdir)
        asyncio.run(bench(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-outbox-") as d:
            check_disk(Path(d))
            asyncio.run(bench(args, Path(d)))
    return 0


def check_disk(path: Path) -> None:
    """Writes to a RAM file system never reach the block layer: the disk figures would read 0."""
    best, fstype = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            mount, kind = parts[1], parts[2]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, kind
    if fstype in ("tmpfs", "ramfs"):
        print(f"warning: {path} is on {fstype}; pass --workdir on the disk the gateway uses for its outbox",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
