"""What the MQTT devices (elevator monitors, cameras) share: local timestamps and the message they publish."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from firmware_sim.loads import TZ_OFFSET_S

LOCAL_TZ = timezone(timedelta(seconds=TZ_OFFSET_S))


def uniform01(*parts: object) -> float:
    """A deterministic draw in [0, 1) for the parts.

    blake2b rather than loads._hash01's crc32: CRC is linear, so draws for consecutive slot or trip
    numbers come out visibly correlated, which a Poisson count per second or a call sequence shows.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def local_midnight_s(t_s: float) -> float:
    """Start (UTC seconds) of the local day that contains t."""
    return t_s - (t_s + TZ_OFFSET_S) % 86400


def local_hour(t_s: float) -> float:
    return ((t_s + TZ_OFFSET_S) % 86400) / 3600


def local_rfc3339_ms(t_ms: int) -> str:
    """``2026-03-02T08:15:00.120+08:00``: local time with its offset, as cameras and lift monitors stamp."""
    secs, ms = divmod(t_ms, 1000)
    return datetime.fromtimestamp(secs, LOCAL_TZ).replace(microsecond=ms * 1000).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """One publication, with what it carries in the gateway's terms for the served log."""

    topic: str
    doc: dict
    t_ms: int  # the device's timestamp in the payload (millisecond precision on the wire)
    device: str
    measurement: str
    tags: dict[str, str]
    values: dict[str, float]
    # where the payload carries the device's time (local RFC 3339 with milliseconds), key by key
    stamp_paths: tuple[tuple[str, ...], ...] = ()

    def payload(self) -> bytes:
        return json.dumps(self.doc, separators=(",", ":")).encode()

    def restamped(self, offset_ms: int) -> "MqttMessage":
        """The same message from a device whose clock is ``offset_ms`` off (clock-skew faults)."""
        t_ms = self.t_ms + offset_ms
        doc = copy.deepcopy(self.doc)
        for path in self.stamp_paths:
            node = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = local_rfc3339_ms(t_ms)
        return replace(self, doc=doc, t_ms=t_ms)

    def served_record(self) -> dict:
        return {"t_ns": self.t_ms * 1_000_000, "kind": "mqtt", "device": self.device, "topic": self.topic,
                "measurement": self.measurement, "tags": self.tags, "values": self.values}
