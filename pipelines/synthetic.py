"""Synthetic residential loads and meter readings with labelled faults, for tests and benchmarks.

Deterministic for a given seed (numpy Generator passed in); numpy only, no clock. The daily shape is
a typical residential profile (night base, morning and evening peaks, a flatter weekend morning) in
local time, so the seasonal detector has something real to learn.
"""
from __future__ import annotations

import numpy as np

DAY_NS = 86_400 * 1_000_000_000
MINUTE_NS = 60 * 1_000_000_000
# 2024-01-01 00:00 China Standard Time (a Monday), as UTC nanoseconds
T0_NS = 1_704_038_400 * 1_000_000_000


def daily_profile(ts_ns: np.ndarray, utc_offset_s: int = 8 * 3600) -> np.ndarray:
    """Relative load (mean ~1) for each timestamp: smooth morning/evening peaks, weekend shift."""
    local = ts_ns + utc_offset_s * 1_000_000_000
    day = local // DAY_NS
    h = (local - day * DAY_NS) / 3.6e12
    weekend = ((day + 3) % 7) >= 5
    morning_at = np.where(weekend, 9.5, 7.5)
    base = 0.55 + 0.25 * np.sin((h - 9.0) / 24.0 * 2 * np.pi) ** 2
    morning = 0.6 * np.exp(-0.5 * ((h - morning_at) / 1.2) ** 2)
    evening = 1.1 * np.exp(-0.5 * ((h - 19.5) / 1.8) ** 2)
    return base + morning + evening


def load_kw(ts_ns: np.ndarray, mean_kw: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Load in kW: profile times ``mean_kw`` with relative Gaussian noise ``noise``."""
    p = daily_profile(ts_ns)
    return mean_kw * p * (1.0 + noise * rng.standard_normal(len(ts_ns)))


def counter_from_power(ts_ns: np.ndarray, kw: np.ndarray, start_kwh: float = 0.0,
                       resolution: float = 0.0) -> np.ndarray:
    """Cumulative kWh register readings for a power series (left-rectangle integration)."""
    dt_h = np.diff(ts_ns, prepend=ts_ns[0]) / 3.6e12
    kwh = start_kwh + np.cumsum(np.concatenate(([0.0], kw[:-1])) * dt_h)
    if resolution > 0:
        kwh = np.floor(kwh / resolution) * resolution
    return kwh


def interleave(n_series: int, n_ticks: int, period_ns: int, rng: np.random.Generator,
               jitter_ns: int = 0, t0_ns: int = T0_NS, shuffle: str = "device") -> tuple[np.ndarray, np.ndarray]:
    """Arrival order of ``n_series`` series reporting every ``period_ns`` for ``n_ticks`` polls.

    ``shuffle``: "none" (series in id order each poll), "device" (devices of 8 series finish in an
    order that changes slightly from poll to poll, as with parallel Modbus TCP polls) or "random"
    (a fresh random permutation every poll: the worst case for cache locality).
    Returns (series int32, ts_ns int64), time-major.
    """
    ids = np.arange(n_series, dtype=np.int32)
    series = np.empty(n_series * n_ticks, dtype=np.int32)
    for k in range(n_ticks):
        if shuffle == "random":
            order = rng.permutation(n_series).astype(np.int32)
        elif shuffle == "device":
            dev = ids // 8
            key = dev + rng.uniform(0.0, 4.0, size=(n_series + 7) // 8)[dev]
            order = ids[np.argsort(key, kind="stable")]
        else:
            order = ids
        series[k * n_series:(k + 1) * n_series] = order
    ts = t0_ns + np.repeat(np.arange(n_ticks, dtype=np.int64) * period_ns, n_series)
    if jitter_ns:
        ts = ts + rng.integers(0, jitter_ns, size=len(ts))
    return series, ts
