"""The on-disk outbox: a batch counts as accepted only once it is committed here.

SQLite in WAL mode: stdlib, crash-safe, one file. Batches are stored gzip-compressed exactly as
they will be sent, delivered oldest first and deleted only after the server answered 2xx. Writes
are one transaction per batch (never per point), which keeps SD-card wear down.
"""
from __future__ import annotations

import gzip
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

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
    payload BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class QueuedBatch:
    id: int
    created_ns: int
    points: int
    payload: bytes  # gzip


@dataclass(frozen=True, slots=True)
class OutboxStats:
    batches: int
    points: int
    bytes: int
    oldest_created_ns: int | None
    dead_letters: int


class Outbox:
    def __init__(self, path: Path | str, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: the sender thread and the event loop use it, never at the same time
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; FULL also survives power loss, at an fsync per commit
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(_SCHEMA)

    def put(self, line_protocol: bytes, points: int, created_ns: int | None = None) -> int:
        payload = gzip.compress(line_protocol, compresslevel=5)
        cur = self.db.execute(
            "INSERT INTO batch (created_ns, points, payload) VALUES (?, ?, ?)",
            (created_ns if created_ns is not None else time.time_ns(), points, payload),
        )
        return int(cur.lastrowid)

    def oldest(self, limit: int = 1) -> list[QueuedBatch]:
        rows = self.db.execute(
            "SELECT id, created_ns, points, payload FROM batch ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [QueuedBatch(*r) for r in rows]

    def delete(self, batch_id: int) -> None:
        self.db.execute("DELETE FROM batch WHERE id = ?", (batch_id,))

    def dead_letter(self, batch: QueuedBatch, reason: str) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO dead_letter (created_ns, failed_ns, points, reason, payload) VALUES (?, ?, ?, ?, ?)",
                (batch.created_ns, time.time_ns(), batch.points, reason, batch.payload),
            )
            self.db.execute("DELETE FROM batch WHERE id = ?", (batch.id,))

    def dead_letters(self) -> list[tuple[int, int, int, str, bytes]]:
        return self.db.execute(
            "SELECT id, failed_ns, points, reason, payload FROM dead_letter ORDER BY id"
        ).fetchall()

    def stats(self) -> OutboxStats:
        batches, points, size, oldest = self.db.execute(
            "SELECT count(*), coalesce(sum(points), 0), coalesce(sum(length(payload)), 0), min(created_ns) FROM batch"
        ).fetchone()
        dead = self.db.execute("SELECT count(*) FROM dead_letter").fetchone()[0]
        return OutboxStats(batches, points, size, oldest, dead)

    def close(self) -> None:
        self.db.close()
