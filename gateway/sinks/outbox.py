"""The on-disk outbox: a batch counts as accepted only once it is committed here.

SQLite in WAL mode: stdlib, crash-safe, one file per sink. Batches are stored gzip-compressed
exactly as they will be sent, delivered oldest first and deleted only after the server answered
2xx. Writes are one transaction per batch (never per point), and a delivered batch is deleted in
the transaction of the next one, which keeps SD-card wear down (docs/data-path.md, "Measured").

The outbox is bounded in bytes: a put that would take the compressed payload of the queue (plus
the dead letters) past ``max_bytes`` first drops the oldest batches, and every dropped point is
counted in the ``meta`` table. A full file system (SQLITE_FULL, ENOSPC) shrinks the bound to what
fits and is counted too; nothing here raises into the data path.

Only one process writes an outbox (the gateway); ``cgw outbox status`` reads it alongside.
"""
from __future__ import annotations

import errno
import gzip
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("gateway.sinks")

# fsync policy of the configuration -> PRAGMA synchronous under WAL
SYNCHRONOUS = {"batch": "FULL", "normal": "NORMAL", "off": "OFF"}
DEFAULT_MAX_BYTES = 512 << 20
# dead letters are kept up to this share of max_bytes; older ones are pruned (and counted)
DEAD_LETTER_SHARE = 8
# drain rate: (delivered now - delivered at a checkpoint 30 to 60 s old) / elapsed
RATE_WINDOW_NS = 30_000_000_000
GZIP_LEVEL = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    points INTEGER NOT NULL,
    payload BLOB NOT NULL          -- gzip-compressed line protocol
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    failed_ns INTEGER NOT NULL,
    points INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL          -- gzip-compressed line protocol the server rejected
);
-- totals since the file was created: delivered_points/_batches, dropped_points/_batches,
-- dead_lettered_points, dead_letters_pruned_points, disk_full_events; and the drain-rate window:
-- rate_prev_ns/_points, rate_cur_ns/_points, last_delivery_ns
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or the OS' ENOSPC/EDQUOT."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class QueuedBatch:
    id: int
    created_ns: int
    points: int
    payload: bytes  # gzip


@dataclass(frozen=True, slots=True)
class PutResult:
    stored: bool  # False: the batch itself could not be written (disk full even after dropping)
    dropped_points: int = 0  # older points dropped to make room (plus this batch's when not stored)
    dropped_batches: int = 0
    disk_full: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    created_ns: int
    failed_ns: int
    points: int
    reason: str
    payload: bytes  # gzip

    def text(self) -> str:
        try:
            return gzip.decompress(self.payload).decode("utf-8", "replace")
        except (OSError, EOFError) as e:
            return f"<unreadable payload: {e}>"


@dataclass(frozen=True, slots=True)
class OutboxStats:
    batches: int
    points: int
    bytes: int
    oldest_created_ns: int | None
    dead_letters: int
    dead_letter_points: int = 0
    dead_letter_bytes: int = 0
    max_bytes: int = DEFAULT_MAX_BYTES
    counters: dict[str, int] = field(default_factory=dict)

    def drain_rate(self, now_ns: int | None = None) -> float:
        """Points delivered per second over the last 30 to 60 s; 0 once nothing was delivered for a minute."""
        c = self.counters
        now_ns = now_ns or time.time_ns()
        last = c.get("last_delivery_ns", 0)
        if not last or now_ns - last > 2 * RATE_WINDOW_NS:
            return 0.0
        t0, p0 = (c["rate_prev_ns"], c["rate_prev_points"]) if c.get("rate_prev_ns") else (
            c.get("rate_cur_ns", 0), c.get("rate_cur_points", 0))
        if not t0 or now_ns <= t0:
            return 0.0
        return (c.get("delivered_points", 0) - p0) * 1e9 / (now_ns - t0)


