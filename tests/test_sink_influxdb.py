"""The outbox sink against a real InfluxDB 1.x: partial 400s, the byte bound, a full disk.

Each test drives an OutboxSink in this process against a private influxd (the session one, or
one of its own started on a port chosen beforehand, so that "down" is a real refused connection
and "back" a real server) and checks InfluxDB's contents and the sink's counts exactly.
"""
from __future__ import annotations

import asyncio
import gzip
import logging
import os
import time

from gateway.devservices import free_port, start_influxd
from gateway.sinks.influxdb import InfluxV1Writer, OutboxSink
from gateway.sinks.outbox import Outbox
from tests.conftest import Influx


def make_sink(url: str, db: str, path, max_bytes: int = 512 << 20, batch_max_points: int = 100_000,
              retry_max_s: float = 1.0, fsync: str = "normal") -> OutboxSink:
    return OutboxSink("t", InfluxV1Writer(url, db, timeout_s=5.0), Outbox(path, fsync=fsync, max_bytes=max_bytes),
                      batch_max_points, batch_max_age_s=0.2, retry_max_s=retry_max_s, create_database=True)


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def field_values(influx: Influx, db: str, measurement: str, field: str) -> dict[tuple[str, int], object]:
    return {(r["device"], r["time"]): r[field]
            for r in influx.rows(f'SELECT "{field}" FROM "{measurement}" GROUP BY device', db)}


def test_partial_400_moves_exactly_the_refused_lines_to_dead_letters(influx, tmp_path):
    db = f"partial_{time.time_ns()}"
    sink = make_sink(influx.url, db, tmp_path / "outbox.sqlite3")
    t0 = time.time_ns() - 3600 * 10**9
    good = {}  # (device, ts) -> value that must be stored
    refused = []  # lines influxd must refuse

    def line(device: str, ts: int, value: str) -> bytes:
        return b"meter,device=%s power=%s %d" % (device.encode(), value.encode(), ts)

    # batch 1: establishes power as a float
    first = [line(f"d{i}", t0 + i, f"{i}.5") for i in range(20)]
    good.update({(f"d{i}", t0 + i): i + 0.5 for i in range(20)})
    # batch 2: good lines mixed with strings for the same field (field type conflict) and a line
    # influxd cannot parse at all
    mixed = []
    for i in range(60):
        ts = t0 + 1000 + i
        if i in (3, 17, 18, 41):
            mixed.append(line(f"d{i}", ts, f'"text{i}"'))
            refused.append(mixed[-1])
        else:
            mixed.append(line(f"d{i}", ts, f"{i}.25"))
            good[(f"d{i}", ts)] = i + 0.25
    mixed.insert(30, b"meter,device=broken power=")
    refused.append(b"meter,device=broken power=")
    # batch 3: a new measurement whose field arrives as float and string in one request, which
    # influxd 1.x refuses as a whole without saying which line is wrong
    newm = [b"other,device=a v=1.5 %d" % (t0 + 5), b'other,device=a v="x" %d' % (t0 + 6),
            b"other,device=b v=2.5 %d" % (t0 + 7)]
    refused.append(newm[1])
    points_in = 20 + 61 + 3

    async def main() -> None:
        sink.add(b"\n".join(first) + b"\n", 20)
        sink.commit()
        sink.add(b"\n".join(mixed) + b"\n", 61)
        sink.commit()
        sink.add(b"\n".join(newm) + b"\n", 3)
        sink.commit()
        # three batches queued before the sender starts: the first request carries all three,
        # is refused, and the sink narrows it down to the batch, then to the lines
        sink.start()
        await wait_until(lambda: sink.outbox.stats().batches == 0, 30, "the outbox to empty")
        await sink.close()

    asyncio.run(main())
    c = sink.counters
    assert c.points_delivered + c.points_dead_lettered == points_in
    assert c.points_dead_lettered == len(refused)
    stored = field_values(influx, db, "meter", "power")
    assert stored == good, "InfluxDB holds exactly the good lines, with their values"
    other = field_values(influx, db, "other", "v")
    assert other == {("a", t0 + 5): 1.5, ("b", t0 + 7): 2.5}
    ob = Outbox(tmp_path / "outbox.sqlite3", read_only=True)
    dead = ob.dead_letters()
    assert sorted(d.text().strip().encode() for d in dead) == sorted(refused)
    reasons = {d.text().strip(): d.reason for d in dead}
    assert "field type conflict" in reasons['meter,device=d3 power="text3" %d' % (t0 + 1003)]
    assert "unable to parse" in reasons["meter,device=broken power="]
    assert "field type conflict" in reasons['other,device=a v="x" %d' % (t0 + 6)]
    st = ob.stats()
    assert st.counters["dead_lettered_points"] == len(refused)
    assert st.counters["delivered_points"] == points_in - len(refused)
    ob.close()


