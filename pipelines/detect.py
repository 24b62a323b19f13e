"""Causal streaming anomaly detection per series, in one numba pass over an interleaved batch.

Why this shape:

* Readings of thousands of series arrive interleaved, in arrival order. Sorting or grouping a batch
  per series would cost more than the detectors themselves, so one kernel walks the batch once and
  keeps every series' state in arrays indexed by the dense series id (``pipelines.series``).
* Every detector is *causal*: a point is scored against the state built from the points before it
  and only then folded into the state. Nothing depends on where a batch starts or ends, so feeding
  a series whole or split into any batches gives bitwise identical scores (a test checks this).
* Per-series state is packed row-wise (one 64-byte row of floats and one of ints per series) so a
  point touches two cache lines instead of one line per detector variable.
* NaN and infinite values are missing readings: they score 0 with reason ``REASON_NONE`` and do not
  touch the state. No ``fastmath``: NaN handling stays explicit and IEEE behaviour predictable.

Detectors (each yields a score in [0, 1]; the combined score is their maximum):

``level``     robust EWMA of the value and of its absolute deviation; score from the z-score of the
              new value against the previous level. Outliers beyond ``clip`` scale units move the
              mean by a bounded step and leave the scale frozen, so a spike cannot blind the
              detector and a level shift is reported for as long as the mean needs to catch up.
``seasonal``  a baseline per local time-of-day slot (``slots_per_day``, 96 x 15 min by default) and
              day type (weekday / weekend), same robust EWMA per slot. Catches slow drift and loads
              that are unusual *for that time of day*, which the fast level detector adapts to.
``flatline``  raw value unchanged (within ``flat_eps``) for ``flat_samples`` readings or
              ``flat_seconds``: a stuck sensor or a frozen register.
``spike``     rate of change: the step from the previous value against a robust EWMA of step sizes,
              plus an optional absolute limit in units per second. After a flagged spike the next
              step is measured from the better of the spike value and the value before it, so the
              return from a one-point spike is not flagged again and a level shift is flagged once.
``counter``   cumulative counters only: a negative step (rollover, replacement, reset or glitch) or
              a rate above the physically possible maximum (e.g. more kWh per hour than the
              breaker allows). For counters the level, seasonal and spike detectors run on the
              derived rate (units per hour, i.e. kW for kWh), which is what carries the behaviour.

Reason codes (ties go to the more specific cause: counter, flatline, spike, seasonal, level):
``REASON_NONE=0, REASON_LEVEL=1, REASON_SEASONAL=2, REASON_FLATLINE=3, REASON_SPIKE=4,
REASON_COUNTER=5``.

Warm-up is explicit: a series scores 0 until it has ``warmup_samples`` readings (and the level and
spike detectors that many usable values; a seasonal slot ``seasonal_min_count`` observations).
"""
from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Sequence

import numba
import numpy as np

from pipelines._prefetch import prefetch_row
from pipelines.growth import grown_capacity
from pipelines.batch import ReadingBatch

REASON_NONE = 0
REASON_LEVEL = 1
REASON_SEASONAL = 2
REASON_FLATLINE = 3
REASON_SPIKE = 4
REASON_COUNTER = 5
REASON_NAMES = {
    REASON_NONE: "none",
    REASON_LEVEL: "level",
    REASON_SEASONAL: "seasonal",
    REASON_FLATLINE: "flatline",
    REASON_SPIKE: "spike",
    REASON_COUNTER: "counter",
}

# For a normal distribution E|x - mu| = sigma * sqrt(2/pi): multiplying the mean absolute
# deviation by sqrt(pi/2) gives a sigma-equivalent scale, so z thresholds read like usual z-scores.
MAD_TO_SIGMA = 1.2533141373155003