class Outbox:
    """One sink's queue on disk.

    Write transactions are few and carry everything due: a put also deletes the batches
    delivered since the previous write and saves the counters, so the pages freed by the delete
    are reused by the insert in the same transaction and written once. That halves what a
    steady state writes to the SD card (docs/data-path.md, "Measured"). Until then a delivered
    batch is only marked in memory: a crash in that second sends it again, which InfluxDB
    absorbs (same bytes, same timestamps).
    """

    def __init__(self, path: Path | str, fsync: str = "normal", max_bytes: int = DEFAULT_MAX_BYTES,
                 read_only: bool = False) -> None:
        """Open (and create) the outbox. ``read_only`` is for inspection next to a running gateway:
        no schema changes, no writes, nothing that could take the writer's lock."""
        if fsync not in SYNCHRONOUS:
            raise ValueError(f"fsync must be one of {', '.join(SYNCHRONOUS)}, not {fsync!r}")
        self.path = Path(path)
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: created by whoever builds the sink, used from the event loop only
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        if not read_only:
            # 1 KiB pages (takes effect for a new file only): the pages every commit rewrites
            # besides the payload (b-tree leaf, header, freelist, counters) cost 1 KiB each, not 4
            self.db.execute("PRAGMA page_size=1024")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={SYNCHRONOUS[fsync]}")
            # Debian builds SQLite with secure_delete on, which zeroes and writes every freed page:
            # each delivered batch would be written a second time. FAST only clears what is being
            # written anyway; the readings are in InfluxDB by then, nothing here is secret
            self.db.execute("PRAGMA secure_delete=FAST")
            # ~4 MiB of WAL between checkpoints, as SQLite's default is with 4 KiB pages
            self.db.execute("PRAGMA wal_autocheckpoint=4096")
            self.db.executescript(_SCHEMA)
        self._has_meta = bool(self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone())
        self.meta: dict[str, int] = dict(self.db.execute("SELECT key, value FROM meta").fetchall()) \
            if self._has_meta else {}
        # only this process writes, so sizes are tracked here instead of summed on every put
        self._queued_bytes, self._dl_bytes = self.db.execute(
            "SELECT (SELECT coalesce(sum(length(payload)), 0) FROM batch),"
            " (SELECT coalesce(sum(length(payload)), 0) FROM dead_letter)").fetchone()
        # after a full disk the bound shrinks to what fitted; reset on restart
        self._disk_limit: int | None = None
        # delivered, deleted with the next write: ids, and the highest delivered id
        self._to_delete: list[int] = []
        self._delivered_through = 0
        # counter changes not written yet: increments, and values that replace (the rate window)
        self._deltas: dict[str, int] = {}
        self._sets: dict[str, int] = {}
        self._last_write = time.monotonic()

    @classmethod
    def open(cls, path: Path | str, fsync: str = "normal", max_bytes: int = DEFAULT_MAX_BYTES) -> "Outbox":
        """Open the outbox for the gateway. A file SQLite cannot read (a power cut under
        ``fsync = "off"``, a failing card) is moved aside, kept for inspection, and a new outbox is
        started: the gateway keeps taking readings instead of failing at every start."""
        try:
            return cls(path, fsync, max_bytes)
        except sqlite3.OperationalError:
            raise  # cannot open or create at all (permissions, a full disk): say so at start
        except sqlite3.DatabaseError as e:
            path = Path(path)
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = path.with_name(path.name + suffix)
                if src.exists():
                    src.rename(aside.with_name(aside.name + suffix))
            log.error(str(e), extra={"event": "outbox_corrupt", "path": str(path), "moved_to": str(aside)})
            return cls(path, fsync, max_bytes)

    # --- counters -----------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The persisted counters with what this process has not written yet."""
        c = dict(self.meta)
        for key, value in self._deltas.items():
            c[key] = c.get(key, 0) + value
        c.update(self._sets)
        return c

    def _count(self, **deltas: int) -> None:
        for key, value in deltas.items():
            if value:
                self._deltas[key] = self._deltas.get(key, 0) + value

    def _count_delivery(self, points: int, batches: int) -> None:
        now = time.time_ns()
        self._count(delivered_points=points, delivered_batches=batches)
        c = self.counters()
        total = c.get("delivered_points", 0)
        if not c.get("rate_cur_ns"):
            self._sets.update(rate_cur_ns=now, rate_cur_points=total - points)
        elif now - c["rate_cur_ns"] >= RATE_WINDOW_NS:
            self._sets.update(rate_prev_ns=c["rate_cur_ns"], rate_prev_points=c["rate_cur_points"],
                              rate_cur_ns=now, rate_cur_points=total - points)
        self._sets["last_delivery_ns"] = now

    # --- write transactions -------------------------------------------------------------------
    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite may already have rolled back on SQLITE_FULL

    def _transaction(self, body: Callable[[], dict[str, int]] | None = None) -> None:
        """One write transaction: the pending deletes, ``body`` (which returns counter increments
        of its own) and the counters. Nothing in memory changes unless it commits."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(self._to_delete), 500):
                chunk = self._to_delete[i:i + 500]
                self.db.execute(f"DELETE FROM batch WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            own = body() if body is not None else {}
            values = self.counters()
            for key, value in own.items():
                values[key] = values.get(key, 0) + value
            changed = {k: v for k, v in values.items() if self.meta.get(k) != v}
            self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", changed.items())
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.meta.update(changed)
        self._to_delete.clear()
        self._deltas.clear()
        self._sets.clear()
        self._last_write = time.monotonic()

    def flush(self) -> None:
        """Write pending deletes and counters now (idle, or before closing)."""
        if self._to_delete or self._deltas or self._sets:
            self._transaction()

    def flush_if_idle(self, after_s: float) -> None:
        if time.monotonic() - self._last_write >= after_s:
            self.flush()

    # --- the budget ---------------------------------------------------------------------------
    @property
    def queued_bytes(self) -> int:
        """Compressed bytes waiting for delivery."""
        return self._queued_bytes

    def _budget(self) -> int:
        limit = self.max_bytes if self._disk_limit is None else min(self.max_bytes, self._disk_limit)
        return max(0, limit - self._dl_bytes)

    def _drop_oldest(self, need: int) -> tuple[int, int, int]:
        """Delete the oldest batches until ``need`` more bytes fit the budget. Inside a transaction."""
        excess = self._queued_bytes + need - self._budget()
        if excess <= 0:
            return 0, 0, 0
        freed = points = batches = 0
        last_id = None
        for row_id, n, size in self.db.execute(
                "SELECT id, points, length(payload) FROM batch WHERE id > ? ORDER BY id", (self._delivered_through,)):
            last_id = row_id
            freed += size
            points += n
            batches += 1
            if freed >= excess:
                break
        if last_id is not None:
            self.db.execute("DELETE FROM batch WHERE id <= ?", (last_id,))
        return points, batches, freed

    # --- writes -------------------------------------------------------------------------------
    def put(self, line_protocol: bytes, points: int, created_ns: int | None = None) -> PutResult:
        """Commit one batch, dropping the oldest ones first if the bound requires it. Never raises
        for a full disk: the result says what was dropped or lost."""
        payload = gzip.compress(line_protocol, compresslevel=GZIP_LEVEL)
        return self.put_compressed(payload, points, created_ns)

    def put_compressed(self, payload: bytes, points: int, created_ns: int | None = None) -> PutResult:
        created = created_ns if created_ns is not None else time.time_ns()
        size = len(payload)
        disk_full = False
        error = ""
        for attempt in range(4):
            if size > self._budget():
                # larger than the whole bound: keeping it would mean dropping everything else
                self._count(dropped_points=points, dropped_batches=1)
                return PutResult(False, points, 1, disk_full, error or f"batch of {size} bytes exceeds the outbox bound")
            dropped: tuple[int, int, int] = (0, 0, 0)

            def body() -> dict[str, int]:
                nonlocal dropped
                dropped = self._drop_oldest(size)
                self.db.execute("INSERT INTO batch (created_ns, points, payload) VALUES (?, ?, ?)",
                                (created, points, payload))
                return {"dropped_points": dropped[0], "dropped_batches": dropped[1]}

            try:
                self._transaction(body)
            except (sqlite3.OperationalError, OSError) as e:
                if not is_disk_full(e):
                    raise
                disk_full = True
                error = str(e)
                if attempt == 0:
                    self._count(disk_full_events=1)
                # what is queued now is what fits: make that (less a margin for the new batch and
                # SQLite's page overhead, more each time) the bound until the next start
                self._disk_limit = max(0, int((self._queued_bytes + self._dl_bytes) * (0.9 ** (attempt + 1))) - size)
                continue
            self._queued_bytes += size - dropped[2]
            return PutResult(True, dropped[0], dropped[1], disk_full, error)
        self._count(dropped_points=points, dropped_batches=1)
        return PutResult(False, points, 1, True, error)

    def oldest(self, limit: int = 1, after_id: int = 0) -> list[QueuedBatch]:
        """The oldest batches not delivered yet."""
        rows = self.db.execute(
            "SELECT id, created_ns, points, payload FROM batch WHERE id > ? ORDER BY id LIMIT ?",
            (max(after_id, self._delivered_through), limit)).fetchall()
        return [QueuedBatch(*r) for r in rows]

    def next_request(self, max_bytes: int, max_batches: int) -> list[QueuedBatch]:
        """The oldest undelivered batches that fit in ``max_bytes`` together (at least one): sizes
        first, then only the chosen payloads, so a deep queue is never read into memory."""
        ids, size = [], 0
        for row_id, n in self.db.execute(
                "SELECT id, length(payload) FROM batch WHERE id > ? ORDER BY id LIMIT ?",
                (self._delivered_through, max_batches)):
            if ids and size + n > max_bytes:
                break
            ids.append(row_id)
            size += n
        if not ids:
            return []
        rows = self.db.execute(
            "SELECT id, created_ns, points, payload FROM batch WHERE id BETWEEN ? AND ? ORDER BY id", (ids[0], ids[-1]))
        return [QueuedBatch(*r) for r in rows]

    def _present(self, batches: list[QueuedBatch]) -> set[int]:
        """Which of these batches are still queued (same id and creation time: a batch dropped
        while being sent and a later one that got its id are not confused)."""
        want = {b.id: b.created_ns for b in batches}
        ids = list(want)
        present: set[int] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self.db.execute(f"SELECT id, created_ns FROM batch WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            present.update(row_id for row_id, created in rows if want[row_id] == created)
        return present

    def delivered(self, batches: list[QueuedBatch]) -> int:
        """The server stored these batches. They leave the queue now and the disk with the next
        write. Returns the points of batches that had been dropped for the bound meanwhile: they
        landed after all, so they move from the dropped to the delivered count."""
        present = self._present(batches)
        gone = [b for b in batches if b.id not in present]
        self._to_delete.extend(b.id for b in batches if b.id in present)
        self._delivered_through = max(self._delivered_through, max(b.id for b in batches))
        self._queued_bytes -= sum(len(b.payload) for b in batches if b.id in present)
        undrop = sum(b.points for b in gone)
        self._count(dropped_points=-undrop, dropped_batches=-len(gone))
        self._count_delivery(sum(b.points for b in batches), len(batches))
        return undrop

    def reject_lines(self, batch: QueuedBatch, rejected: list[tuple[bytes, str, int]],
                     delivered_points: int) -> int:
        """The server stored part of ``batch`` and refused ``rejected`` (line, reason, points): the
        refused lines become dead letters and the batch leaves the queue, in one transaction.
        Returns the points of the batch if it had been dropped for the bound meanwhile."""
        now = time.time_ns()
        rows = [(batch.created_ns, now, pts, reason, gzip.compress(line + b"\n", compresslevel=GZIP_LEVEL))
                for line, reason, pts in rejected]
        return self._settle_rejected(batch, rows, delivered_points)

    def _settle_rejected(self, batch: QueuedBatch, rows: list[tuple], delivered_points: int) -> int:
        present = bool(self._present([batch]))
        new_dl = sum(len(r[4]) for r in rows)
        pruned = (0, 0)

        def body() -> dict[str, int]:
            nonlocal pruned
            self.db.execute("DELETE FROM batch WHERE id = ?", (batch.id,))
            self.db.executemany(
                "INSERT INTO dead_letter (created_ns, failed_ns, points, reason, payload) VALUES (?, ?, ?, ?, ?)", rows)
            pruned = self._prune_dead_letters(new_dl)
            return {"dead_lettered_points": sum(r[2] for r in rows), "dead_letters_pruned_points": pruned[0]}

        self._transaction(body)
        self._delivered_through = max(self._delivered_through, batch.id)
        if present:
            self._queued_bytes -= len(batch.payload)
        self._dl_bytes += new_dl - pruned[1]
        undrop = 0 if present else batch.points
        self._count(dropped_points=-undrop, dropped_batches=0 if present else -1)
        if delivered_points:
            self._count_delivery(delivered_points, 1)
        return undrop

    def _prune_dead_letters(self, adding: int) -> tuple[int, int]:
        """Keep dead letters within their share of the bound, oldest pruned first."""
        cap = self.max_bytes // DEAD_LETTER_SHARE
        excess = self._dl_bytes + adding - cap
        if excess <= 0:
            return 0, 0
        freed = points = 0
        last_id = None
        for row_id, n, size in self.db.execute("SELECT id, points, length(payload) FROM dead_letter ORDER BY id"):
            last_id, freed, points = row_id, freed + size, points + n
            if freed >= excess:
                break
        if last_id is not None:
            self.db.execute("DELETE FROM dead_letter WHERE id <= ?", (last_id,))
        return points, freed

    def dead_letter(self, batch: QueuedBatch, reason: str) -> int:
        """Move a whole batch to the dead letters (the server refused all of it)."""
        try:
            text = gzip.decompress(batch.payload).rstrip(b"\n")
        except (OSError, EOFError):
            text = b""
        if text:
            return self.reject_lines(batch, [(text, reason, batch.points)], 0)
        # an unreadable payload is kept as it is, so that nothing is silently thrown away
        return self._settle_rejected(batch, [(batch.created_ns, time.time_ns(), batch.points, reason, batch.payload)], 0)

    # --- reads --------------------------------------------------------------------------------
    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        sql = "SELECT id, created_ns, failed_ns, points, reason, payload FROM dead_letter ORDER BY id"
        rows = self.db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        return [DeadLetter(*r) for r in rows]

    def stats(self) -> OutboxStats:
        batches, points, size, oldest = self.db.execute(
            "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(length(payload)), 0), min(created_ns) "
            "FROM batch WHERE id > ?", (self._delivered_through,)).fetchone()
        dead, dead_points, dead_bytes = self.db.execute(
            "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(length(payload)), 0) FROM dead_letter").fetchone()
        counters = self.counters()
        if self.read_only and self._has_meta:
            counters = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        return OutboxStats(batches, points, size, oldest, dead, dead_points, dead_bytes, self.max_bytes, counters)

    def file_bytes(self) -> tuple[int, int]:
        """Sizes of the database file and its WAL on disk."""
        sizes = []
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                sizes.append(p.stat().st_size)
            except OSError:
                sizes.append(0)
        return sizes[0], sizes[1]

    def close(self) -> None:
        if not self.read_only:
            try:
                self.flush()
            except sqlite3.Error:
                pass  # a full disk: the deliveries are sent again after the next start
        self.db.close()
