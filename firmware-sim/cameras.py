"""People-counting cameras at the community's gates, publishing cumulative in/out counters over MQTT.

A camera counts people crossing its line in each direction and keeps running totals, which it
resets at local midnight and loses when it reboots; it posts them periodically as a Hikvision
ISAPI ``PeopleCounting`` event (``statisticalMethods = realTime``: the totals at that moment)
relayed as JSON. Flow follows a residential gate's day: residents leave in the morning and come
home in the evening, with a midday bump and a quiet night.

Counts are a pure function of time for a seed: each ``slot_s`` slot of the day has a hashed
Poisson draw, and the totals at t are the sum of the slots completed since the last reset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.loads import _bump
from firmware_sim.wire import MqttMessage, local_hour, local_midnight_s, local_rfc3339_ms, uniform01

TOPIC_ROOT = "cameras"  # cameras/<device>/peopleCounting


@dataclass(frozen=True, slots=True)
class CameraSpec:
    device: str
    gate: str
    channel_id: int = 1
    report_s: float = 60.0
    peak_per_min: float = 4.0  # people per minute in the busier direction at the busiest time
    slot_s: float = 10.0
    reboot_interval_s: float | None = None  # firmware that reboots now and then loses its totals


def flow_per_min(hour: float, peak_per_min: float) -> tuple[float, float]:
    """(entering, leaving) people per minute at a local hour: out in the morning, in in the evening.

    The bumps' areas are close to equal, so a day's entries and exits nearly balance.
    """
    entering = 0.04 + 0.35 * _bump(hour, 8.5, 1.2) + 0.35 * _bump(hour, 12.0, 2.0) + 1.0 * _bump(hour, 18.6, 1.2)
    leaving = 0.04 + 1.0 * _bump(hour, 7.6, 0.9) + 0.35 * _bump(hour, 13.0, 2.0) + 0.45 * _bump(hour, 19.5, 1.5)
    return peak_per_min * entering, peak_per_min * leaving


def _poisson(mean: float, u: float) -> int:
    """Inverse-CDF Poisson draw: deterministic for u, exact for the small means of a slot."""
    k, p = 0, math.exp(-mean)
    cumulative = p
    while u > cumulative and k < 10_000:
        k += 1
        p *= mean / k
        cumulative += p
    return k


@dataclass(frozen=True, slots=True)
class Crowd:
    """An injected crowd at the gate: ``per_min`` extra people entering between start and end."""

    start_s: float
    end_s: float
    per_min: float


class PeopleCountingCamera:
    def __init__(self, spec: CameraSpec, seed: int, crowds: tuple[Crowd, ...] = ()) -> None:
        self.spec = spec
        self.seed = seed
        self.crowds = tuple(crowds)  # fixed at construction: the totals are built slot by slot from them
        self.posts = 0
        # running totals since the last reset, extended slot by slot as time goes on
        self._reset_slot: tuple[float, int] = (-1.0, -1)  # (day start, first slot counted)
        self._counted_to = 0  # slots [first, counted_to) are in the totals
        self._totals = (0, 0)
        self._last_report_slot: int | None = None
        u = uniform01(seed, spec.device, "mac")
        self.mac = "44:19:b6:" + ":".join(f"{int(u * 2**24) >> s & 0xFF:02x}" for s in (16, 8, 0))
        self.ip = f"10.0.3.{1 + int(uniform01(seed, spec.device, 'ip') * 250)}"
        self._reboot_offset = uniform01(seed, spec.device, "reboot") * (spec.reboot_interval_s or 0.0)

    def slot_counts(self, day_start_s: float, slot: int) -> tuple[int, int]:
        """(entered, left) during one slot of the day."""
        t_mid = day_start_s + (slot + 0.5) * self.spec.slot_s
        rate_in, rate_out = flow_per_min(local_hour(t_mid), self.spec.peak_per_min)
        scale = self.spec.slot_s / 60.0
        day = int(day_start_s)
        entered = _poisson(rate_in * scale, uniform01(self.seed, self.spec.device, "in", day, slot))
        for c in self.crowds:
            if c.start_s <= t_mid < c.end_s:
                entered += _poisson(c.per_min * scale, uniform01(self.seed, self.spec.device, "crowd", day, slot))
        return entered, _poisson(rate_out * scale, uniform01(self.seed, self.spec.device, "out", day, slot))

    def last_reset_s(self, t_s: float) -> float:
        """Local midnight or the last reboot before t, whichever is later."""
        reset = local_midnight_s(t_s)
        interval = self.spec.reboot_interval_s
        if interval:
            reboot = math.floor((t_s - self._reboot_offset) / interval) * interval + self._reboot_offset
            reset = max(reset, reboot)
        return reset

    def totals_at(self, t_s: float) -> tuple[int, int]:
        """(enter, exit) the camera shows at t: the slots completed since its last reset."""
        day = local_midnight_s(t_s)
        slot = self.spec.slot_s
        done = int((t_s - day) // slot)
        first = min(done, math.ceil((self.last_reset_s(t_s) - day) / slot - 1e-9))  # first slot after the reset
        if self._reset_slot != (day, first) or done < self._counted_to:
            self._reset_slot, self._counted_to, self._totals = (day, first), first, (0, 0)
        n_in, n_out = self._totals
        for i in range(self._counted_to, done):
            a, b = self.slot_counts(day, i)
            n_in, n_out = n_in + a, n_out + b
        self._counted_to, self._totals = max(self._counted_to, done), (n_in, n_out)
        return n_in, n_out

    def _period(self, t_s: float) -> int:
        # a time computed as k * report_s may land a hair below the boundary: it still opens period k
        return math.floor(t_s / self.spec.report_s + 1e-6)

    def next_report_s(self, t_s: float) -> float:
        """When the next ``report_s`` period begins after t (the next time ``poll`` has something)."""
        return (self._period(t_s) + 1) * self.spec.report_s

    def poll(self, t_s: float) -> list[MqttMessage]:
        """A report when a new ``report_s`` period has begun."""
        period = self._period(t_s)
        if period == self._last_report_slot:
            return []
        self._last_report_slot = period
        self.posts += 1
        t_ms = round(t_s * 1000)  # a time computed as a float sum lands on its millisecond
        enter, exit_ = self.totals_at(t_ms / 1000)
        stamp = local_rfc3339_ms(t_ms)
        doc = {
            "ipAddress": self.ip, "portNo": 80, "protocol": "HTTP", "macAddress": self.mac,
            "channelID": self.spec.channel_id, "channelName": self.spec.gate, "dateTime": stamp,
            "activePostCount": self.posts, "eventType": "PeopleCounting", "eventState": "active",
            "eventDescription": "peopleCounting alarm", "deviceID": self.spec.device,
            "peopleCounting": {"statisticalMethods": "realTime", "RealTime": {"time": stamp},
                               "enter": enter, "exit": exit_, "regionsID": 1},
        }
        return [MqttMessage(f"{TOPIC_ROOT}/{self.spec.device}/peopleCounting", doc, t_ms, self.spec.device,
                            "people_counter", {"gate": self.spec.gate},
                            {"in_total": float(enter), "out_total": float(exit_)},
                            (("dateTime",), ("peopleCounting", "RealTime", "time")))]