PREFETCH_AHEAD = 12  # points; enough to cover an L2/L3 miss at ~20 ns per point
DAY_NS = 86_400 * 1_000_000_000
HOUR_NS = 3_600 * 1_000_000_000
CHINA_UTC_OFFSET_S = 8 * 3600  # China Standard Time, no daylight saving


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """Detector settings for one kind of device; packed into one row of a float64 table.

    Defaults suit a power gauge or a kWh counter polled every few seconds to minutes. ``inf``
    disables a threshold; 0 disables the flatline criteria.
    """

    warmup_samples: int = 30  # readings before any score is non-zero
    level_alpha: float = 0.05  # EWMA weight per usable value (~20-sample memory)
    level_z_lo: float = 4.0  # score starts rising at this z ...
    level_z_hi: float = 8.0  # ... and reaches 1 here
    clip: float = 6.0  # robust updates: residuals beyond clip*scale are outliers
    floor_abs: float = 1e-9  # scale never below this (units of the value)
    floor_rel: float = 0.001  # nor below this fraction of |baseline|: quiet signals stay quiet
    seasonal: bool = True  # keep a time-of-day x weekday/weekend baseline
    seasonal_alpha: float = 0.05  # EWMA weight per observation within a slot
    seasonal_min_count: int = 6  # observations in a slot before it scores
    seasonal_z_lo: float = 5.0  # wider than level: slot scales rest on few observations
    seasonal_z_hi: float = 10.0
    flat_samples: int = 0  # unchanged for this many readings -> flatline (0: off)
    flat_seconds: float = 3600.0  # unchanged for this long -> flatline (0: off)
    flat_eps: float = 0.0  # "unchanged" tolerance; 0 = exactly equal (a stuck register)
    flat_ignore_zero: bool = True  # runs of exact zeros are normal (PV at night, idle loads)
    spike_alpha: float = 0.05
    spike_z_lo: float = 6.0
    spike_z_hi: float = 10.0
    max_rate_per_s: float = float("inf")  # absolute rate-of-change limit, units per second
    counter_max_per_hour: float = float("inf")  # counters: max increase per hour (kW for kWh)
    counter_neg_tol: float = 0.0  # counters: backwards steps up to this are jitter, not faults

    @classmethod
    def counter(cls, max_per_hour: float, **overrides: float) -> "DetectorParams":
        """Params for a cumulative counter: the rate is what the statistical detectors watch."""
        base = dict(flat_seconds=6 * 3600.0, flat_ignore_zero=False, counter_max_per_hour=max_per_hour)
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DetectorParams))
N_PARAMS = len(PARAM_NAMES)
(
    P_WARMUP,
    P_LEVEL_ALPHA,
    P_LEVEL_Z_LO,
    P_LEVEL_Z_HI,
    P_CLIP,
    P_FLOOR_ABS,
    P_FLOOR_REL,
    P_SEASONAL,
    P_SEAS_ALPHA,
    P_SEAS_MIN,
    P_SEAS_Z_LO,
    P_SEAS_Z_HI,
    P_FLAT_N,
    P_FLAT_S,
    P_FLAT_EPS,
    P_FLAT_IGNORE_ZERO,
    P_SPIKE_ALPHA,
    P_SPIKE_Z_LO,
    P_SPIKE_Z_HI,
    P_MAX_RATE,
    P_CTR_MAX,
    P_CTR_NEG_TOL,
) = range(N_PARAMS)


def pack_params(params: Sequence[DetectorParams]) -> np.ndarray:
    """Pack one DetectorParams per device kind into the (n_kinds, N_PARAMS) float64 table.

    Pack once at configuration time: the kernel reads the table, never Python objects.
    """
    if not params:
        raise ValueError("at least one DetectorParams is needed")
    table = np.empty((len(params), N_PARAMS), dtype=np.float64)
    for k, p in enumerate(params):
        if not isinstance(p, DetectorParams):
            raise TypeError(f"params[{k}] is {type(p).__name__}, expected DetectorParams")
        if not (0.0 < p.level_alpha <= 1.0 and 0.0 < p.seasonal_alpha <= 1.0 and 0.0 < p.spike_alpha <= 1.0):
            raise ValueError(f"params[{k}]: alphas must be in (0, 1]")
        if p.level_z_hi < p.level_z_lo or p.seasonal_z_hi < p.seasonal_z_lo or p.spike_z_hi < p.spike_z_lo:
            raise ValueError(f"params[{k}]: each z_hi must be >= its z_lo")
        table[k] = np.array([float(v) for v in astuple(p)], dtype=np.float64)
    return table


