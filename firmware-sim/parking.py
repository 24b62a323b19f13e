"""LoRaWAN geomagnetic parking sensors as a ChirpStack v4 server publishes their uplinks.

Occupancy follows commuting hours in a residential community (full at night, emptier during
working hours); a sensor sends an uplink on every change and a heartbeat in between, with the
payload already decoded into ``object`` the way a ChirpStack device-profile codec does
(Bosch-style fields: ``{"type": "parking status", "occupied": true}``).
"""
from __future__ import annotations

import base64
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from firmware_sim.loads import TZ_OFFSET_S, _hash01

APPLICATION_ID = "6f8c4a1e-2b7d-4c3a-9e51-0c1d2e3f4a5b"


def occupancy_probability(t_s: float, zone: str) -> float:
    hour = ((t_s + TZ_OFFSET_S) % 86400) / 3600
    if zone == "fire_lane":
        return 0.01  # rarely, and that is exactly what the safety scenario watches for
    working = 1.0 / (1.0 + math.exp(-(hour - 8.0) * 2)) * 1.0 / (1.0 + math.exp((hour - 18.0) * 2))
    return 0.9 - 0.55 * working


def rfc3339_ns(t_ns: int) -> str:
    """Nanosecond RFC 3339, as ChirpStack writes ``time``."""
    secs, nanos = divmod(t_ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}+00:00"


@dataclass
class ParkingSensor:
    dev_eui: str
    bay: str
    zone: str = "general"
    heartbeat_s: float = 600.0
    slot_s: float = 600.0
    seed: int = 0
    fcnt: int = 0
    last_state: bool | None = None
    last_sent_s: float = -1e18
    forced_until_s: float = -1.0  # an injected "car parked here" until this time
    # injected cars parked over the sensor: (start, end) in simulated seconds
    parked: list[tuple[float, float]] = field(default_factory=list)
    extra_tags: dict[str, str] = field(default_factory=dict)
    # cars come and go at any time, not in step across a car park: each sensor's slots are shifted
    phase_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.phase_s = _hash01(self.seed, self.dev_eui, "phase") * self.slot_s

    def _slot(self, t_s: float) -> int:
        # a time computed as k * slot_s may land a hair below the boundary: it still is slot k
        return math.floor((t_s + self.phase_s) / self.slot_s + 1e-6)

    def boot_delay_s(self) -> float:
        """When the sensor's first uplink comes after the network is up: sensors joined at different times."""
        return _hash01(self.seed, self.dev_eui, "boot") * min(self.heartbeat_s, self.slot_s)

    def occupied_at(self, t_s: float) -> bool:
        if t_s < self.forced_until_s or any(a <= t_s < b for a, b in self.parked):
            return True
        return _hash01(self.seed, self.dev_eui, self._slot(t_s)) < occupancy_probability(t_s, self.zone)

    def next_check_s(self, t_s: float) -> float:
        """The next time after t at which ``due`` may have an uplink: occupancy only changes at slot
        boundaries and at the edges of injected parking, and heartbeats come on their period."""
        candidates = [(self._slot(t_s) + 1) * self.slot_s - self.phase_s, self.last_sent_s + self.heartbeat_s]
        candidates += [edge for a, b in self.parked for edge in (a, b) if edge > t_s]
        if self.forced_until_s > t_s:
            candidates.append(self.forced_until_s)
        return max(min(candidates), t_s + 1e-3)

    def due(self, t_s: float) -> tuple[int, dict] | None:
        """The uplink (fPort, decoded object) this sensor sends at t, if any."""
        state = self.occupied_at(t_s)
        if state != self.last_state:
            self.last_state = state
            self.last_sent_s = t_s
            return 1, {"type": "parking status", "occupied": state}
        if t_s - self.last_sent_s >= self.heartbeat_s - 1e-6:  # scheduled at last + period: allow rounding
            self.last_sent_s = t_s
            temp = round(18 + 8 * math.sin(2 * math.pi * (((t_s + TZ_OFFSET_S) % 86400) / 86400 - 0.3)))
            return 2, {"type": "heartbeat", "occupied": state, "temperature": temp}
        return None

    def uplink(self, t_ns: int, fport: int, obj: dict) -> tuple[str, bytes]:
        self.fcnt += 1
        raw = bytes([1 if obj.get("occupied") else 0]) + (
            int(obj["temperature"]).to_bytes(1, "big", signed=True) if "temperature" in obj else b"")
        doc = {
            "deduplicationId": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{self.dev_eui}/{self.fcnt}")),
            "time": rfc3339_ns(t_ns),
            "deviceInfo": {
                "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "community",
                "applicationId": APPLICATION_ID, "applicationName": "parking",
                "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad", "deviceProfileName": "geomagnetic-parking",
                "deviceName": self.bay, "devEui": self.dev_eui,
                "tags": {"bay": self.bay, "zone": self.zone, **self.extra_tags},
            },
            "devAddr": self.dev_eui[-8:], "adr": True, "dr": 5, "fCnt": self.fcnt, "fPort": fport,
            "confirmed": False, "data": base64.b64encode(raw).decode(), "object": obj,
            "rxInfo": [{"gatewayId": "0016c001f153a14c", "uplinkId": self.fcnt,
                        "rssi": -70 - int(30 * _hash01(self.dev_eui, self.fcnt)),
                        "snr": round(9.5 - 12 * _hash01(self.dev_eui, "snr", self.fcnt), 1),
                        "channel": 1, "rfChain": 1, "context": "E3OWOQ==", "crcStatus": "CRC_OK"}],
            "txInfo": {"frequency": 486300000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 9,
                                                                       "codeRate": "CR_4_5"}}},
        }
        topic = f"application/{APPLICATION_ID}/device/{self.dev_eui}/event/up"
        return topic, json.dumps(doc, separators=(",", ":")).encode()
