"""InfluxDB writers and the sink that feeds them from its own outbox.

The sink buffers encoded line protocol briefly (size and age bounded), commits it to the outbox,
and only then acknowledges the readings upstream. A sender task delivers the oldest batches first
and deletes them only after a 2xx.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import urllib3

from gateway.sinks.outbox import Outbox

log = logging.getLogger("gateway.sinks")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: int  # HTTP status, or 0 when the server could not be reached
    body: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class InfluxV1Writer:
    """POST /write for InfluxDB 1.x (what Debian's and Raspberry Pi OS' influxdb packages give)."""

    def __init__(self, url: str, database: str, retention_policy: str | None = None,
                 username: str | None = None, password: str | None = None, timeout_s: float = 10.0) -> None:
        self.base = url.rstrip("/")
        self.database = database
        self.params = {"db": database, "precision": "ns"}
        if retention_policy:
            self.params["rp"] = retention_policy
        self.headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip"}
        if username:
            self.headers.update(urllib3.make_headers(basic_auth=f"{username}:{password or ''}"))
        self.http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(3.0, timeout_s), read=timeout_s), retries=False
        )

    def describe(self) -> str:
        return f"{self.base}/write?db={self.database}"

    def _request(self, method: str, path: str, **kw) -> WriteResult:
        try:
            r = self.http.request(method, self.base + path, **kw)
        except urllib3.exceptions.HTTPError as e:
            return WriteResult(0, f"{type(e).__name__}: {e}")
        retry = r.headers.get("Retry-After")
        try:
            retry_s = float(retry) if retry is not None else None
        except ValueError:
            retry_s = None
        return WriteResult(r.status, r.data.decode("utf-8", "replace")[:2000], retry_s)

    def create_database(self) -> WriteResult:
        q = f'CREATE DATABASE "{self.database}"'
        return self._request("POST", "/query", fields={"q": q}, encode_multipart=False, headers=self.headers_auth_only())

    def headers_auth_only(self) -> dict:
        return {k: v for k, v in self.headers.items() if k == "authorization"}

    def write(self, gz_payload: bytes) -> WriteResult:
        from urllib.parse import urlencode

        return self._request("POST", "/write?" + urlencode(self.params), body=gz_payload, headers=self.headers)


@dataclass
class SinkCounters:
    points_accepted: int = 0
    points_delivered: int = 0
    batches_delivered: int = 0
    write_failures: int = 0
    points_dead_lettered: int = 0
    last_error: str = ""


class AckGroup:
    """Calls the upstream acks once every sink has committed the readings they cover."""

    def __init__(self, acks: list[Callable[[], None]], sinks: int) -> None:
        self.acks = acks
        self.remaining = sinks

    def done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            for ack in self.acks:
                ack()


class OutboxSink:
    def __init__(self, name: str, writer: InfluxV1Writer, outbox: Outbox, batch_max_points: int,
                 batch_max_age_s: float, max_request_bytes: int = 4 << 20) -> None:
        self.name = name
        self.writer = writer
        self.outbox = outbox
        self.batch_max_points = batch_max_points
        self.batch_max_age_s = batch_max_age_s
        self.max_request_bytes = max_request_bytes
        self.counters = SinkCounters()
        self._pending: list[bytes] = []
        self._pending_points = 0
        self._pending_acks: list[AckGroup] = []
        self._pending_since = 0.0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def add(self, line_protocol: bytes, points: int, ack: AckGroup | None = None) -> None:
        if points:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(line_protocol)
            self._pending_points += points
        if ack is not None:
            self._pending_acks.append(ack)
        if self._pending_points >= self.batch_max_points:
            self.commit()

    def commit(self) -> None:
        """Write what is pending to the outbox in one transaction; from now on it survives a crash."""
        if self._pending:
            self.outbox.put(b"".join(self._pending), self._pending_points)
            self.counters.points_accepted += self._pending_points
            self._pending.clear()
            self._pending_points = 0
            self._wake.set()
        acks, self._pending_acks = self._pending_acks, []
        for ack in acks:
            ack.done()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._commit_loop(), name=f"sink-{self.name}-commit"),
                       asyncio.create_task(self._send_loop(), name=f"sink-{self.name}-send")]

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.batch_max_age_s / 4)
            if (self._pending and time.monotonic() - self._pending_since >= self.batch_max_age_s) or (
                    self._pending_acks and not self._pending):
                self.commit()

    async def _send_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            sent = await self.send_some()
            if sent is None:  # nothing queued
                self._wake.clear()
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                # races with the event being set, and close() would then wait for this task forever
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({waiter}, timeout=1.0)
                finally:
                    waiter.cancel()
                continue
            if sent:
                backoff = BACKOFF_MIN_S
                continue
            wait = self._retry_after if self._retry_after is not None else backoff * (0.5 + random.random())
            backoff = min(BACKOFF_MAX_S, backoff * 2)
            await asyncio.sleep(wait)

    _retry_after: float | None = None
    _isolate = False

    async def send_some(self) -> bool | None:
        """Deliver the oldest queued batches in one request. None: queue empty; False: failed."""
        batches = self.outbox.oldest(limit=64)
        if not batches:
            return None
        chosen, size = [], 0
        limit = 1 if self._isolate else self.max_request_bytes
        self._isolate = False
        for b in batches:
            if chosen and size + len(b.payload) > limit:
                break
            chosen.append(b)
            size += len(b.payload)
        # concatenated gzip members are one valid gzip stream: no need to decompress and recompress
        body = b"".join(b.payload for b in chosen)
        result = await asyncio.to_thread(self.writer.write, body)
        self._retry_after = None
        if result.ok:
            for b in chosen:
                self.outbox.delete(b.id)
            points = sum(b.points for b in chosen)
            self.counters.points_delivered += points
            self.counters.batches_delivered += len(chosen)
            return True
        self.counters.write_failures += 1
        self.counters.last_error = f"{result.status} {result.body.strip()[:200]}"
        if result.status == 400 and len(chosen) > 1:
            # find the offending batch: the next request carries the oldest batch alone
            self._isolate = True
            return False
        if result.status == 400:
            self.outbox.dead_letter(chosen[0], result.body.strip())
            self.counters.points_dead_lettered += chosen[0].points
            log.error(result.body.strip(), extra={"event": "batch_rejected", "sink": self.name,
                                                  "points": chosen[0].points, "error": "http_400"})
            return True
        if result.status in (429, 503):
            self._retry_after = result.retry_after_s
        level = logging.ERROR if result.status in (401, 403) else logging.WARNING
        if self.counters.write_failures == 1 or self.counters.write_failures % 20 == 0:
            log.log(level, result.body.strip()[:500], extra={
                "event": "write_failed", "sink": self.name, "error": f"http_{result.status}" if result.status else "unreachable",
                "queued_batches": len(batches), "failures": self.counters.write_failures})
        return False

    async def close(self, drain_timeout_s: float = 3.0) -> None:
        """Commit what is pending, try to deliver the backlog for a while; the rest waits on disk."""
        self.commit()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline:
            sent = await self.send_some()
            if not sent:
                break
        self.outbox.close()