# Row layout of the per-series state (one cache line each).
F_MEAN, F_DEV, F_LAST_X, F_LAST_V, F_PREV_V, F_STEP_DEV = range(6)
NF = 8
I_NV, I_NRAW, I_LAST_TS, I_RUN, I_RUN_START, I_LAST_SPIKE, I_OUTLIERS, I_STEP_OUTLIERS = range(8)
NI = 8
S_MEAN, S_DEV, S_COUNT, S_OUTLIERS = range(4)
NS = 4


class DetectorState:
    """Per-series detector state in arrays indexed by series id; grows by doubling.

    ``f`` (cap, 8) float64 and ``i`` (cap, 8) int64 hold the level, spike, flatline and counter
    state; ``seasonal`` (2 * slots_per_day, cap, 4) float32 holds mean, deviation and count per
    time-of-day slot. The slot axis comes first so that the many series reporting at the same time
    of day touch neighbouring memory. float32 is plenty for a baseline and halves the largest array.
    """

    __slots__ = ("cap", "f", "i", "seasonal", "slots_per_day", "utc_offset_s", "_scratch")

    def __init__(self, n_series: int = 64, slots_per_day: int = 96, utc_offset_s: int = CHINA_UTC_OFFSET_S):
        if slots_per_day <= 0 or DAY_NS % slots_per_day:
            raise ValueError("slots_per_day must divide a day into whole nanoseconds")
        self.slots_per_day = int(slots_per_day)
        self.utc_offset_s = int(utc_offset_s)
        self.cap = 0
        self.f = np.zeros((0, NF), dtype=np.float64)
        self.i = np.zeros((0, NI), dtype=np.int64)
        self.seasonal = np.zeros((2 * self.slots_per_day, 0, NS), dtype=np.float32)
        self._scratch: dict[str, np.ndarray] = {}
        self.ensure_capacity(max(int(n_series), 1))

    def scratch(self, name: str, n: int, dtype: type) -> np.ndarray:
        """A reusable work array of at least ``n`` entries (multi-threaded scoring only)."""
        a = self._scratch.get(name)
        if a is None or len(a) < n:
            a = self._scratch[name] = np.empty(max(n, 2 * len(a) if a is not None else n), dtype=dtype)
        return a

    def ensure_capacity(self, n_series: int) -> None:
        """Make room for ids < n_series, doubling so growth is amortised O(1) per new series."""
        if n_series <= self.cap:
            return
        cap = grown_capacity(self.cap, n_series)
        f = np.zeros((cap, NF), dtype=np.float64)
        f[: self.cap] = self.f
        i = np.zeros((cap, NI), dtype=np.int64)
        i[: self.cap] = self.i
        seas = np.zeros((2 * self.slots_per_day, cap, NS), dtype=np.float32)
        seas[:, : self.cap] = self.seasonal
        self.f, self.i, self.seasonal, self.cap = f, i, seas, cap

    def reset_series(self, series_id: int) -> None:
        """Forget one series (e.g. its device was replaced): it warms up again from scratch."""
        if 0 <= series_id < self.cap:
            self.f[series_id] = 0.0
            self.i[series_id] = 0
            self.seasonal[:, series_id] = 0.0


# After this many outliers in a row the scale is allowed to grow again: a real change of regime
# (or a scale that was under-estimated during warm-up) must not freeze the detector for good.
OUTLIER_RUN_ADAPT = 3
# The scale is widened by (1 + SMALL_SAMPLE / residuals seen): x2 after 4 residuals, x1.1 after 40,
# and not at all from WIDEN_UNTIL residuals on (the factor is below 1.004 there anyway).
SMALL_SAMPLE = 4.0
WIDEN_UNTIL = 1024
# the factor per residual count, looked up rather than divided on every point (index n - 1 >= 1)
_WIDEN = np.array([1.0] + [1.0 + SMALL_SAMPLE / i for i in range(1, WIDEN_UNTIL)], dtype=np.float64)
# No clipping before this many residuals: one residual can be arbitrarily small by chance, and a
# clip against that would reject every normal value that follows.
CLIP_AFTER = 8