def noisy_batch(seed: int, t0: int, lines: int = 200) -> tuple[bytes, int]:
    """Line protocol that does not compress away (two integer fields per line)."""
    rnd = os.urandom(lines * 8)
    body = b"".join(b"noise,dev=d%d a=%di,b=%di %d\n" % (
        seed % 7, int.from_bytes(rnd[i * 8:i * 8 + 4], "big"), int.from_bytes(rnd[i * 8 + 4:i * 8 + 8], "big"),
        t0 + seed * lines + i) for i in range(lines))
    return body, 2 * lines


def count_points(influx: Influx, db: str, measurement: str) -> int:
    total = 0
    for s in influx.query(f'SELECT count(*) FROM "{measurement}"', db):
        total += sum(v for v in s["values"][0][1:] if isinstance(v, int))
    return total


def outage_then_recovery(tmp_path, max_bytes: int, batches: int, tune=None) -> tuple[OutboxSink, Influx, str, int]:
    """Feed a sink whose InfluxDB is down (nothing listens on its port yet), then start influxd on
    that port and let the backlog drain. Returns the sink, the server, the database, points in."""
    port = free_port()
    db = f"bound_{time.time_ns()}"
    sink = make_sink(f"http://127.0.0.1:{port}", db, tmp_path / "outbox.sqlite3", max_bytes=max_bytes)
    if tune:
        tune(sink.outbox)
    t0 = time.time_ns() - 3600 * 10**9
    points_in = 0
    svc = None

    async def main() -> None:
        nonlocal points_in, svc
        sink.start()
        for i in range(batches):
            body, n = noisy_batch(i, t0)
            sink.add(body, n)
            sink.commit()
            points_in += n
            await asyncio.sleep(0)
        assert sink.counters.points_delivered == 0
        svc = start_influxd(tmp_path / "influxd", port=port)
        await wait_until(lambda: sink.outbox.stats().batches == 0, 30, "the backlog to drain")
        await sink.close()

    try:
        asyncio.run(main())
    finally:
        if svc is not None:
            svc.stop()
    # the counts are checked against a fresh start of the same data directory
    svc = start_influxd(tmp_path / "influxd", port=port)
    try:
        influx = Influx(svc)
        stored = count_points(influx, db, "noise")
    finally:
        svc.stop()
    return sink, stored, db, points_in


def test_tiny_byte_bound_drops_oldest_and_counts_exactly(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.sinks")
    sink, stored, db, points_in = outage_then_recovery(tmp_path, max_bytes=64 << 10, batches=60)
    c = sink.counters
    assert c.points_dropped > 0
    # nothing vanishes: every point fed was either delivered or counted as dropped
    assert c.points_delivered + c.points_dropped == points_in
    assert stored == c.points_delivered, "InfluxDB holds exactly what the sink says it delivered"
    events = [r for r in caplog.records if getattr(r, "event", None) == "outbox_dropped"]
    assert events and events[0].points > 0 and events[0].levelno == logging.WARNING
    ob = Outbox(tmp_path / "outbox.sqlite3", read_only=True)
    counters = ob.stats().counters
    assert counters["dropped_points"] == c.points_dropped
    assert counters["delivered_points"] == c.points_delivered
    ob.close()


def test_full_disk_is_reported_counted_and_survived(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.sinks")

    def small_disk(outbox: Outbox) -> None:
        # SQLite answers SQLITE_FULL past this many pages, as it does when the file system is full
        pages = outbox.db.execute("PRAGMA page_count").fetchone()[0]
        outbox.db.execute(f"PRAGMA max_page_count = {pages + 40}")

    sink, stored, db, points_in = outage_then_recovery(tmp_path, max_bytes=512 << 20, batches=60, tune=small_disk)
    c = sink.counters
    assert c.disk_full_events >= 1
    assert c.points_dropped > 0
    assert c.points_delivered + c.points_dropped == points_in
    assert stored == c.points_delivered
    full = [r for r in caplog.records if getattr(r, "event", None) == "outbox_disk_full"]
    assert full and full[0].levelno == logging.ERROR and "full" in full[0].getMessage()


def test_fsync_batch_is_full_synchronous_on_the_sink(influx, tmp_path):
    sink = make_sink(influx.url, "x", tmp_path / "o.sqlite3", fsync="batch")
    assert sink.outbox.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    sink.outbox.close()
    sink.writer.close()


def test_delivered_bytes_are_the_stored_gzip_members(influx, tmp_path):
    """What goes on the wire is the stored batches concatenated, not re-encoded."""
    db = f"raw_{time.time_ns()}"
    sink = make_sink(influx.url, db, tmp_path / "o.sqlite3")
    t0 = time.time_ns() - 3600 * 10**9
    bodies = [noisy_batch(i, t0, 50) for i in range(5)]

    async def main() -> None:
        for body, n in bodies:
            sink.add(body, n)
            sink.commit()
        queued = sink.outbox.oldest(limit=10)
        assert b"".join(gzip.decompress(b.payload) for b in queued) == b"".join(b for b, _ in bodies)
        sink.start()
        await wait_until(lambda: sink.outbox.stats().batches == 0, 20, "delivery")
        await sink.close()

    asyncio.run(main())
    assert sink.counters.requests == 1  # one request carried all five batches
    assert count_points(influx, db, "noise") == sum(n for _, n in bodies)
