"""The five detectors of pipelines.detect written per point with river, for bench_core's ratio.

What a river user would write for the same computation: one ``river.stats.EWMean`` per running
statistic (level mean and absolute deviation, step-size deviation, and per series a mean and a
deviation per time-of-day slot and day type), Python for the flatline run, the counter checks, the
robust (clipped) updates, the score ramps and the combination with the same tie order. Parameters
are the same ``DetectorParams``. It is not bitwise our kernel: river's EWMean starts from the first
value with the fading factor (ours weights the first values 1/n and widens a scale resting on few
residuals), so the benchmark compares what each flags on labelled faults instead of every score.
Benchmark-only (river is in the ``bench`` extra).
"""
from __future__ import annotations

import math

import numpy as np

from pipelines.detect import (
    DAY_NS,
    HOUR_NS,
    MAD_TO_SIGMA,
    REASON_COUNTER,
    REASON_FLATLINE,
    REASON_LEVEL,
    REASON_SEASONAL,
    REASON_SPIKE,
    DetectorParams,
)


def _ramp(ar: float, scale: float, z_lo: float, z_hi: float) -> float:
    if ar <= z_lo * scale:
        return 0.0
    if ar >= z_hi * scale:
        return 1.0
    return (ar / scale - z_lo) / (z_hi - z_lo)


def _robust(v: float, mean, dev, n: int, z_lo: float, z_hi: float, clip: float, floor_abs: float,
            floor_rel: float) -> float:
    """Score ``v`` against (mean, dev) built from ``n`` values, then fold it in (clipped beyond clip)."""
    if n == 0:
        mean.update(v)
        return 0.0
    m = mean.get()
    r = v - m
    ar = abs(r)
    if n == 1:
        dev.update(ar)
        mean.update(v)
        return 0.0
    scale = max(MAD_TO_SIGMA * dev.get(), floor_abs, floor_rel * abs(m))
    score = _ramp(ar, scale, z_lo, z_hi)
    lim = clip * scale
    if ar <= lim:
        mean.update(v)
        dev.update(ar)
    else:  # an outlier moves the mean by a bounded step and leaves the scale alone
        mean.update(m + lim if r > 0.0 else m - lim)
    return score


class _Series:
    __slots__ = ("p", "counter", "level_m", "level_d", "step_d", "slots", "n_raw", "n_v", "last_x",
                 "last_v", "last_ts", "run", "run_start")

    def __init__(self, p: DetectorParams, counter: bool, stats) -> None:
        self.p = p
        self.counter = counter
        self.level_m = stats.EWMean(fading_factor=p.level_alpha)
        self.level_d = stats.EWMean(fading_factor=p.level_alpha)
        self.step_d = stats.EWMean(fading_factor=p.spike_alpha)
        self.slots: dict[int, list] = {}
        self.n_raw = self.n_v = self.run = self.last_ts = self.run_start = 0
        self.last_x = self.last_v = 0.0


def river_detectors(series: np.ndarray, ts: np.ndarray, value: np.ndarray, is_counter: np.ndarray,
                    gauge: DetectorParams, counter: DetectorParams, slots_per_day: int = 96,
                    utc_offset_s: int = 8 * 3600) -> tuple[np.ndarray, np.ndarray]:
    """Score every reading (arrival order) with level, seasonal, flatline, spike and counter
    detectors; returns (score float32, reason uint8) like ``pipelines.detect.score_batch``."""
    from river import stats

    n = len(series)
    out_score = np.zeros(n, dtype=np.float32)
    out_reason = np.zeros(n, dtype=np.uint8)
    slot_ns = DAY_NS // slots_per_day
    off_ns = utc_offset_s * 1_000_000_000
    states: dict[int, _Series] = {}
    counters = is_counter.tolist()
    for i, (s, t, x) in enumerate(zip(series.tolist(), ts.tolist(), value.tolist())):
        if not math.isfinite(x):
            continue
        st = states.get(s)
        if st is None:
            st = states[s] = _Series(counter if counters[s] else gauge, counters[s], stats)
        p = st.p
        warm = st.n_raw >= p.warmup_samples
        # flatline on the raw value
        if st.n_raw > 0 and abs(x - st.last_x) <= p.flat_eps:
            st.run += 1
        else:
            st.run, st.run_start = 1, t
        s_flat = 0.0
        if warm and not (p.flat_ignore_zero and x == 0.0):
            if (p.flat_samples > 0 and st.run >= p.flat_samples) or (
                    p.flat_seconds > 0 and st.run >= 2 and t - st.run_start >= p.flat_seconds * 1e9):
                s_flat = 1.0
        # counter sanity; a counter's rate feeds the statistical detectors
        s_ctr = 0.0
        v = x
        if st.counter:
            v = math.nan
            if st.n_raw > 0:
                d = x - st.last_x
                dt = t - st.last_ts
                if d < -p.counter_neg_tol:
                    s_ctr = 1.0
                elif dt > 0:
                    rate = max(d, 0.0) * (HOUR_NS / dt)
                    if rate > p.counter_max_per_hour:
                        s_ctr = 1.0
                    else:
                        v = rate
            if not warm:
                s_ctr = 0.0
        s_lvl = s_spk = s_seas = 0.0
        if math.isfinite(v):
            scored = warm and st.n_v >= p.warmup_samples
            m_before = st.level_m.get()
            sc = _robust(v, st.level_m, st.level_d, st.n_v, p.level_z_lo, p.level_z_hi, p.clip, p.floor_abs,
                         p.floor_rel)
            if scored:
                s_lvl = sc
            if st.n_v >= 1:
                step = abs(v - st.last_v)
                sc = _robust(step, _PINNED, st.step_d, st.n_v, p.spike_z_lo, p.spike_z_hi, p.clip,
                             max(p.floor_abs, p.floor_rel * abs(m_before)), 0.0)
                if scored:
                    s_spk = sc
            if p.seasonal:
                local = t + off_ns
                day = local // DAY_NS
                key = (1 if (day + 3) % 7 >= 5 else 0) * slots_per_day + (local - day * DAY_NS) // slot_ns
                slot = st.slots.get(key)
                if slot is None:
                    slot = st.slots[key] = [stats.EWMean(fading_factor=p.seasonal_alpha),
                                            stats.EWMean(fading_factor=p.seasonal_alpha), 0]
                sc = _robust(v, slot[0], slot[1], slot[2], p.seasonal_z_lo, p.seasonal_z_hi, p.clip, p.floor_abs,
                             p.floor_rel)
                if warm and slot[2] >= p.seasonal_min_count:
                    s_seas = sc
                slot[2] += 1
            st.last_v = v
            st.n_v += 1
        st.n_raw += 1
        st.last_ts = t
        st.last_x = x
        best, reason = s_ctr, REASON_COUNTER
        for sc, why in ((s_flat, REASON_FLATLINE), (s_spk, REASON_SPIKE), (s_seas, REASON_SEASONAL),
                        (s_lvl, REASON_LEVEL)):
            if sc > best:
                best, reason = sc, why
        if best > 0.0:  # (otherwise the zeros already there: score 0, REASON_NONE)
            out_score[i] = best
            out_reason[i] = reason
    return out_score, out_reason


class _Zero:
    """A mean pinned at 0: step sizes are deviations around 0 (as in pipelines.detect)."""

    @staticmethod
    def get() -> float:
        return 0.0

    @staticmethod
    def update(_x: float) -> None:
        return None


_PINNED = _Zero()
