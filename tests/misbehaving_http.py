"""A small HTTP server on 127.0.0.1 that speaks InfluxDB's write endpoints and misbehaves on cue.

Used by the sink tests for what real servers will not do when asked: 500s, 429 with Retry-After,
401, answers slower than the client's timeout, and partial 400s for chosen lines. It stores what it
accepts the way InfluxDB does (one value per series, field and timestamp) and records every
request, so tests can check what arrived, how often and when.
"""
from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    t: float  # time.monotonic() when it arrived
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    lines: int
    status: int = 0


@dataclass
class Behaviour:
    mode: str = "ok"  # ok | error500 | throttle | unauthorized | slow
    retry_after: str = "2"  # for throttle: seconds or an HTTP date
    slow_s: float = 3.0  # for slow: sleep this long, then answer 204
    # line -> reason if the line is refused; refused lines get InfluxDB 1.x's partial-write 400
    refuse: Callable[[bytes], str | None] | None = None


@dataclass
class Stored:
    points: dict[tuple[bytes, bytes, int], bytes] = field(default_factory=dict)  # (series, field, ts) -> value
    conflicts: list[str] = field(default_factory=list)  # the same point stored with a different value


def split_fields(field_set: bytes) -> list[tuple[bytes, bytes]]:
    """key=value pairs of a field set (string values with commas are not used by these tests)."""
    return [tuple(kv.split(b"=", 1)) for kv in field_set.split(b",")]  # type: ignore[misc]


class MisbehavingInflux:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.stored = Stored()
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(204)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if url.path == "/query":
                    self._answer(200, b'{"results":[{"statement_id":0}]}')
                    return
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                lines = [line for line in body.split(b"\n") if line.strip()]
                req = Request(time.monotonic(), url.path, parse_qs(url.query), dict(self.headers), len(lines))
                with server.lock:
                    server.requests.append(req)
                    b = server.behaviour
                    mode, refuse = b.mode, b.refuse
                status, payload, headers = server.respond(mode, lines, refuse)
                req.status = status
                if mode == "slow":
                    time.sleep(b.slow_s)
                try:
                    self._answer(status, payload, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting, as it should

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, mode: str, lines: list[bytes], refuse) -> tuple[int, bytes, dict[str, str]]:
        if mode == "error500":
            return 500, b'{"error":"internal error"}', {}
        if mode == "unauthorized":
            return 401, b'{"error":"authorization failed"}', {}
        if mode == "throttle":
            return 429, b'{"error":"too many requests"}', {"Retry-After": self.behaviour.retry_after}
        refused = [(line, refuse(line)) for line in lines] if refuse else []
        refused = [(line, reason) for line, reason in refused if reason]
        bad = {line for line, _ in refused}
        with self.lock:
            for line in lines:
                if line not in bad:
                    self.store(line)
        if refused:
            msg = f"partial write: {refused[0][1]} dropped={len(refused)}"
            return 400, json.dumps({"error": msg}).encode(), {}
        return 204, b"", {}

    def store(self, line: bytes) -> None:
        series, fields, ts = line.rsplit(b" ", 2)
        for key, value in split_fields(fields):
            k = (series, key, int(ts))
            old = self.stored.points.get(k)
            if old is not None and old != value:
                self.stored.conflicts.append(f"{k}: {old!r} then {value!r}")
            self.stored.points[k] = value

    def set(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self.behaviour, k, v)

    def writes(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path in ("/write", "/api/v2/write")]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