@numba.njit(cache=True, error_model="numpy", inline="always")
def _robust_ewma(v, m, dev, n, outl, alpha, clip, floor_abs, floor_rel, z_lo, z_hi):  # pragma: no cover
    """One robust EWMA step of mean ``m`` and absolute deviation ``dev`` (``n`` values so far).

    Returns (m, dev, outliers in a row, score of ``v`` against the state before it). The score
    ramps from 0 at ``z_lo`` to 1 at ``z_hi`` (0 while the scale is undefined); it is computed
    without a division unless ``v`` is past ``z_lo``, which keeps the common path cheap.

    The first values are averaged with weight 1/n instead of ``alpha`` so a short warm-up gives an
    unbiased scale (an EWMA started from one sample would keep that sample's luck for ~1/alpha
    values), and a scale from few residuals is widened as Student's t does, for the score and the
    outlier limit alike, so an unlucky early estimate cannot lock itself in. From CLIP_AFTER
    residuals on, residuals beyond ``clip`` scale units move the mean by a bounded step and do not
    feed the scale, unless they keep coming (OUTLIER_RUN_ADAPT in a row).
    """
    if n == 0:
        return v, 0.0, 0, 0.0
    r = v - m
    ar = abs(r)
    a = alpha
    if n * alpha < 1.0:
        a = 1.0 / (n + 1)
    if n == 1:
        return m + a * r, ar, 0, 0.0
    a_dev = alpha
    if (n - 1) * alpha < 1.0:
        a_dev = 1.0 / n
    scale = max(MAD_TO_SIGMA * dev, floor_abs, floor_rel * abs(m))
    if n <= WIDEN_UNTIL:
        scale *= _WIDEN[n - 1]
    score = 0.0
    if ar > z_lo * scale:
        if ar >= z_hi * scale:
            score = 1.0
        else:
            score = (ar / scale - z_lo) / (z_hi - z_lo)
    lim = clip * scale
    if ar <= lim or n <= CLIP_AFTER:
        return m + a * r, dev + a_dev * (ar - dev), 0, score
    outl += 1
    if outl >= OUTLIER_RUN_ADAPT:
        dev += a_dev * (lim - dev)
    if r > 0.0:
        return m + a * lim, dev, outl, score
    return m - a * lim, dev, outl, score


