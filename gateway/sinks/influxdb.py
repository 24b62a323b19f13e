"""InfluxDB writers and the sink that feeds them from its own outbox.

The sink buffers encoded line protocol briefly (size and age bounded), commits it to the outbox,
and only then acknowledges the readings upstream. A sender delivers the oldest batches first and
deletes them only after a 2xx. What each kind of failure does is in docs/data-path.md:

* 400/413/422 (the server refused data): the request is narrowed down to the exact lines the
  server refuses; those become dead letters with the server's reason, the rest is delivered.
* 401/403: logged at ERROR on every attempt and retried slowly; nothing is dropped.
* 404 (no such database or bucket): created again where configured, otherwise like 401.
* 429/503: the next attempt waits for Retry-After (seconds or an HTTP date).
* anything else, timeouts, unreachable: capped exponential backoff with jitter.
"""
from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import logging
import queue
import random
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import urlencode

import urllib3

from gateway.sinks.line_protocol import count_fields, split_lines
from gateway.sinks.outbox import Outbox, PutResult, QueuedBatch

log = logging.getLogger("gateway.sinks")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
AUTH_RETRY_S = 60.0  # 401/403/404: a person has to fix something; do not hammer the server meanwhile
RETRY_AFTER_MAX_S = 900.0  # a Retry-After beyond this is treated as this (a bogus header must not park the queue)
REJECTED = (400, 413, 422)  # the server refused (some of) the data itself: retrying as is cannot help
UNAUTHORIZED = (401, 403)
THROTTLED = (429, 503)
DROP_LOG_EVERY_S = 60.0
MAX_BATCHES_PER_REQUEST = 256


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: int  # HTTP status, or 0 when the server could not be reached or answered nothing usable
    body: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def server_message(body: str) -> str:
    """The error text of an InfluxDB answer: 1.x {"error"}, 2.x {"message"}, else the body as is."""
    text = body.strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return doc[key]
    return text


_UNABLE_TO_PARSE = re.compile(r"unable to parse '(.*?)': ([^\n]*)")
_DROPPED = re.compile(r"dropped=(\d+)\s*$")


def quoted_rejections(body: str) -> dict[bytes, str]:
    """Lines a server quoted as refused, with the reason: InfluxDB 1.x/2.x "unable to parse 'LINE':
    reason", InfluxDB 3 {"data": [{"original_line", "error_message"}]}. Only a hint: a quoted
    line is trusted only if it is byte for byte one of the lines sent."""
    out: dict[bytes, str] = {}
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        for item in doc["data"]:
            if isinstance(item, dict) and isinstance(item.get("original_line"), str):
                out[item["original_line"].encode()] = str(item.get("error_message", "rejected"))
    for m in _UNABLE_TO_PARSE.finditer(server_message(body)):
        reason = _DROPPED.sub("", m.group(2)).strip()
        out[m.group(1).encode()] = f"unable to parse: {reason}"
    return out


def dropped_count(body: str) -> int | None:
    """InfluxDB 1.x's "partial write: ... dropped=N" (N points, that is lines, not stored)."""
    msg = server_message(body)
    m = _DROPPED.search(msg)
    return int(m.group(1)) if m and "partial write" in msg else None


def _is_timeout(result: WriteResult) -> bool:
    text = result.body.lower()
    return result.status == 0 and ("timeout" in text or "timed out" in text)


class Writer(Protocol):
    def write(self, gz_payload: bytes) -> WriteResult: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


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

    def _request(self, method: str, path: str, **kw: Any) -> WriteResult:
        try:
            r = self.http.request(method, self.base + path, **kw)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            return WriteResult(0, f"{type(e).__name__}: {e}")
        return WriteResult(r.status, r.data.decode("utf-8", "replace")[:4000],
                           parse_retry_after(r.headers.get("Retry-After")))

    def create_database(self) -> WriteResult:
        q = f'CREATE DATABASE "{self.database}"'
        return self._request("POST", "/query", fields={"q": q}, encode_multipart=False, headers=self.headers_auth_only())

    def headers_auth_only(self) -> dict:
        return {k: v for k, v in self.headers.items() if k.lower() == "authorization"}

    def write(self, gz_payload: bytes) -> WriteResult:
        return self._request("POST", "/write?" + urlencode(self.params), body=gz_payload, headers=self.headers)

    def close(self) -> None:
        self.http.clear()


