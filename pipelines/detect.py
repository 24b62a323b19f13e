"""Causal streaming anomaly detection per series, in one numba pass over an interleaved batch.

Why this shape:

* Readings of thousands of series arrive interleaved, in arrival order. Sorting or grouping a batch
  per series would cost more than the detectors themselves, so one kernel walks the batch once and
  keeps every series' state in arrays indexed by the dense series id (``pipelines.series``).
* Every detector is *causal*: a point is scored against the state built from the points before it
  and only then folded into the state. Nothing depends on where a batch starts or ends, so feeding
  a series whole or split into any batches gives bitwise identical scores (a test checks this).
* Per-series state is packed row-wise (one 128-byte row per series: eight float64 and eight int64
  fields) so a reading touches one row instead of one cache line per detector variable.
* Most readings change no score. The kernel computes that case straight through, keeping the new
  state in registers, and hands any other reading (first values, anything that scores or is
  clipped, counter anomalies) to a general path that covers every case with the same arithmetic:
  results are bitwise those of the general path alone (a test checks this on random data).
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

from pipelines._intrinsics import as_float64, as_int64_flat
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

SKIP_BLOCK = 16  # readings tested at once for another thread's series (one cache line of ids)
CHECK_CHUNK = 16384  # readings whose series ids are checked at once (64 KiB of ids: in cache)
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


# Row layout of the per-series state: one 128-byte row per series, eight float64 fields then eight
# int64 fields. The kernels get the same buffer twice, as float64 (F) and as int64 (R), and index
# both with the row offset s * NR.
F_MEAN, F_DEV, F_LAST_X, F_LAST_V, F_PREV_V, F_STEP_DEV = range(6)
NF = 8
I_NV, I_NRAW, I_LAST_TS, I_RUN, I_RUN_START, I_LAST_SPIKE, I_OUTLIERS, I_STEP_OUTLIERS = range(NF, NF + 8)
NI = 8
NR = NF + NI
S_MEAN, S_DEV, S_COUNT, S_OUTLIERS = range(4)
# the same as unsigned offsets (unsigned plus signed would be a float in numba)
_U_DEV, _U_COUNT, _U_OUTLIERS = np.uint64(S_DEV), np.uint64(S_COUNT), np.uint64(S_OUTLIERS)
NS = 4
# G (int64): geometry, then one row of NQ per kind: the kind's parameters (read as float64 through
# a view; the kernel's copy of the table, one base register with everything else it reads per
# kind) and integer thresholds derived from them whenever they change, so that counts are compared
# with integers instead of being converted and multiplied on every reading.
G_CAP, G_OFF, G_SLOT, G_SPD, G_NKINDS = range(5)
G_Q0 = 8
Q_WARM, Q_LVL_A, Q_SPK_A, Q_SEAS_A, Q_SEAS_MIN, Q_FLAT_N = range(N_PARAMS, N_PARAMS + 6)
# Quiet-path limits (see _score_kernel): float min(z_lo, clip) per detector, and the integer
# flat_seconds in ns (or NEVER).
Q_LVL_T, Q_SPK_T, Q_SEAS_T, Q_FLAT_NS = range(N_PARAMS + 6, N_PARAMS + 10)
# ... and float: 0.0 when runs of zeros are not flatlines, else NaN (x == it is then the test in one
# comparison); -counter_neg_tol; counter_max_per_hour capped to the largest finite float64.
Q_ZERO_OK, Q_NEG_TOL, Q_CTR_LIM = range(N_PARAMS + 10, N_PARAMS + 13)
NQ = 40
NEVER = np.int64(1) << 62  # a count no series reaches
_MAX_FLOAT = np.finfo(np.float64).max


class DetectorState:
    """Per-series detector state in arrays indexed by series id; grows by doubling.

    ``f`` (cap, 8) float64 and ``i`` (cap, 8) int64 (views of one buffer of 128-byte rows) hold the
    level, spike, flatline and counter state; ``seasonal`` (2 * slots_per_day, cap, 4) float32
    holds mean, deviation and count per time-of-day slot. The slot axis comes first so that the
    many series reporting at the same time of day touch neighbouring memory. float32 is plenty for
    a baseline and halves the largest array.
    """

    __slots__ = ("cap", "f", "i", "seasonal", "slots_per_day", "utc_offset_s", "_rows", "_rows_f",
                 "_seas_flat", "_g")

    def __init__(self, n_series: int = 64, slots_per_day: int = 96, utc_offset_s: int = CHINA_UTC_OFFSET_S):
        if slots_per_day <= 0 or DAY_NS % slots_per_day:
            raise ValueError("slots_per_day must divide a day into whole nanoseconds")
        self.slots_per_day = int(slots_per_day)
        self.utc_offset_s = int(utc_offset_s)
        self.cap = 0
        self._rows = np.zeros(0, dtype=np.int64)
        self.seasonal = np.zeros((2 * self.slots_per_day, 0, NS), dtype=np.float32)
        self._g = np.zeros(G_Q0 + 4 * NQ, dtype=np.int64)
        self._g[G_OFF] = self.utc_offset_s * 1_000_000_000
        self._g[G_SLOT] = DAY_NS // self.slots_per_day
        self._g[G_SPD] = self.slots_per_day
        self._g[G_NKINDS] = -1  # no parameters derived yet
        self.ensure_capacity(max(int(n_series), 1))

    def ensure_capacity(self, n_series: int) -> None:
        """Make room for ids < n_series, doubling so growth is amortised O(1) per new series."""
        if n_series <= self.cap:
            return
        cap = grown_capacity(self.cap, n_series)
        rows = np.zeros(cap * NR, dtype=np.int64)
        rows[: self.cap * NR] = self._rows
        seas = np.zeros((2 * self.slots_per_day, cap, NS), dtype=np.float32)
        seas[:, : self.cap] = self.seasonal
        self._rows, self._rows_f, self.seasonal, self.cap = rows, rows.view(np.float64), seas, cap
        self.f = self._rows_f.reshape(cap, NR)[:, :NF]
        self.i = rows.reshape(cap, NR)[:, NF:]
        self._seas_flat = seas.reshape(-1)
        self._g[G_CAP] = cap

    def ensure_kinds(self, n_kinds: int) -> None:
        if G_Q0 + n_kinds * NQ > len(self._g):
            self._g = np.concatenate([self._g[:G_Q0], np.zeros(n_kinds * NQ, dtype=np.int64)])
            self._g[G_NKINDS] = -1

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
# 1/n for n <= WIDEN_UNTIL, looked up while a series warms up: the same IEEE quotient as dividing,
# without a division (LLVM would compute a division on every path to turn the branch into a select).
_INV = np.array([np.inf] + [1.0 / i for i in range(1, WIDEN_UNTIL + 1)], dtype=np.float64)
# No clipping before this many residuals: one residual can be arbitrarily small by chance, and a
# clip against that would reject every normal value that follows.
CLIP_AFTER = 8

# (The helpers below are compiled only into _score_kernel, whose cache entry holds their code: they
# have no cache of their own, which would only cost writes while the kernel compiles.)

# (The kernels spell out min and max as conditional expressions: numba compiles its builtin min and
# max as separate functions per argument types, a tenth of a second each at start-up. ``a if a >= b
# else b`` and friends keep the builtins' order of comparison, so NaN handling is the same.)


def _first_n(a: float, b: float) -> int:
    # Smallest n in [0, NEVER] with float(n) * a >= b, NEVER if there is none: the exact integer
    # form of the float comparison (float(n) * a is monotone in n for a > 0). Plain Python: int *
    # float rounds the int to the nearest float64 as numba's int64 to float64 conversion does, so
    # the result is the one a compiled version gives.
    a = float(a)
    b = float(b)
    never = int(NEVER)
    if not a > 0.0 or not never * a >= b:
        return never
    lo = 0
    hi = never
    while lo < hi:
        mid = (lo + hi) >> 1
        if mid * a >= b:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _derive_params(state: "DetectorState", P: np.ndarray) -> None:
    """Copy the (n_kinds, N_PARAMS) float64 table ``P`` into ``state._g`` with the thresholds
    derived from it (_score_kernel returns -2 when G's copy differs from P).

    Why in Python and not in _score_kernel: it runs only when the parameters change, and compiled
    into the kernel (with _first_n) it cost about half a second of the kernel's cold compile.
    Every operation is an IEEE float64 operation as in compiled code, so G is bitwise the same.
    """
    n_kinds = P.shape[0]
    G = state._g
    Gf = G.view(np.float64)
    for k in range(n_kinds):
        qk = G_Q0 + k * NQ
        p = [float(v) for v in P[k, :N_PARAMS]]
        Gf[qk:qk + N_PARAMS] = P[k, :N_PARAMS]
        G[qk + Q_WARM] = _first_n(1.0, p[P_WARMUP])
        G[qk + Q_LVL_A] = _first_n(p[P_LEVEL_ALPHA], 1.0)
        G[qk + Q_SPK_A] = _first_n(p[P_SPIKE_ALPHA], 1.0)
        G[qk + Q_SEAS_A] = _first_n(p[P_SEAS_ALPHA], 1.0)
        G[qk + Q_SEAS_MIN] = _first_n(1.0, p[P_SEAS_MIN])
        G[qk + Q_FLAT_N] = _first_n(1.0, p[P_FLAT_N]) if p[P_FLAT_N] > 0.0 else int(NEVER)
        # the first whole ns count d with float(d) >= flat_seconds * 1e9 (NEVER: off; a run of
        # over NEVER ns then leaves the quiet path, which only costs time)
        fsec = p[P_FLAT_S]
        G[qk + Q_FLAT_NS] = _first_n(1.0, fsec * 1e9) if fsec > 0.0 else int(NEVER)
        Gf[qk + Q_ZERO_OK] = 0.0 if p[P_FLAT_IGNORE_ZERO] != 0.0 else np.nan
        Gf[qk + Q_NEG_TOL] = -p[P_CTR_NEG_TOL]
        cmax = p[P_CTR_MAX]
        cmax = cmax if cmax < _MAX_FLOAT else float(_MAX_FLOAT)
        Gf[qk + Q_CTR_LIM] = cmax if cmax == cmax else -np.inf
        clip = p[P_CLIP]
        for t, z in ((Q_LVL_T, P_LEVEL_Z_LO), (Q_SPK_T, P_SPIKE_Z_LO), (Q_SEAS_T, P_SEAS_Z_LO)):
            zl = p[z]
            zl = zl if zl < clip else clip
            Gf[qk + t] = zl if zl == zl else -np.inf  # (NaN: nothing is quiet)
    G[G_NKINDS] = n_kinds


@numba.njit(error_model="numpy", forceinline=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def _weights_scale(m, dev, n, alpha, n_alpha, floor_abs, floor_rel):  # pragma: no cover - compiled
    # EWMA weights of the mean and of the deviation, and the widened scale, for n >= 2 values so
    # far. While n * alpha < 1 (n < n_alpha) the values are averaged with weight 1/n instead.
    if n > n_alpha:  # the common case: plain EWMA weights
        a = alpha
        a_dev = alpha
    elif n < WIDEN_UNTIL:
        a_dev = _INV[n]
        a = alpha if n >= n_alpha else _INV[n + 1]
    else:  # (alpha below 1/WIDEN_UNTIL: past the table)
        a_dev = 1.0 / n
        a = alpha if n >= n_alpha else 1.0 / (n + 1)
    scale = MAD_TO_SIGMA * dev  # max(MAD_TO_SIGMA * dev, floor_abs, floor_rel * |m|)
    scale = floor_abs if floor_abs > scale else scale
    fr = floor_rel * abs(m)
    scale = fr if fr > scale else scale
    if n <= WIDEN_UNTIL:
        scale *= _WIDEN[n - 1]
    return a, a_dev, scale


@numba.njit(error_model="numpy", forceinline=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def _robust_ewma(v, m, dev, n, outl, alpha, n_alpha, clip, floor_abs, floor_rel, z_lo, z_hi):  # pragma: no cover
    """One robust EWMA step of mean ``m`` and absolute deviation ``dev`` (``n`` values so far).

    Returns (m, dev, outliers in a row, score of ``v`` against the state before it). The score
    ramps from 0 at ``z_lo`` to 1 at ``z_hi`` (0 while the scale is undefined); it is computed
    without a division unless ``v`` is past ``z_lo``. ``n_alpha`` is the first count with
    ``n * alpha >= 1`` (see ``_first_n``).

    The first values are averaged with weight 1/n instead of ``alpha`` (an EWMA started from one
    sample would keep that sample's luck for ~1/alpha values), and a scale from few residuals is
    widened as Student's t does, for the score and the outlier limit alike, so an unlucky early
    estimate cannot lock itself in. From CLIP_AFTER residuals on, residuals beyond ``clip`` scale
    units move the mean by a bounded step and do not feed the scale, unless they keep coming
    (OUTLIER_RUN_ADAPT in a row).
    """
    r = v - m
    ar = abs(r)
    if n < 2:
        if n == 0:
            return v, 0.0, 0, 0.0
        return m + (alpha if n >= n_alpha else 0.5) * r, ar, 0, 0.0  # 0.5 = 1 / (n + 1)
    a, a_dev, scale = _weights_scale(m, dev, n, alpha, n_alpha, floor_abs, floor_rel)
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


@numba.njit(error_model="numpy", forceinline=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def _quiet_ewma(v, m, dev, n, alpha, n_alpha, floor_abs, floor_rel, lim):  # pragma: no cover
    # _robust_ewma for a value within ``lim`` = min(z_lo, clip) scale units: it scores nothing and
    # is not clipped, whether or not the detector is scored yet or clips yet (a value beyond is
    # left to the general path even when it would not score or be clipped: one comparison instead
    # of four). Returns (m, dev, True) then, bitwise as _robust_ewma would, and (.., .., False)
    # otherwise. lim * scale <= z_lo * scale and clip * scale (rounding is monotone, scale >= 0).
    # (The quiet path passes the level and spike detectors n = max(nv, 2), its results being
    # meaningless for fewer values, where the reading is not quiet anyway: LLVM then drops the
    # n < 2 branch and the negative-index handling of the table lookups by n.)
    r = v - m
    ar = abs(r)
    if n < 2:
        if n == 0:
            return v, 0.0, True
        return m + (alpha if n >= n_alpha else 0.5) * r, ar, True
    a, a_dev, scale = _weights_scale(m, dev, n, alpha, n_alpha, floor_abs, floor_rel)
    return m + a * r, dev + a_dev * (ar - dev), ar <= lim * scale


@numba.njit(error_model="numpy", forceinline=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def _slot(t, off_ns, slot_ns, spd, cap):  # pragma: no cover - compiled
    # Seasonal slot of time t: its start and end (UTC ns) and its first entry in the flat S.
    local = t + off_ns
    day = local // DAY_NS
    sl = (local - day * DAY_NS) // slot_ns
    weekend = 1 if (day + 3) % 7 >= 5 else 0  # 1970-01-01 was a Thursday
    lo = day * DAY_NS + sl * slot_ns - off_ns
    return lo, lo + slot_ns, (weekend * spd + sl) * cap


@numba.njit(error_model="numpy", no_cpython_wrapper=True, no_cfunc_wrapper=True)
def _score_one(G, Gf, F, R, S, s, t, x, k, counter, sb):  # pragma: no cover - compiled
    # Every case of every detector for one finite reading x at time t of series s (kind k, a
    # counter or not; sb: its entry in the seasonal table when the kind has one). Updates the
    # state and returns (score, reason). _score_kernel calls it for the readings its quiet path
    # does not cover.
    qk = G_Q0 + k * NQ
    rb = s * NR
    nraw = R[rb + I_NRAW]
    warm = nraw >= G[qk + Q_WARM]
    last_x = F[rb + F_LAST_X]
    dt = t - R[rb + I_LAST_TS]
    clip = Gf[qk + P_CLIP]
    floor_abs = Gf[qk + P_FLOOR_ABS]
    floor_rel = Gf[qk + P_FLOOR_REL]

    # ---- flatline on the raw value
    s_flat = 0.0
    if nraw > 0 and abs(x - last_x) <= Gf[qk + P_FLAT_EPS]:
        run = R[rb + I_RUN] + 1
        run_start = R[rb + I_RUN_START]
    else:
        run = np.int64(1)
        run_start = t
    R[rb + I_RUN] = run
    R[rb + I_RUN_START] = run_start
    if warm and not (Gf[qk + P_FLAT_IGNORE_ZERO] != 0.0 and x == 0.0):
        fsec = Gf[qk + P_FLAT_S]
        if run >= G[qk + Q_FLAT_N] or (fsec > 0.0 and run >= 2 and (t - run_start) >= fsec * 1e9):
            s_flat = 1.0

    # ---- counter sanity; counters feed their rate to the statistical detectors
    s_ctr = 0.0
    v = x
    if counter:
        v = np.nan
        if nraw > 0:
            d = x - last_x
            if d < -Gf[qk + P_CTR_NEG_TOL]:
                s_ctr = 1.0
            elif dt > 0:
                if d < 0.0:
                    d = 0.0
                rate = d * (HOUR_NS / dt)
                if rate > Gf[qk + P_CTR_MAX]:
                    s_ctr = 1.0
                else:
                    v = rate
        if not warm:
            s_ctr = 0.0

    s_lvl = 0.0
    s_seas = 0.0
    s_spk = 0.0
    if v - v == 0.0:
        nv = R[rb + I_NV]
        scored = warm and nv >= G[qk + Q_WARM]
        # ---- level: robust EWMA of value and absolute deviation
        m, dev, outl, sc = _robust_ewma(v, F[rb + F_MEAN], F[rb + F_DEV], nv, R[rb + I_OUTLIERS],
                                        Gf[qk + P_LEVEL_ALPHA], G[qk + Q_LVL_A], clip, floor_abs, floor_rel,
                                        Gf[qk + P_LEVEL_Z_LO], Gf[qk + P_LEVEL_Z_HI])
        if scored:
            s_lvl = sc
        F[rb + F_MEAN] = m
        F[rb + F_DEV] = dev
        R[rb + I_OUTLIERS] = outl

        # ---- spike / rate of change: step size against a robust scale of step sizes
        last_spike = 0
        if nv >= 1:
            last_v = F[rb + F_LAST_V]
            step = abs(v - last_v)
            if R[rb + I_LAST_SPIKE] != 0:
                back = abs(v - F[rb + F_PREV_V])
                step = back if back < step else step  # min(step, back)
            # steps are treated as deviations around 0: mean pinned at 0, count = nv - 1
            fs = floor_rel * abs(m)
            _, sdev, souts, sc = _robust_ewma(step, 0.0, F[rb + F_STEP_DEV], nv, R[rb + I_STEP_OUTLIERS],
                                              Gf[qk + P_SPIKE_ALPHA], G[qk + Q_SPK_A], clip,
                                              fs if fs > floor_abs else floor_abs, 0.0,
                                              Gf[qk + P_SPIKE_Z_LO], Gf[qk + P_SPIKE_Z_HI])
            F[rb + F_STEP_DEV] = sdev
            R[rb + I_STEP_OUTLIERS] = souts
            if scored:
                s_spk = sc
                if dt > 0 and abs(v - last_v) * 1e9 > Gf[qk + P_MAX_RATE] * dt:
                    s_spk = 1.0
            if s_spk >= 0.5:
                last_spike = 1
            F[rb + F_PREV_V] = last_v
        R[rb + I_LAST_SPIKE] = last_spike
        F[rb + F_LAST_V] = v

        # ---- seasonal baseline by local time of day and day type
        if Gf[qk + P_SEASONAL] != 0.0:
            cnt = S[sb + S_COUNT]
            ncnt = np.int64(cnt)
            ms, ds, souts, sc = _robust_ewma(v, np.float64(S[sb + S_MEAN]), np.float64(S[sb + S_DEV]), ncnt,
                                             np.int64(S[sb + S_OUTLIERS]), Gf[qk + P_SEAS_ALPHA], G[qk + Q_SEAS_A],
                                             clip, floor_abs, floor_rel, Gf[qk + P_SEAS_Z_LO], Gf[qk + P_SEAS_Z_HI])
            if warm and ncnt >= G[qk + Q_SEAS_MIN]:
                s_seas = sc
            S[sb + S_MEAN] = ms
            S[sb + S_DEV] = ds
            S[sb + S_OUTLIERS] = souts if souts < 255 else 255
            if cnt < 65535.0:
                S[sb + S_COUNT] = cnt + 1.0
        R[rb + I_NV] = nv + 1

    R[rb + I_NRAW] = nraw + 1
    R[rb + I_LAST_TS] = t
    F[rb + F_LAST_X] = x

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
    return best, reason


@numba.njit(cache=True, error_model="numpy", nogil=True, no_cfunc_wrapper=True)  # (called from Python only)
def _score_kernel(series, ts, value, kind_of, is_counter, P, G, R, S, s_lo, s_hi, quiet_from, lo, hi,
                  out_score, out_reason):  # pragma: no cover - compiled
    # Scores the readings lo..hi-1 whose series id is in s_lo..s_hi-1, results to the same index;
    # the others are left to other threads. Each thread scans the whole batch and owns a range of
    # series ids: no pass to partition the readings, no indirection, and with readings arriving
    # roughly by id within a poll (as devices answer) each thread writes its own stretches of the
    # outputs, so two threads seldom share a cache line.
    # P: the (n_kinds, N_PARAMS) parameter table; G: geometry, and P's copy with thresholds
    # derived from it (the wrapper writes them, _derive_params, when the kernel finds that G's
    # copy differs from P). R: the state rows (int64, read as float64 through F); S: the seasonal
    # table; both flat, so row offsets are multiples of constants and the range checks let LLVM
    # drop numba's negative-index handling.
    # quiet_from: the quiet path below takes series with at least this many values (2; NEVER
    # sends every reading to _score_one, which the tests compare with).
    # Returns -1 when done; -4 - p when a series id of the readings from p on is negative or
    # beyond the state or the per-series arrays, having scored everything before p and nothing
    # from p on (the wrapper grows the state or raises, then goes on from p); -3, before touching
    # anything, when G is too small for the kinds; -2, before touching anything, when G's copy
    # of the parameters is not P; or the index of a reading whose kind is out of range.
    #
    # Most readings change no score: their series is past its first values, nothing fires and
    # nothing is clipped. This loop computes exactly that case, straight through, keeping the new
    # state in registers; if any condition of it fails, it stores nothing and hands the reading to
    # _score_one (every case, the same arithmetic), so results are bitwise those of _score_one
    # alone.
    F = as_float64(R)
    Gf = as_float64(G)
    cap = G[G_CAP]
    n_kinds = P.shape[0]
    if G_Q0 + n_kinds * NQ > G.shape[0]:
        return -3
    if lo < 0:
        lo = 0
    if hi > series.shape[0]:
        hi = series.shape[0]
    lim = cap
    if kind_of.shape[0] < lim:
        lim = kind_of.shape[0]
    if is_counter.shape[0] < lim:
        lim = is_counter.shape[0]
    s_span = np.uint64(s_hi - s_lo)  # s is ours when the unsigned s - s_lo is below this
    if quiet_from < 2:  # the quiet path needs a previous value
        quiet_from = 2
    # new parameters (G's copy differs from P bit for bit): the wrapper derives G and calls again
    if n_kinds != G[G_NKINDS]:
        return -2
    Pb = as_int64_flat(P)
    n_cols = P.shape[1]
    for k in range(n_kinds):
        for j in range(N_PARAMS):  # (an early return: cheaper to compile than a vectorised test)
            if G[G_Q0 + k * NQ + j] != Pb[k * n_cols + j]:
                return -2
    off_ns = G[G_OFF]
    slot_ns = G[G_SLOT]
    spd = G[G_SPD]
    c_lo = np.int64(1)
    c_hi = np.int64(0)
    c_row = np.int64(0)  # c_slot * cap: first entry of the current slot in S
    for c0 in range(lo, hi, CHECK_CHUNK):
        c1 = c0 + CHECK_CHUNK
        c1 = hi if c1 > hi else c1
        # the ids of the chunk are checked before any of it touches the state (the chunk's ids
        # then stay in cache for the loop below, where a pass over the whole batch first would
        # read them from memory twice)
        smin = np.int32(0)
        smax = np.int32(-1)
        for p in range(c0, c1):
            sp = series[np.uint64(p)]
            smin = sp if sp < smin else smin
            smax = sp if sp > smax else smax
        if smin < 0 or smax >= lim:
            return -4 - c0
        # Blocks of SKIP_BLOCK readings with none of ours are skipped with one vectorised test
        # (another thread's readings come in runs as long as a poll's share of a thread).
        all_ours = (np.uint64(smin - s_lo) < s_span) & (np.uint64(smax - s_lo) < s_span)
        for b0 in range(c0, c1, SKIP_BLOCK):
            b1 = b0 + SKIP_BLOCK
            if b1 > c1:
                b1 = c1
            elif not all_ours:
                ours = np.int64(0)  # (not a literal 0: its type is settled at once)
                for j in range(b0, b1):
                    ours += np.uint64(series[np.uint64(j)] - s_lo) < s_span
                if ours == 0:
                    continue
            for pos in range(b0, b1):
                up = np.uint64(pos)  # (unsigned: no negative-index handling)
                s = series[up]
                if np.uint64(s - s_lo) >= s_span:  # another thread's series
                    continue
                # (no software prefetch of the state rows: measured, it gained nothing in arrival
                # order by device or at random with 10,000 series, whose rows fit in L2, and it
                # costs a tenth of the instructions of a reading)
                x = value[up]
                if not x - x == 0.0:  # NaN or infinite: a missing reading
                    out_score[up] = 0.0
                    out_reason[up] = REASON_NONE
                    continue
                t = ts[up]
                idx = pos
                if s < 0 or s >= cap:
                    return idx
                k = kind_of[s]
                if k < 0 or k >= n_kinds:
                    return idx
                qk = G_Q0 + k * NQ
                rb = s * NR
                nv = R[rb + I_NV]
                nraw = R[rb + I_NRAW]
                last_x = F[rb + F_LAST_X]
                dt = t - R[rb + I_LAST_TS]
                quiet = nv >= quiet_from  # (at least 2: then nraw >= 2 too)
                # The conditions below are those of no score and no clipping whether or not the
                # series is warm yet: a reading of a series still warming up may leave the quiet
                # path for nothing, but no warm-up counts are compared on every reading.

                # flatline: the run goes on or restarts, and does not fire (a restarted run never
                # fires by time: t - t = 0 is below Q_FLAT_NS, which is at least 1)
                same = abs(x - last_x) <= Gf[qk + P_FLAT_EPS]
                run = R[rb + I_RUN] + 1 if same else np.int64(1)
                run_start = R[rb + I_RUN_START] if same else t
                flat = (run >= G[qk + Q_FLAT_N]) | ((t - run_start) >= G[qk + Q_FLAT_NS])
                quiet &= (x == Gf[qk + Q_ZERO_OK]) | (not flat)

                # counter: a plausible forward step over a positive time; its rate is the value
                v = x
                counter = is_counter[s]
                if counter:
                    d = x - last_x
                    rate = (0.0 if d < 0.0 else d) * (HOUR_NS / dt)
                    # (rate >= 0: below a finite limit it is finite, and a NaN fails the test)
                    quiet &= (d >= Gf[qk + Q_NEG_TOL]) & (dt > 0) & (rate <= Gf[qk + Q_CTR_LIM])
                    v = rate

                floor_abs = Gf[qk + P_FLOOR_ABS]
                floor_rel = Gf[qk + P_FLOOR_REL]
                # nv, or 2 when below (the quiet test then fails anyway): see _quiet_ewma
                nv2 = nv if nv > 2 else np.int64(2)
                m, dev, q = _quiet_ewma(v, F[rb + F_MEAN], F[rb + F_DEV], nv2, Gf[qk + P_LEVEL_ALPHA],
                                        G[qk + Q_LVL_A], floor_abs, floor_rel, Gf[qk + Q_LVL_T])
                quiet &= q
                last_v = F[rb + F_LAST_V]
                step = abs(v - last_v)
                if R[rb + I_LAST_SPIKE] != 0:
                    back = abs(v - F[rb + F_PREV_V])
                    step = back if back < step else step  # min(step, back)
                fs = floor_rel * abs(m)
                _, sdev, q = _quiet_ewma(step, 0.0, F[rb + F_STEP_DEV], nv2, Gf[qk + P_SPIKE_ALPHA],
                                         G[qk + Q_SPK_A], fs if fs > floor_abs else floor_abs, 0.0,
                                         Gf[qk + Q_SPK_T])
                # (a repeated or backward timestamp fails this test too: general path)
                quiet &= q & (abs(v - last_v) * 1e9 <= Gf[qk + P_MAX_RATE] * dt)
                seasonal = Gf[qk + P_SEASONAL] != 0.0
                sb = np.int64(0)
                # (defined on every path: a variable set only under `if seasonal` would carry its
                # value around the loop, and numba's type inference then needs three more passes
                # over the whole kernel, a tenth of a second, to settle its type)
                su = np.uint64(0)
                cnt = np.float32(0.0)
                ms = ds = 0.0
                if seasonal:
                    if t < c_lo or t >= c_hi:
                        c_lo, c_hi, c_row = _slot(t, off_ns, slot_ns, spd, cap)
                    sb = (c_row + s) * NS
                    su = np.uint64(sb)  # (unsigned: no negative-index handling on S)
                    cnt = S[su + _U_COUNT]
                    ncnt = np.int64(cnt)
                    ms, ds, q = _quiet_ewma(v, np.float64(S[su]), np.float64(S[su + _U_DEV]), ncnt,
                                            Gf[qk + P_SEAS_ALPHA], G[qk + Q_SEAS_A], floor_abs, floor_rel,
                                            Gf[qk + Q_SEAS_T])
                    quiet &= q
                if not quiet:
                    out_score[up], out_reason[up] = _score_one(G, Gf, F, R, S, s, t, x, k, counter, sb)
                    continue
                if seasonal:
                    S[su] = ms  # (S_MEAN is 0)
                    S[su + _U_DEV] = ds
                    S[su + _U_OUTLIERS] = 0.0
                    if cnt < 65535.0:
                        S[su + _U_COUNT] = cnt + 1.0
                F[rb + F_MEAN] = m
                F[rb + F_DEV] = dev
                F[rb + F_STEP_DEV] = sdev
                F[rb + F_PREV_V] = last_v
                F[rb + F_LAST_V] = v
                F[rb + F_LAST_X] = x
                R[rb + I_OUTLIERS] = 0
                R[rb + I_STEP_OUTLIERS] = 0
                R[rb + I_LAST_SPIKE] = 0
                R[rb + I_NV] = nv + 1
                R[rb + I_NRAW] = nraw + 1
                R[rb + I_LAST_TS] = t
                R[rb + I_RUN] = run
                R[rb + I_RUN_START] = run_start
                out_score[up] = 0.0
                out_reason[up] = REASON_NONE
    return -1


_POOLS: dict = {}  # ThreadPoolExecutor per thread count, created on the first call with it


def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score")
    return pool


# Bounds of the series-id ranges of threads are multiples of this: four seasonal entries (16 bytes
# each) share a 64-byte cache line, and two threads should not write the same line.
RANGE_ALIGN = 8
SPLIT_SAMPLE = 8192  # readings sampled to place the bounds
# Ranges of series per thread, taken by the threads as they come free. More than one lets a thread
# take over work when another process holds the other core, but each range costs a scan of the
# batch's ids: on a quiet machine one per thread was measured faster.
RANGES_PER_THREAD = 1


def _series_ranges(series: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Split the series ids into ``parts`` ranges holding about as many readings of ``series`` each.

    Why a sample: the bounds only balance the work; they never change a result, and a strided
    sample of a few thousand ids places them in microseconds instead of a pass over the batch.
    """
    step = max(1, len(series) // SPLIT_SAMPLE)
    sample = np.sort(series[::step])
    cuts = [int(sample[(len(sample) * p) // parts]) // RANGE_ALIGN * RANGE_ALIGN for p in range(1, parts)]
    bounds = [0, *cuts, int(NEVER)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _as(a: np.ndarray, dtype: type) -> np.ndarray:
    """``a`` as a C-contiguous, writeable array of ``dtype``: itself when it already is one."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def _check_ids(series: np.ndarray, n_per_series: Sequence[np.ndarray]) -> int:
    smin = int(series.min())
    smax = int(series.max())
    if smin < 0:
        raise ValueError(f"negative series id {smin}")
    for arr in n_per_series:
        if len(arr) <= smax:
            raise ValueError(f"per-series array has {len(arr)} entries, batch uses series id {smax}")
    return smax


def _one_signature(disp, *sig) -> None:
    """Compile ``disp`` for ``sig`` (or load it from numba's cache) and refuse any other types.

    Why: a call with other dtypes or layouts then raises TypeError at once (the wrappers convert
    and call again) instead of compiling another specialisation, seconds, in the middle of a poll;
    and the wrappers' common path needs no conversion calls at all.
    """
    if not disp.signatures:
        disp.compile(sig)
        disp.disable_compile()


def _array(dtype, ndim: int = 1):
    return numba.types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C")


_I64 = numba.types.int64
_SCORE_SIG = (_array(np.int32), _array(np.int64), _array(np.float64), _array(np.int32), _array(np.bool_),
              _array(np.float64, 2), _array(np.int64), _array(np.int64), _array(np.float32), _I64, _I64, _I64,
              _I64, _I64, _array(np.float32), _array(np.uint8))


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

    ``threads > 1`` splits the series (not the readings) across that many threads; results are
    bitwise identical to ``threads=1``. Worth it for large batches (backfill, benchmarks), from
    ``PARALLEL_MIN_PER_THREAD`` readings per thread, when readings arrive roughly by series id
    within a poll (as devices answer): in a random order the threads write the same cache lines
    of the outputs and gain little or nothing.
    """
    return _score(batch, state, params_table, series_kind, series_is_counter, threads, 2)


def _score(batch: ReadingBatch, state: DetectorState, params_table: np.ndarray | Sequence[DetectorParams],
           series_kind: np.ndarray, series_is_counter: np.ndarray, threads: int,
           quiet_from: int) -> tuple[np.ndarray, np.ndarray]:
    # score_batch, with the kernel's quiet path taking series from ``quiet_from`` values on (NEVER:
    # no reading takes it; the tests compare the two)
    n = len(batch)
    score = np.empty(n, dtype=np.float32)
    reason = np.empty(n, dtype=np.uint8)
    if n == 0:
        return score, reason
    table = params_table if isinstance(params_table, np.ndarray) else pack_params(params_table)
    _one_signature(_score_kernel, *_SCORE_SIG)
    args = [batch.series, batch.ts_ns, batch.value, series_kind, series_is_counter, table]
    parts = min(int(threads), n // PARALLEL_MIN_PER_THREAD)
    ranges = _series_ranges(batch.series, parts * RANGES_PER_THREAD) if parts > 1 else [(0, int(NEVER))]
    starts = [0] * len(ranges)  # where each range goes on from
    try:
        codes = _run(args, state, ranges, parts, starts, quiet_from, score, reason)
    except TypeError:  # other dtypes or layouts: convert (copies only what has to change)
        args = _converted(args)
        codes = [-3] * len(ranges)
    while True:
        bad = max(codes)
        if bad >= 0:
            sid = int(args[0][bad])
            raise ValueError(f"series {sid} has kind {int(args[3][sid])}, table has {len(args[5])} kinds")
        if bad == -1 and min(codes) == -1:
            return score, reason
        if -2 in codes:  # new parameters (all ranges stopped before touching anything)
            _derive_params(state, args[5])
        else:  # grow the state for new series or kinds (or raise)
            _grow(state, args)
        # then go on where each range stopped
        starts = [n if c == -1 else st if c in (-2, -3) else -4 - c for c, st in zip(codes, starts)]
        codes = _run(args, state, ranges, parts, starts, quiet_from, score, reason)


def _run(args: list, state: DetectorState, ranges: list[tuple[int, int]], threads: int, starts: list[int],
         quiet_from: int, score: np.ndarray, reason: np.ndarray) -> list[int]:
    # _score_kernel's return code per range of series ids (-1 when it had nothing left to do)
    n = len(score)
    common = (*args, state._g, state._rows, state._seas_flat)
    if len(ranges) == 1:
        s_lo, s_hi = ranges[0]
        return [_score_kernel(*common, s_lo, s_hi, quiet_from, starts[0], n, score, reason)]
    pool = _pool(threads)
    futs = [pool.submit(_score_kernel, *common, s_lo, s_hi, quiet_from, start, n, score, reason) if start < n
            else None for (s_lo, s_hi), start in zip(ranges, starts)]
    return [-1 if f is None else int(f.result()) for f in futs]


def _converted(args: list) -> list:
    series, ts, value, kinds, counters, table = args
    table = _as(table, np.float64)
    if table.ndim != 2:
        table = table.reshape(-1, N_PARAMS)
    return [_as(series, np.int32), _as(ts, np.int64), _as(value, np.float64), _as(kinds, np.int32),
            _as(counters, np.bool_), table]


def _grow(state: DetectorState, args: list) -> None:
    state.ensure_capacity(_check_ids(args[0], (args[3], args[4])) + 1)
    state.ensure_kinds(len(args[5]))


PARALLEL_MIN_PER_THREAD = 50_000  # below this a thread costs more to wake than it saves


# ------------------------------------------------------------------ alerts with hysteresis


@numba.njit(cache=True, no_cfunc_wrapper=True)  # (no C callback wrapper: called from Python only)
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


@numba.njit(cache=True, no_cfunc_wrapper=True)  # (called from Python only)
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
