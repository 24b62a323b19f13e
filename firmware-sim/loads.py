"""Load curves that look like a community: deterministic for a seed, evaluated at any instant.

A meter's state is a pure function of time, so a simulator can serve thousands of meters without
ticking each one: values are computed when a request arrives.
"""
from __future__ import annotations

import math
import zlib

TZ_OFFSET_S = 8 * 3600  # China Standard Time: daily curves follow local hours


def _hash01(*parts: object) -> float:
    return (zlib.crc32(repr(parts).encode()) & 0xFFFFFFFF) / 2**32


def _bump(hour: float, centre: float, width: float) -> float:
    d = min(abs(hour - centre), 24 - abs(hour - centre))
    return math.exp(-0.5 * (d / width) ** 2)


class LoadModel:
    """Active power (W) of a household, a building common load or rooftop PV, over time."""

    def __init__(self, kind: str, seed: int, device: str, scale_w: float | None = None) -> None:
        self.kind = kind
        self.device = device
        self.seed = seed
        u = _hash01(seed, device)
        defaults = {"household": 900.0, "common": 6000.0, "pv": 5000.0}
        self.scale_w = scale_w if scale_w is not None else defaults.get(kind, 1000.0) * (0.6 + 0.8 * u)
        self.phase_h = (u - 0.5) * 1.5  # households do not all wake at the same minute

    def power_w(self, t_s: float) -> float:
        local = t_s + TZ_OFFSET_S
        hour = (local % 86400) / 3600 + self.phase_h
        weekday = int(local // 86400 + 4) % 7  # 1970-01-01 was a Thursday; 5, 6 = Sat, Sun
        weekend = weekday >= 5
        day_of_year = (local % (365.25 * 86400)) / 86400
        season = 1.0 + 0.35 * math.cos(2 * math.pi * (day_of_year - 15) / 365.25) ** 2  # heating and cooling
        noise = 0.08 * math.sin(t_s / 37.0 + 7 * _hash01(self.seed, self.device, 1)) + 0.05 * math.sin(t_s / 11.0)
        if self.kind == "pv":
            sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.5)) if 6.0 <= hour <= 18.5 else 0.0
            return self.scale_w * sun * (0.9 + 0.1 * math.sin(t_s / 300.0))
        if self.kind == "common":
            lifts = 0.4 * (_bump(hour, 8.0, 1.2) + _bump(hour, 18.5, 1.5))
            lighting = 0.5 if (hour < 6.5 or hour > 18.0) else 0.1
            return self.scale_w * (0.35 + lifts + lighting + 0.1 * noise) * season
        morning = (0.6 if weekend else 1.0) * _bump(hour, 7.3 + (1.5 if weekend else 0.0), 1.0)
        evening = 1.6 * _bump(hour, 19.5, 1.8)
        midday = (0.7 if weekend else 0.25) * _bump(hour, 12.5, 2.0)
        base = 0.18
        return self.scale_w * max(0.05, (base + morning + evening + midday) * season * (1.0 + noise))

    def energy_kwh(self, t0_s: float, t_s: float, step_s: float = 60.0) -> float:
        """Energy between t0 and t by the trapezoid rule on a fixed grid: monotone and repeatable."""
        if t_s <= t0_s:
            return 0.0
        n = int((t_s - t0_s) // step_s)  # whole steps; what is left is the partial step below
        total = 0.0
        prev = self.power_w(t0_s)
        for i in range(1, n + 1):
            t = t0_s + i * step_s
            p = self.power_w(t)
            total += 0.5 * (prev + p) * step_s
            prev = p
        rest = t_s - (t0_s + n * step_s)
        if rest > 0:
            total += 0.5 * (prev + self.power_w(t_s)) * rest
        return total / 3.6e6
