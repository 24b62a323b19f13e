"""Structured logs: one logfmt line per event, with the device id and the error kind as keys."""
from __future__ import annotations

import logging
import sys
import time

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _quote(value: object) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' ="\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={t}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        event = getattr(record, "event", None)
        if event:
            parts.append(f"event={_quote(event)}")
        for k, v in record.__dict__.items():
            if k not in _RESERVED and k != "event":
                parts.append(f"{k}={_quote(v)}")
        msg = record.getMessage()
        if msg:
            parts.append(f"msg={_quote(msg)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pymodbus logs every failed transaction itself; our drivers log them once, with the device id
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def log_event(logger: logging.Logger, level: int, event: str, msg: str = "", **fields: object) -> None:
    """Log one event; ``fields`` become logfmt keys (device=..., error=...)."""
    logger.log(level, msg, extra={"event": event, **fields})


class BurstLogger:
    """Logs the first event of a kind per key, then at most one summary per ``every_s`` seconds."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last: dict[tuple, float] = {}
        self._suppressed: dict[tuple, int] = {}

    def log(self, level: int, event: str, key: tuple, msg: str = "", **fields: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        log_event(self.logger, level, event, msg, **fields)