@numba.njit(cache=True, error_model="numpy")
def _score_kernel(series, ts, value, kind_of, is_counter, P, F, I, S, cap, off_ns, slot_ns, spd,
                  order, lo, hi, out_score, out_reason):  # pragma: no cover - compiled
    # Scores positions lo..hi-1. With an empty ``order`` a position is the reading's index and
    # results go to that index; otherwise position p means reading order[p] and results go to
    # position p (one thread's contiguous slice: no false sharing between threads).
    # Returns -1, or the index of a reading whose series or kind is out of range.
    # P, F, I and S are the flattened (1-D) tables: row offsets are computed once per reading, and
    # the early range checks let LLVM drop numba's negative-index handling on every access.
    n_kinds = P.shape[0] // N_PARAMS
    direct = order.shape[0] == 0
    if lo < 0:  # (lets LLVM see that positions are never negative and drop wrap-around code)
        lo = 0
    c_lo = np.int64(1)
    c_hi = np.int64(0)
    c_slot = 0
    for pos in range(lo, hi):
        idx = pos if direct else order[pos]
        ahead_pos = pos + PREFETCH_AHEAD
        if ahead_pos < hi:
            ahead = series[ahead_pos] if direct else series[order[ahead_pos]]
            if ahead >= 0 and ahead < cap:
                prefetch_row(F, ahead * NF)
                prefetch_row(I, ahead * NI)
                prefetch_row(S, (c_slot * cap + ahead) * NS)
        u = np.uint64(idx)  # unsigned indices: no negative-index handling on each access
        s = series[u]
        t = ts[u]
        x = value[u]
        if not np.isfinite(x):
            out_score[np.uint64(pos)] = 0.0
            out_reason[np.uint64(pos)] = REASON_NONE
            continue
        if s < 0 or s >= cap:
            return idx
        k = kind_of[s]
        if k < 0 or k >= n_kinds:
            return idx
        pk = k * N_PARAMS
        fb = s * NF
        ib = s * NI
        nraw = I[ib + I_NRAW]
        warm = nraw >= P[pk + P_WARMUP]
        last_x = F[fb + F_LAST_X]
        dt = t - I[ib + I_LAST_TS]
        floor_abs = P[pk + P_FLOOR_ABS]
        floor_rel = P[pk + P_FLOOR_REL]
        clip = P[pk + P_CLIP]

        # ---- flatline on the raw value
        if nraw > 0 and abs(x - last_x) <= P[pk + P_FLAT_EPS]:
            run = I[ib + I_RUN] + 1
            run_start = I[ib + I_RUN_START]
        else:
            run = np.int64(1)
            run_start = t
        I[ib + I_RUN] = run
        I[ib + I_RUN_START] = run_start
        s_flat = 0.0
        if warm and not (P[pk + P_FLAT_IGNORE_ZERO] != 0.0 and x == 0.0):
            fn = P[pk + P_FLAT_N]
            fsec = P[pk + P_FLAT_S]
            if (fn > 0.0 and run >= fn) or (fsec > 0.0 and run >= 2 and (t - run_start) >= fsec * 1e9):
                s_flat = 1.0

        # ---- counter sanity; counters feed their rate to the statistical detectors
        s_ctr = 0.0
        v = x
        if is_counter[s]:
            v = np.nan
            if nraw > 0:
                d = x - last_x
                if d < -P[pk + P_CTR_NEG_TOL]:
                    s_ctr = 1.0
                elif dt > 0:
                    if d < 0.0:
                        d = 0.0
                    rate = d * (HOUR_NS / dt)
                    if rate > P[pk + P_CTR_MAX]:
                        s_ctr = 1.0
                    else:
                        v = rate
            if not warm:
                s_ctr = 0.0

        s_lvl = 0.0
        s_seas = 0.0
        s_spk = 0.0
        if np.isfinite(v):
            nv = I[ib + I_NV]
            scored = warm and nv >= P[pk + P_WARMUP]
            # ---- level: robust EWMA of value and absolute deviation
            m, dev, outl, sc = _robust_ewma(v, F[fb + F_MEAN], F[fb + F_DEV], nv, I[ib + I_OUTLIERS],
                                            P[pk + P_LEVEL_ALPHA], clip, floor_abs, floor_rel,
                                            P[pk + P_LEVEL_Z_LO], P[pk + P_LEVEL_Z_HI])
            if scored:
                s_lvl = sc
            F[fb + F_MEAN] = m
            F[fb + F_DEV] = dev
            I[ib + I_OUTLIERS] = outl

            # ---- spike / rate of change: step size against a robust scale of step sizes
            last_spike = 0
            if nv >= 1:
                last_v = F[fb + F_LAST_V]
                step = abs(v - last_v)
                if I[ib + I_LAST_SPIKE] != 0:
                    step = min(step, abs(v - F[fb + F_PREV_V]))
                # steps are treated as deviations around 0: mean pinned at 0, count = nv - 1
                _, sdev, souts, sc = _robust_ewma(step, 0.0, F[fb + F_STEP_DEV], nv, I[ib + I_STEP_OUTLIERS],
                                                  P[pk + P_SPIKE_ALPHA], clip, max(floor_abs, floor_rel * abs(m)),
                                                  0.0, P[pk + P_SPIKE_Z_LO], P[pk + P_SPIKE_Z_HI])
                F[fb + F_STEP_DEV] = sdev
                I[ib + I_STEP_OUTLIERS] = souts
                if scored:
                    s_spk = sc
                    if dt > 0 and abs(v - last_v) * 1e9 > P[pk + P_MAX_RATE] * dt:
                        s_spk = 1.0
                if s_spk >= 0.5:
                    last_spike = 1
                F[fb + F_PREV_V] = last_v
            I[ib + I_LAST_SPIKE] = last_spike
            F[fb + F_LAST_V] = v

            # ---- seasonal baseline by local time of day and day type
            if P[pk + P_SEASONAL] != 0.0:
                if t < c_lo or t >= c_hi:
                    local = t + off_ns
                    day = local // DAY_NS
                    sl = (local - day * DAY_NS) // slot_ns
                    weekend = 1 if (day + 3) % 7 >= 5 else 0  # 1970-01-01 was a Thursday
                    c_slot = weekend * spd + sl
                    c_lo = day * DAY_NS + sl * slot_ns - off_ns
                    c_hi = c_lo + slot_ns
                sb = (c_slot * cap + s) * NS
                cnt = S[sb + S_COUNT]
                ms, ds, souts, sc = _robust_ewma(
                    v, np.float64(S[sb + S_MEAN]), np.float64(S[sb + S_DEV]), np.int64(cnt),
                    np.int64(S[sb + S_OUTLIERS]), P[pk + P_SEAS_ALPHA], clip, floor_abs, floor_rel,
                    P[pk + P_SEAS_Z_LO], P[pk + P_SEAS_Z_HI],
                )
                if warm and cnt >= P[pk + P_SEAS_MIN]:
                    s_seas = sc
                S[sb + S_MEAN] = ms
                S[sb + S_DEV] = ds
                S[sb + S_OUTLIERS] = min(souts, 255)
                if cnt < 65535.0:
                    S[sb + S_COUNT] = cnt + 1.0
            I[ib + I_NV] = nv + 1

        I[ib + I_NRAW] = nraw + 1
        I[ib + I_LAST_TS] = t
        F[fb + F_LAST_X] = x

        # ---- combine: maximum, ties to the more specific cause
        best = s_ctr
        reason = REASON_COUNTER
        if s_flat > best:
            best = s_flat
            reason = REASON_FLATLINE
        if s_spk > best:
            best = s_spk
            reason = REASON_SPIKE
        if s_seas > best:
            best = s_seas
            reason = REASON_SEASONAL
        if s_lvl > best:
            best = s_lvl
            reason = REASON_LEVEL
        if best <= 0.0:
            reason = REASON_NONE
            best = 0.0
        out_score[np.uint64(pos)] = best
        out_reason[np.uint64(pos)] = reason
    return -1


