"""What a payload decoder returns (readings as rows of fields, plus the problems it found), and the
checks every decoder shares: parsing a JSON object, device timestamps and how far they may be from
the gateway clock.

A decoder never raises on bad input: whatever is wrong with a message becomes a ``(reason, detail)``
problem that the runtime counts per device and reason, and the good fields of the message are kept.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, Protocol

NS = 1_000_000_000


@dataclass(slots=True)
class DecodedReading:
    measurement: str
    tags: dict[str, str]
    ts_ns: int
    fields: dict[str, float]


@dataclass(slots=True)
class DecodeResult:
    device: str = ""
    readings: list[DecodedReading] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail)

    def problem(self, reason: str, detail: str) -> None:
        self.problems.append((reason, detail[:300]))


class Decoder(Protocol):
    """A payload decoder: one instance per subscription, so stateful ones keep state per device."""

    def __call__(self, topic: str, payload: bytes, site: str, now_ns: int) -> DecodeResult: ...


@dataclass(frozen=True, slots=True)
class ClockWindow:
    """How far a device's timestamp may be from the gateway clock before the reading is dropped.

    Ahead: devices and the gateway keep NTP time, so ten minutes ahead is already a broken clock,
    and a point in the future would shadow the real latest value on every dashboard.
    Behind: the broker keeps QoS 1 messages for the gateway's persistent session while it is away,
    so messages hours old are legitimate after an outage; a day covers an outage overnight, while a
    monitor whose real-time clock reset to 1970 or 2000 is caught.
    """

    max_ahead_s: float = 600.0
    max_behind_s: float = 86400.0

    def check(self, ts_ns: int, now_ns: int) -> tuple[str, str] | None:
        """A ``clock_skew`` problem when ts is outside the window around now, else None."""
        skew_s = (ts_ns - now_ns) / NS
        if skew_s > self.max_ahead_s:
            return "clock_skew", (f"device time is {skew_s:.0f} s ahead of the gateway clock "
                                  f"(limit {self.max_ahead_s:g} s)")
        if -skew_s > self.max_behind_s:
            return "clock_skew", (f"device time is {-skew_s:.0f} s behind the gateway clock "
                                  f"(limit {self.max_behind_s:g} s)")
        return None


DEFAULT_CLOCK = ClockWindow()

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:?\d{2})$"
)


def parse_rfc3339_ns(text: str) -> int:
    """RFC 3339 to UTC nanoseconds, keeping all nine fractional digits (datetime stops at six)."""
    m = _RFC3339.match(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:80]!r}")
    date, clock, frac, zone = m.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    if len(zone) == 5:
        zone = zone[:3] + ":" + zone[3:]
    try:
        whole = datetime.fromisoformat(f"{date}T{clock}{zone}").astimezone(timezone.utc)
    except OverflowError:  # year 1 with a positive offset falls before datetime's range in UTC
        raise ValueError(f"timestamp out of range: {text[:80]!r}") from None
    seconds = int(whole.timestamp())
    nanos = int((frac or "0").ljust(9, "0"))
    return seconds * NS + nanos


TimeFormat = Literal["rfc3339", "epoch_s", "epoch_ms", "epoch_ns"]
_EPOCH_UNIT_NS = {"epoch_s": NS, "epoch_ms": 1_000_000, "epoch_ns": 1}
# anything beyond year 2200 is garbage, and keeps the int64 conversion downstream safe
_MAX_EPOCH_NS = 7_258_118_400 * NS


def device_time_ns(value: object, fmt: TimeFormat) -> int:
    """A device timestamp in UTC nanoseconds; ValueError (with the reason) when it is not one."""
    if fmt == "rfc3339":
        if not isinstance(value, str):
            raise ValueError(f"expected an RFC 3339 string, got {json_kind(value)}")
        return parse_rfc3339_ns(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number of {fmt[6:]} since the epoch, got {json_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"timestamp is {value}")
    unit = _EPOCH_UNIT_NS[fmt]
    if isinstance(value, int):
        ns = value * unit
    elif unit >= 1000:
        # a float64 epoch carries about a microsecond at today's times: keep whole units exactly and
        # round the fraction to microseconds, so 1772410500.25 s is ...250000000 ns and not ...249999872
        whole = math.floor(value)
        ns = int(whole) * unit + round((value - whole) * unit / 1000) * 1000
    else:
        ns = round(value)
    if not 0 <= ns <= _MAX_EPOCH_NS:
        raise ValueError(f"{value} {fmt[6:]} since the epoch is not a plausible time")
    return int(ns)


def load_json_object(payload: bytes, result: DecodeResult) -> dict | None:
    """The payload as a JSON object, or None after recording a ``malformed_json`` problem."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 and 5000-digit integers too
        result.problem("malformed_json", str(e)[:200] or type(e).__name__)
        return None
    if not isinstance(doc, dict):
        result.problem("malformed_json", f"payload is a JSON {json_kind(doc)}, expected an object")
        return None
    return doc


def json_kind(value: object) -> str:
    """The JSON name of a value's type, for problem details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__



def number(value: object) -> float | None:
    """A finite JSON number as float (booleans are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return f if math.isfinite(f) else None


def short_text(value: object, max_len: int = 128) -> str | None:
    """A usable identifier or tag value: a non-empty string (or integer) of at most max_len characters."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and value.strip() and len(value) <= max_len:
        return value
    return None


def checked_time(doc_value: object, fmt: TimeFormat, now_ns: int, clock: ClockWindow,
                 result: DecodeResult) -> int | None:
    """Device time of a message, or None after recording ``bad_timestamp`` / ``clock_skew``."""
    try:
        ts_ns = device_time_ns(doc_value, fmt)
    except ValueError as e:
        result.problem("bad_timestamp", str(e))
        return None
    skew = clock.check(ts_ns, now_ns)
    if skew is not None:
        result.problem(*skew)
        return None
    return ts_ns
