"""What a payload decoder returns: readings as rows of fields, plus the problems it found."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone


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


_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:?\d{2})$"
)


def parse_rfc3339_ns(text: str) -> int:
    """RFC 3339 to UTC nanoseconds, keeping all nine fractional digits (datetime stops at six)."""
    m = _RFC3339.match(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    date, clock, frac, zone = m.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    if len(zone) == 5:
        zone = zone[:3] + ":" + zone[3:]
    whole = datetime.fromisoformat(f"{date}T{clock}{zone}").astimezone(timezone.utc)
    seconds = int(whole.timestamp())
    nanos = int((frac or "0").ljust(9, "0"))
    return seconds * 1_000_000_000 + nanos