# Series are dealt to threads in blocks of this many neighbouring ids, so two threads never write
# the same cache line of the state (a seasonal entry is 16 bytes: 4 series share a 64-byte line).
PARTITION_BLOCK_SHIFT = 4


@numba.njit(cache=True)
def _partition(series, n_parts, bounds, fill, order, where):  # pragma: no cover - compiled
    # Stable counting sort of reading indices by series block: each part is one thread's work, in
    # arrival order, and no series is in two parts. ``where`` is the inverse of ``order``. (No
    # allocation in kernels: it would pull numba's allocator into the compile, seconds at start-up.)
    for p in range(n_parts + 1):
        bounds[p] = 0
    for i in range(series.shape[0]):
        bounds[(series[i] >> PARTITION_BLOCK_SHIFT) % n_parts + 1] += 1
    for p in range(n_parts):
        bounds[p + 1] += bounds[p]
        fill[p] = bounds[p]
    for i in range(series.shape[0]):
        p = (series[i] >> PARTITION_BLOCK_SHIFT) % n_parts
        order[fill[p]] = i
        where[i] = fill[p]
        fill[p] += 1


@numba.njit(cache=True, parallel=True)
def _score_parallel(series, ts, value, kind_of, is_counter, P, F, I, S, cap, off_ns, slot_ns, spd,
                    order, where, bounds, buf_score, buf_reason, out_score, out_reason, bad):  # pragma: no cover
    n_parts = bounds.shape[0] - 1
    for p in numba.prange(n_parts):
        bad[p] = _score_kernel(series, ts, value, kind_of, is_counter, P, F, I, S, cap, off_ns, slot_ns, spd,
                               order, bounds[p], bounds[p + 1], buf_score, buf_reason)
    # gather back into arrival order, each thread a contiguous slice of the output
    n = series.shape[0]
    chunk = (n + n_parts - 1) // n_parts
    for p in numba.prange(n_parts):
        for i in range(p * chunk, min(n, (p + 1) * chunk)):
            out_score[i] = buf_score[where[i]]
            out_reason[i] = buf_reason[where[i]]