class InfluxV2Writer:
    """POST /api/v2/write (InfluxDB 2.x and 3.x, VictoriaMetrics) through influxdb-client.

    Uses the client's generated WriteService rather than its WriteApi: WriteApi only compresses
    itself (enable_gzip), so every stored batch would be decompressed and compressed again on
    every attempt, and its batching mode retries and drops on its own. WriteService sends our
    already-gzipped bytes as they are (concatenated gzip members are one valid gzip stream) with
    the client's auth header, org/bucket/precision parameters and timeout, and raises
    ApiException with the status, body and headers, which the outbox needs to decide.
    """

    def __init__(self, url: str, org: str, bucket: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.service.write_service import WriteService

        self.base = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        # retries=False: retrying is the outbox's job, with its own backoff and Retry-After
        self.client = InfluxDBClient(url=self.base, token=token, org=org, timeout=int(timeout_s * 1000),
                                     enable_gzip=False, retries=False)
        self.service = WriteService(self.client.api_client)

    def describe(self) -> str:
        return f"{self.base}/api/v2/write?org={self.org}&bucket={self.bucket}"

    def write(self, gz_payload: bytes) -> WriteResult:
        from influxdb_client.rest import ApiException

        try:
            self.service.post_write(org=self.org, bucket=self.bucket, body=gz_payload, precision="ns",
                                    content_encoding="gzip")
        except ApiException as e:
            headers = e.headers or {}
            body = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else str(e.body or e.reason or "")
            return WriteResult(int(e.status or 0), body[:4000], parse_retry_after(headers.get("Retry-After")))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            return WriteResult(0, f"{type(e).__name__}: {e}")
        except UnicodeDecodeError as e:  # the client decodes every body as UTF-8 before looking at the status
            return WriteResult(0, f"undecodable response: {e}")
        return WriteResult(204)

    def close(self) -> None:
        self.client.close()


@dataclass
class SinkCounters:
    """This process' counts; the outbox's meta table keeps totals across restarts."""

    points_accepted: int = 0  # committed to the outbox
    points_delivered: int = 0
    batches_delivered: int = 0
    bytes_delivered: int = 0  # compressed line protocol the server took (2xx or partly refused)
    write_failures: int = 0
    requests: int = 0
    points_dead_lettered: int = 0
    lines_dead_lettered: int = 0
    points_dropped: int = 0  # dropped to keep the outbox within its bound, or not storable at all
    batches_dropped: int = 0
    disk_full_events: int = 0
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


class _RequestThread:
    """One daemon thread per sink that makes its HTTP requests, one at a time.

    Not asyncio.to_thread: a request stuck until its timeout would keep the default executor, and
    with it the process, from exiting after shutdown gave up on it. Being one thread also means a
    request abandoned by a cancelled task finishes before the next one starts (one in flight).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._jobs.put((loop, fut, fn, args))
        return fut

    @staticmethod
    def _settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
        if fut.cancelled():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, fut, fn, args = job
            result, exc = None, None
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting task, which decides
                exc = e
            try:
                loop.call_soon_threadsafe(self._settle, fut, result, exc)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this answer any more

    def stop(self) -> None:
        self._jobs.put(None)


class OutboxSink:
    """One target: its buffer, its outbox file and its sender. Several sinks never share any of them."""

    def __init__(self, name: str, writer: Writer, outbox: Outbox, batch_max_points: int,
                 batch_max_age_s: float, max_request_bytes: int = 1 << 20, retry_max_s: float = BACKOFF_MAX_S,
                 auth_retry_s: float = AUTH_RETRY_S, create_database: bool = False,
                 ack_max_wait_s: float = 0.05) -> None:
        self.name = name
        # MQTT messages wait for their commit before they are acknowledged, and a broker keeps only
        # so many unacknowledged messages in flight per client (mosquitto: 20): readings that carry
        # acks are committed after this short wait instead of the batch age, or QoS 1 would crawl
        self.ack_max_wait_s = ack_max_wait_s
        self._acks_since = 0.0
        self.writer = writer
        self.outbox = outbox
        self.batch_max_points = batch_max_points
        self.batch_max_age_s = batch_max_age_s
        self.max_request_bytes = max_request_bytes
        # halved after a catch-up request timed out, doubled back after each success: a request too
        # big for the server to take within timeout_s must not be retried at the same size forever
        self._request_limit = max_request_bytes
        self.retry_max_s = retry_max_s
        self.auth_retry_s = auth_retry_s
        self.create_database = create_database
        self.counters = SinkCounters()
        self._pending: list[bytes] = []
        self._pending_points = 0
        self._pending_acks: list[AckGroup] = []
        self._pending_since = 0.0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._requests: _RequestThread | None = None
        self._backoff = BACKOFF_MIN_S
        self._failing_since: float | None = None
        self._failure_kind = ""
        self._isolate_through: int | None = None  # after a refused multi-batch request: one batch per request up to this id
        self._drop_log = {"at": 0.0, "points": 0, "batches": 0}
        self._disk_full_log_at = 0.0
        self._last_transient: WriteResult | None = None  # what interrupted a bisection

    # --- accepting ----------------------------------------------------------------------------
    def add(self, line_protocol: bytes, points: int, ack: AckGroup | None = None) -> None:
        if points:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(line_protocol)
            self._pending_points += points
        if ack is not None:
            if not self._pending_acks:
                self._acks_since = time.monotonic()
            self._pending_acks.append(ack)
        if self._pending_points >= self.batch_max_points:
            self.commit()

    def commit(self) -> None:
        """Write what is pending to the outbox in one transaction; from now on it survives a crash.

        The acks are called even when the outbox could not store the batch (disk full, a broken
        file): withholding them would stall every MQTT message behind this one, and the loss is
        counted and logged instead.
        """
        if self._pending:
            lp, points = b"".join(self._pending), self._pending_points
            self._pending.clear()
            self._pending_points = 0
            self._store(lp, points)
            self._wake.set()
        acks, self._pending_acks = self._pending_acks, []
        for ack in acks:
            ack.done()

    def _store(self, lp: bytes, points: int) -> None:
        try:
            result = self.outbox.put(lp, points)
        except (sqlite3.Error, OSError) as e:
            result = PutResult(False, points, 1, False, f"{type(e).__name__}: {e}")
            log.error(result.error, extra={"event": "outbox_write_failed", "sink": self.name, "points": points})
        c = self.counters
        if result.stored:
            c.points_accepted += points
        c.points_dropped += result.dropped_points
        c.batches_dropped += result.dropped_batches
        now = time.monotonic()
        if result.disk_full:
            c.disk_full_events += 1
            if now - self._disk_full_log_at >= DROP_LOG_EVERY_S:
                self._disk_full_log_at = now
                log.error(result.error, extra={
                    "event": "outbox_disk_full", "sink": self.name, "stored": result.stored,
                    "queued_bytes": self.outbox.queued_bytes, "disk_full_events": c.disk_full_events,
                    "path": str(self.outbox.path)})
        if result.dropped_points or result.dropped_batches:
            d = self._drop_log
            d["points"] += result.dropped_points
            d["batches"] += result.dropped_batches
            if now - d["at"] >= DROP_LOG_EVERY_S:
                log.warning("dropped readings, oldest first, to stay within the outbox's bound", extra={
                    "event": "outbox_dropped", "sink": self.name, "points": d["points"], "batches": d["batches"],
                    "dropped_total": c.points_dropped, "queued_bytes": self.outbox.queued_bytes,
                    "max_outbox_bytes": self.outbox.max_bytes})
                d.update(at=now, points=0, batches=0)

    # --- delivering ---------------------------------------------------------------------------
    def start(self) -> None:
        self._requests = self._requests or _RequestThread(f"sink-{self.name}-http")
        self._tasks = [asyncio.create_task(self._commit_loop(), name=f"sink-{self.name}-commit"),
                       asyncio.create_task(self._send_loop(), name=f"sink-{self.name}-send")]

    async def _commit_loop(self) -> None:
        tick = min(self.batch_max_age_s / 4, self.ack_max_wait_s / 2)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if (self._pending and now - self._pending_since >= self.batch_max_age_s) or (
                    self._pending_acks and (not self._pending or now - self._acks_since >= self.ack_max_wait_s)):
                self.commit()
            try:
                # deliveries are deleted with the next put; when no put comes, do it on its own
                self.outbox.flush_if_idle(self.batch_max_age_s)
            except (sqlite3.Error, OSError) as e:
                log.error(str(e), extra={"event": "outbox_error", "sink": self.name})

    async def _send_loop(self) -> None:
        if self.create_database and hasattr(self.writer, "create_database"):
            result = await self._requests.submit(self.writer.create_database)
            if not result.ok:
                # not fatal: a 404 on write tries again, and the database may well exist already
                log.warning(server_message(result.body)[:300], extra={
                    "event": "create_database_failed", "sink": self.name,
                    "error": f"http_{result.status}" if result.status else "unreachable"})
        while True:
            try:
                wait = await self.send_once()
            except (sqlite3.Error, OSError) as e:  # the outbox itself failed, e.g. a full disk while deleting
                log.error(str(e), extra={"event": "outbox_error", "sink": self.name})
                wait = self._next_backoff()
            except Exception as e:  # noqa: BLE001 - a sender that dies silently would stop delivery for good
                log.exception(str(e), extra={"event": "sender_error", "sink": self.name})
                wait = self._next_backoff()
            if wait is None:  # nothing queued
                self._wake.clear()
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                # races with the event being set, and close() would then wait for this task forever
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({waiter}, timeout=1.0)
                finally:
                    waiter.cancel()
            elif wait > 0:
                await asyncio.sleep(wait)

    async def _post(self, body: bytes) -> WriteResult:
        self.counters.requests += 1
        if self._requests is None:  # used without start(), e.g. by close() of a sink never started
            self._requests = _RequestThread(f"sink-{self.name}-http")
        return await self._requests.submit(self.writer.write, body)

    def _next_backoff(self) -> float:
        wait = self._backoff * (0.5 + random.random() / 2)  # jitter: gateways restarted together spread out
        self._backoff = min(self.retry_max_s, self._backoff * 2)
        return wait

    async def send_once(self) -> float | None:
        """One delivery step: None if nothing is queued, else seconds to wait before the next (0: go on)."""
        if self._isolate_through is not None:
            chosen = self.outbox.oldest(limit=1)
            if not chosen or chosen[0].id > self._isolate_through:
                self._isolate_through = None
        if self._isolate_through is None:
            chosen = self.outbox.next_request(self._request_limit, MAX_BATCHES_PER_REQUEST)
        if not chosen:
            return None
        size = sum(len(b.payload) for b in chosen)
        # concatenated gzip members are one valid gzip stream: no need to decompress and recompress
        result = await self._post(b"".join(b.payload for b in chosen))
        if result.ok:
            self._delivered(chosen)
            self._request_limit = min(self.max_request_bytes, self._request_limit * 2)
            return 0.0
        if result.status == 0 and len(chosen) > 1 and _is_timeout(result):
            self._request_limit = max(1, size // 2)
        if result.status in REJECTED:
            self._recovered()  # the server is up and answering; only this data is the problem
            if len(chosen) > 1:
                # the good batches of this request are stored already; find the refused one
                self._isolate_through = chosen[-1].id
                return 0.0
            return await self._split_rejected(chosen[0], result)
        return await self._failed(result)

    def _delivered(self, batches: list[QueuedBatch]) -> None:
        undropped = self.outbox.delivered(batches)
        c = self.counters
        c.points_delivered += sum(b.points for b in batches)
        c.batches_delivered += len(batches)
        c.bytes_delivered += sum(len(b.payload) for b in batches)
        if undropped:
            # dropped for the bound while this request was in flight, and the server took it after all
            c.points_dropped -= undropped
            log.info("", extra={"event": "dropped_batch_delivered", "sink": self.name, "points": undropped})
        self._recovered()

    def _recovered(self) -> None:
        self._backoff = BACKOFF_MIN_S
        if self._failing_since is not None:
            log.info("", extra={"event": "write_recovered", "sink": self.name,
                                "after_s": round(time.monotonic() - self._failing_since, 1),
                                "failures": self.counters.write_failures,
                                "queued_bytes": self.outbox.queued_bytes})
            self._failing_since = None
            self._failure_kind = ""

    async def _failed(self, result: WriteResult) -> float:
        c = self.counters
        c.write_failures += 1
        c.last_error = f"{result.status} {result.body.strip()[:200]}"
        if result.status:
            kind = f"http_{result.status}"
        else:
            kind = "timeout" if _is_timeout(result) else "unreachable"
        # one line when a failure streak starts or its kind changes (500 -> 429 -> timeout), then
        # one every 20 failures: enough to follow an outage without flooding the log
        first = self._failing_since is None or kind != self._failure_kind
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._failure_kind = kind
        fields = {"sink": self.name, "target": self.writer.describe(), "error": kind,
                  "queued_bytes": self.outbox.queued_bytes, "failures": c.write_failures}
        msg = server_message(result.body)[:500]
        if result.status in UNAUTHORIZED:
            # loud on every attempt: nothing will be delivered until a person fixes the credentials
            log.error(msg or "not authorized", extra={"event": "write_unauthorized", **fields,
                                                      "retry_in_s": self.auth_retry_s})
            return self.auth_retry_s
        if result.status == 404:
            log.error(msg or "not found", extra={"event": "write_target_missing", **fields,
                                                 "retry_in_s": self.auth_retry_s})
            if self.create_database and hasattr(self.writer, "create_database"):
                created = await self._requests.submit(self.writer.create_database)
                if created.ok:
                    return self._next_backoff()
            return self.auth_retry_s
        if result.status in THROTTLED and result.retry_after_s is not None:
            wait = min(result.retry_after_s, RETRY_AFTER_MAX_S)
            event = "write_throttled"
        else:
            wait = self._next_backoff()
            event = "write_failed"
        if first or c.write_failures % 20 == 0:
            log.warning(msg, extra={"event": event, **fields, "retry_in_s": round(wait, 2)})
        return wait

    async def _split_rejected(self, batch: QueuedBatch, result: WriteResult) -> float:
        """The server refused (part of) this one batch: find exactly which lines, by what it quotes
        and by bisection. Lines it stores are resent unchanged (same bytes, same timestamps), so
        a line is never stored twice with different values; the refused ones become dead letters."""
        try:
            lines = split_lines(gzip.decompress(batch.payload))
        except (OSError, EOFError, ValueError) as e:
            self.outbox.dead_letter(batch, f"unreadable payload ({e}); server said: {server_message(result.body)}")
            self.counters.points_dead_lettered += batch.points
            return 0.0
        rejected: list[tuple[bytes, str]] = []
        requests = 0

        async def settle(chunk: list[bytes], res: WriteResult | None) -> bool:
            """True once every line of chunk is stored or known refused; False on a transient failure."""
            nonlocal requests
            while True:
                if res is None:
                    requests += 1
                    res = await self._post(gzip.compress(b"\n".join(chunk) + b"\n", compresslevel=1))
                if res.ok:
                    return True
                if res.status not in REJECTED:
                    self._last_transient = res
                    return False
                quoted = quoted_rejections(res.body)
                named = [line for line in chunk if line in quoted]
                if named:
                    rejected.extend((line, quoted[line]) for line in named)
                    chunk = [line for line in chunk if line not in quoted]
                    if not chunk:
                        return True
                    res = None  # the rest may be fine: send it again without the named lines
                    continue
                reason = server_message(res.body) or f"HTTP {res.status}"
                if len(chunk) == 1 or dropped_count(res.body) == len(chunk):
                    rejected.extend((line, reason) for line in chunk)
                    return True
                mid = len(chunk) // 2
                return await settle(chunk[:mid], None) and await settle(chunk[mid:], None)

        self._last_transient = None
        if not await settle(lines, result):
            return await self._failed(self._last_transient or WriteResult(0))
        counted = [(line, reason, count_fields(line)) for line, reason in rejected]
        dead_points = min(batch.points, sum(p for _, _, p in counted))
        delivered = batch.points - dead_points
        undropped = self.outbox.reject_lines(batch, counted, delivered)
        c = self.counters
        c.points_dead_lettered += dead_points
        c.lines_dead_lettered += len(counted)
        c.points_delivered += delivered
        c.bytes_delivered += len(batch.payload)
        c.points_dropped -= undropped
        if counted:
            log.error(counted[0][1][:500], extra={
                "event": "lines_rejected", "sink": self.name, "lines": len(counted), "points": dead_points,
                "delivered_points": delivered, "requests": requests + 1, "batch": batch.id})
        return 0.0

    async def close(self, drain_timeout_s: float = 3.0) -> None:
        """Commit what is pending, try to deliver the backlog for a while; the rest waits on disk."""
        self.commit()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        deadline = time.monotonic() + drain_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                wait = await asyncio.wait_for(self.send_once(), timeout=left)
            except (asyncio.TimeoutError, sqlite3.Error, OSError):
                break
            if wait != 0:
                break
        if self._requests is not None:
            self._requests.stop()
        self.outbox.close()
        try:
            self.writer.close()
        except Exception as e:  # closing a connection pool must not turn a clean stop into a crash
            log.debug(str(e), extra={"event": "writer_close_failed", "sink": self.name})