def _as(a: np.ndarray, dtype: type) -> np.ndarray:
    """The array itself when it already has the kernel's dtype and layout (no copy on the hot path)."""
    return np.ascontiguousarray(a, dtype=dtype)


def _check_ids(series: np.ndarray, n_per_series: Sequence[np.ndarray]) -> int:
    smin = int(series.min())
    smax = int(series.max())
    if smin < 0:
        raise ValueError(f"negative series id {smin}")
    for arr in n_per_series:
        if len(arr) <= smax:
            raise ValueError(f"per-series array has {len(arr)} entries, batch uses series id {smax}")
    return smax


def score_batch(
    batch: ReadingBatch,
    state: DetectorState,
    params_table: np.ndarray | Sequence[DetectorParams],
    series_kind: np.ndarray,
    series_is_counter: np.ndarray,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Score every reading of ``batch`` in arrival order and fold it into ``state``.

    ``params_table``: from :func:`pack_params` (pass the packed array; a sequence is packed per call).
    ``series_kind``: int32 kind index per series id (row of the table); ``series_is_counter``: bool
    per series id. Returns ``(score float32 in [0, 1], reason uint8)``, one per reading.

    ``threads > 1`` splits the series (not the readings) across that many numba threads; results
    are bitwise identical to ``threads=1``. Worth it for large batches (backfill, benchmarks); the
    first call compiles the parallel driver (``warm_up(threads=...)`` does that at start-up).
    """
    n = len(batch)
    score = np.empty(n, dtype=np.float32)
    reason = np.empty(n, dtype=np.uint8)
    if n == 0:
        return score, reason
    table = params_table if isinstance(params_table, np.ndarray) else pack_params(params_table)
    table = _as(table, np.float64)
    kinds = _as(series_kind, np.int32)
    counters = _as(series_is_counter, np.bool_)
    series = _as(batch.series, np.int32)
    smax = _check_ids(series, (kinds, counters))
    state.ensure_capacity(smax + 1)
    ts = _as(batch.ts_ns, np.int64)
    value = _as(batch.value, np.float64)
    off = np.int64(state.utc_offset_s * 1_000_000_000)
    slot_ns = np.int64(DAY_NS // state.slots_per_day)
    spd = np.int64(state.slots_per_day)
    flat_p, flat_f, flat_i, flat_s = table.reshape(-1), state.f.reshape(-1), state.i.reshape(-1), state.seasonal.reshape(-1)
    cap = np.int64(state.cap)
    if threads <= 1 or n < 4 * PARALLEL_MIN_PER_THREAD:
        bad = int(_score_kernel(series, ts, value, kinds, counters, flat_p, flat_f, flat_i, flat_s, cap,
                                off, slot_ns, spd, _NO_ORDER, 0, n, score, reason))
    else:
        parts = int(min(threads, max(1, n // PARALLEL_MIN_PER_THREAD)))
        order = state.scratch("order", n, np.int64)
        bounds = np.empty(parts + 1, dtype=np.int64)
        where = state.scratch("where", n, np.int64)
        _partition(series, np.int64(parts), bounds, np.empty(parts, dtype=np.int64), order, where)
        errs = np.full(parts, -1, dtype=np.int64)
        _score_parallel(series, ts, value, kinds, counters, flat_p, flat_f, flat_i, flat_s, cap, off,
                        slot_ns, spd, order, where, bounds, state.scratch("score", n, np.float32),
                        state.scratch("reason", n, np.uint8), score, reason, errs)
        bad = int(errs.max())
    if bad >= 0:
        sid = int(series[bad])
        raise ValueError(f"series {sid} has kind {int(kinds[sid])}, table has {len(table)} kinds")
    return score, reason


_NO_ORDER = np.empty(0, dtype=np.int64)
PARALLEL_MIN_PER_THREAD = 50_000  # below this a thread costs more to wake than it saves


# ------------------------------------------------------------------ alerts with hysteresis


@numba.njit(cache=True)
def _alert_kernel(series, score, reason, active, raise_at, clear_at, out_change):  # pragma: no cover
    for idx in range(series.shape[0]):
        s = series[idx]
        sc = score[idx]
        change = 0
        if active[s] == 0:
            if sc >= raise_at and reason[idx] != REASON_NONE:
                active[s] = reason[idx]
                change = 1
        elif sc <= clear_at:
            active[s] = 0
            change = -1
        out_change[idx] = change


class AlertState:
    """Open alert per series (its reason code, 0 when clear); raise and clear thresholds differ so
    an alert does not flap while a score hovers around one threshold."""

    __slots__ = ("active", "raise_at", "clear_at")

    def __init__(self, n_series: int = 64, raise_at: float = 0.8, clear_at: float = 0.2):
        if not 0.0 <= clear_at < raise_at <= 1.0:
            raise ValueError("need 0 <= clear_at < raise_at <= 1")
        self.active = np.zeros(max(int(n_series), 16), dtype=np.uint8)
        self.raise_at = float(raise_at)
        self.clear_at = float(clear_at)

    def ensure_capacity(self, n_series: int) -> None:
        cap = len(self.active)
        if n_series <= cap:
            return
        while cap < n_series:
            cap *= 2
        grown = np.zeros(cap, dtype=np.uint8)
        grown[: len(self.active)] = self.active
        self.active = grown


def update_alerts(
    series: np.ndarray, score: np.ndarray, reason: np.ndarray, state: AlertState
) -> np.ndarray:
    """Per reading: +1 where an alert is raised, -1 where it clears, 0 otherwise (int8)."""
    out = np.zeros(len(series), dtype=np.int8)
    if len(series) == 0:
        return out
    s = _as(series, np.int32)
    state.ensure_capacity(_check_ids(s, ()) + 1)
    _alert_kernel(s, _as(score, np.float32), _as(reason, np.uint8), state.active,
                  np.float32(state.raise_at), np.float32(state.clear_at), out)
    return out


# ------------------------------------------------------------------ plain EWMA z-score


@numba.njit(cache=True)
def _ewma_z_kernel(series, value, alpha, state, out):  # pragma: no cover - compiled
    for idx in range(series.shape[0]):
        s = series[idx]
        v = value[idx]
        if not np.isfinite(v):
            out[idx] = np.nan
            continue
        n = state[s, 2]
        if n == 0.0:
            state[s, 0] = v
            out[idx] = np.nan
        else:
            m = state[s, 0]
            r = v - m
            if n == 1.0:
                out[idx] = np.nan
                state[s, 1] = abs(r)
            else:
                d = state[s, 1]
                out[idx] = r / (MAD_TO_SIGMA * d)
                state[s, 1] = d + alpha * (abs(r) - d)
            state[s, 0] = m + alpha * r
        state[s, 2] = n + 1.0


def ewma_zscore(series: np.ndarray, value: np.ndarray, alpha: float, state: np.ndarray) -> np.ndarray:
    """Plain causal EWMA z-score per series: the level detector with no clipping and no floors.

    ``z_t = (x_t - m_{t-1}) / (sqrt(pi/2) * d_{t-1})`` with ``m`` the EWMA of x and ``d`` the EWMA
    of ``|x_t - m_{t-1}|`` (both ``adjust=False``, first value initialises). NaN for a series' first
    two values. ``state``: float64 (n_series, 3) array, zeros initially. It exists so benchmarks can
    check peers (polars, pandas, river) compute the same thing as the kernel they are compared with.
    """
    out = np.empty(len(series), dtype=np.float64)
    if len(series) == 0:
        return out
    s = _as(series, np.int32)
    smax = _check_ids(s, ())
    if state.shape[0] <= smax or state.shape[1] != 3 or state.dtype != np.float64:
        raise ValueError("state must be float64 (n_series, 3) covering every series id")
    _ewma_z_kernel(s, _as(value, np.float64), float(alpha), state, out)
    return out
