"""Meter-data VEE (validation, estimation, editing) for cumulative counters, streaming and causal.

Turns raw register readings into corrected consumption deltas, one per reading, with quality flags
and an event bit set saying what was found. Rules (see docs/core.md and the utilities' VEE practice
in shared/reference/carbon-factors.md, part B):

* Nothing is invented silently. A reading whose consumption cannot be known gets ``delta = NaN``;
  a corrected delta carries ``QUALITY_EDITED``; a delta that rests on an assumption carries
  ``QUALITY_ESTIMATED`` as well; a reading held back as doubtful carries ``QUALITY_SUSPECT``.
* Negative consumption is never emitted.
* **Rollover**: the previous reading is within ``rollover_window`` of the register's modulus (e.g.
  100000 for a 99999.99 kWh register, or 2**32 x scale) and the new one within the window above
  zero: ``delta = modulus - previous + current`` (EDITED), if that rate is physically possible.
* **Meter replacement**: the counter restarts near zero (at most ``replacement_max_start``). Held
  back until the next reading confirms it (a single zero is the classic failed-read glitch); when
  confirmed, the new meter's consumption since its start reading of 0 is ``delta = current``
  (EDITED | ESTIMATED: the start reading is assumed); what the old meter counted after its last
  reading is unknown and stays unknown.
* **Reset / jump**: any other backwards step, or a forward step faster than ``max_power`` allows
  (``SPIKE``). Held back (delta NaN, SUSPECT). If the next reading agrees with the last good one,
  the held reading was a glitch and is dropped; if it agrees with the held one, the counter was
  re-based: consumption continues from the held reading (EDITED) and the jump itself is not
  counted.
* Backwards steps up to ``backward_tolerance`` are register jitter: delta 0 (EDITED), the counter
  is held at its maximum so nothing is counted twice.
* **Gap**: more than ``max_gap_s`` since the previous reading: the delta is real but its timing is
  unknown, so the interval stage does not spread it (event ``EV_GAP``).
* Out-of-range values (below ``min_value`` or at/above the modulus), NaN, duplicates and readings
  older than the last accepted one do not advance the counter. A cumulative counter's later reading
  already contains whatever an out-of-order one would have added, so dropping it loses no energy.

Gauges (non-counter series) only get the range check (``min_value``/``max_value``).
"""
from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Sequence

import numba
import numpy as np

from pipelines._intrinsics import as_float64
from pipelines.growth import grown_capacity
from pipelines.batch import (
    QUALITY_EDITED,
    QUALITY_ESTIMATED,
    QUALITY_OUT_OF_RANGE,
    QUALITY_SUSPECT,
    ReadingBatch,
)

# Event bits (uint16): what VEE found at a reading. Several can be set on one reading.
EV_FIRST = 1 << 0  # first reading of the series: the baseline, no delta yet
EV_MISSING = 1 << 1  # NaN / infinite value
EV_OUT_OF_RANGE = 1 << 2  # below min_value or above the register's range
EV_OUT_OF_ORDER = 1 << 3  # timestamp not after the last accepted reading (duplicates included)
EV_ROLLOVER = 1 << 4  # register wrapped at its modulus; delta corrected
EV_REPLACEMENT = 1 << 5  # meter replaced: counter restarted near zero (confirmed)
EV_RESET = 1 << 6  # counter re-based to a new value (confirmed jump or reset)
EV_HELD = 1 << 7  # implausible reading held back until the next one decides
EV_GLITCH = 1 << 8  # the held reading was a one-off glitch and was dropped
EV_GAP = 1 << 9  # more than max_gap since the previous reading: the delta is not spread in time
EV_BACKWARD = 1 << 10  # small backwards step within tolerance: treated as no consumption

EVENT_NAMES = {
    EV_FIRST: "first",
    EV_MISSING: "missing",
    EV_OUT_OF_RANGE: "out_of_range",
    EV_OUT_OF_ORDER: "out_of_order",
    EV_ROLLOVER: "rollover",
    EV_REPLACEMENT: "replacement",
    EV_RESET: "reset",
    EV_HELD: "held",
    EV_GLITCH: "glitch",
    EV_GAP: "gap",
    EV_BACKWARD: "backward",
}

NO_TS = np.iinfo(np.int64).min  # prev_ts of a reading without a delta

HOUR_NS = 3_600 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class VeeParams:
    """VEE settings for one kind of meter (register model); packed into a float64 table row."""

    rollover_modulus: float = 100_000.0  # register wraps to 0 here (99999.99 kWh display); inf: never
    rollover_window: float = 0.1  # fraction of the modulus near the top / bottom that counts as a wrap
    max_power: float = 500.0  # max consumption per hour (kW for a kWh counter); inf: no check
    resolution: float = 0.01  # register step; one step is always plausible, whatever the interval
    replacement_max_start: float = 10.0  # a new meter starts below this
    backward_tolerance: float = 0.0  # backwards steps up to this are jitter
    max_gap_s: float = 7_200.0  # longer gaps are not interpolated (2 h, the California VEE limit)
    min_value: float = 0.0  # gauges and counters: below is out of range
    max_value: float = float("inf")  # gauges: above is out of range (counters use the modulus)


VEE_PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(VeeParams))
(
    V_MODULUS,
    V_WINDOW,
    V_MAX_POWER,
    V_RESOLUTION,
    V_REPL_MAX,
    V_BACK_TOL,
    V_MAX_GAP_S,
    V_MIN,
    V_MAX,
) = range(len(VEE_PARAM_NAMES))


def pack_vee_params(params: Sequence[VeeParams]) -> np.ndarray:
    """One VeeParams per meter kind into the (n_kinds, n_fields) float64 table the kernel reads."""
    if not params:
        raise ValueError("at least one VeeParams is needed")
    table = np.empty((len(params), len(VEE_PARAM_NAMES)), dtype=np.float64)
    for k, p in enumerate(params):
        if not isinstance(p, VeeParams):
            raise TypeError(f"params[{k}] is {type(p).__name__}, expected VeeParams")
        if not p.rollover_modulus > 0 or not 0 <= p.rollover_window < 0.5 or p.max_gap_s <= 0:
            raise ValueError(f"params[{k}]: modulus > 0, 0 <= window < 0.5 and max_gap_s > 0 required")
        table[k] = np.array([float(v) for v in astuple(p)], dtype=np.float64)
    return table


# Per-series state: one 64-byte row of int64 per series (the two float64 fields are read through a
# float64 view of the same buffer), so a reading touches one cache line.
V_HAS_LAST, V_LAST_TS, V_PENDING_TS, V_PENDING_KIND, V_LAST, V_PENDING = range(6)
NP = len(VEE_PARAM_NAMES)  # parameters per kind in the flat table the kernel reads
NV = 8
PENDING_NONE, PENDING_JUMP, PENDING_REPLACEMENT = 0, 1, 2


class VeeState:
    """Last accepted reading and any held-back reading per series id; grows by doubling.

    ``f`` (cap, 2) float64 (last accepted value, held value) and ``i`` (cap, 4) int64 (last
    accepted time, held time, has a last value, kind of the held reading) are views of the rows.
    """

    __slots__ = ("cap", "rows", "f", "i")

    def __init__(self, n_series: int = 64):
        self.cap = 0
        self.rows = np.zeros(0, dtype=np.int64)
        self.ensure_capacity(max(int(n_series), 1))

    def ensure_capacity(self, n_series: int) -> None:
        if n_series <= self.cap:
            return
        cap = grown_capacity(self.cap, n_series)
        rows = np.zeros(cap * NV, dtype=np.int64)
        rows[: self.cap * NV] = self.rows
        self.rows, self.cap = rows, cap
        self.f = rows.view(np.float64).reshape(cap, NV)[:, V_LAST:V_PENDING + 1]
        self.i = rows.reshape(cap, NV)[:, [V_LAST_TS, V_PENDING_TS, V_HAS_LAST, V_PENDING_KIND]]


@dataclass(slots=True)
class VeeResult:
    """Per reading: corrected delta (NaN: none), start of the span it covers, flags, event bits."""

    delta: np.ndarray  # float64, consumption between prev_ts and ts; NaN when none
    prev_ts: np.ndarray  # int64, start of the delta's span; NO_TS when no delta
    quality: np.ndarray  # uint8, input quality plus VEE findings
    event: np.ndarray  # uint16, EV_* bits


@numba.njit(cache=True, error_model="numpy", nogil=True, no_cfunc_wrapper=True)  # (called from Python only)
def _vee_kernel(series, ts, value, quality, kind_of, is_counter, P, R,
                out_delta, out_prev, out_q, out_ev):  # pragma: no cover - compiled
    # Returns -1; -2 before touching anything when a series id is negative or beyond the state or
    # the per-series arrays (the wrapper grows the state or raises, then calls again); or the index
    # of a reading whose kind is out of range. P: the parameter table, flat (NP per kind).
    # R: the state rows (flat int64, floats through F).
    # A forward step d over dt ns is plausible when 0 <= d <= max_power * (dt / HOUR_NS) + resolution
    # (spelled out three times below: a helper function would be one more compile at start-up).
    # Each case only sets (delta, prev, q, ev) and the four outputs are written in one place:
    # fewer stores in the source is less code to compile at start-up.
    F = as_float64(R)
    n_kinds = P.shape[0] // NP
    cap = R.shape[0] // NV
    lim = cap
    if kind_of.shape[0] < lim:
        lim = kind_of.shape[0]
    if is_counter.shape[0] < lim:
        lim = is_counter.shape[0]
    smin = np.int32(0)
    smax = np.int32(-1)
    for i in range(series.shape[0]):
        si = series[i]
        smin = si if si < smin else smin
        smax = si if si > smax else smax
    if smin < 0 or smax >= lim:
        return -2
    for idx in range(series.shape[0]):
        s = series[idx]
        t = ts[idx]
        x = value[idx]
        q = quality[idx]
        delta = np.nan
        prev = NO_TS
        ev = 0
        k = kind_of[s]
        if k < 0 or k >= n_kinds:
            out_delta[idx] = delta
            out_prev[idx] = prev
            return idx
        pk = k * NP
        rb = s * NV
        if not x - x == 0.0:  # NaN or infinite
            q |= QUALITY_SUSPECT
            ev = EV_MISSING
        elif not is_counter[s]:
            if x < P[pk + V_MIN] or x > P[pk + V_MAX]:
                q |= QUALITY_OUT_OF_RANGE
                ev = EV_OUT_OF_RANGE
        elif x < P[pk + V_MIN] or x >= P[pk + V_MODULUS]:
            q |= QUALITY_OUT_OF_RANGE
            ev = EV_OUT_OF_RANGE
        elif R[rb + V_HAS_LAST] == 0:
            R[rb + V_HAS_LAST] = 1
            R[rb + V_LAST_TS] = t
            F[rb + V_LAST] = x
            ev = EV_FIRST
        elif t <= R[rb + V_LAST_TS]:
            ev = EV_OUT_OF_ORDER
            if not (t == R[rb + V_LAST_TS] and x == F[rb + V_LAST]):
                q |= QUALITY_SUSPECT
        else:
            last = F[rb + V_LAST]
            last_ts = R[rb + V_LAST_TS]
            modulus = P[pk + V_MODULUS]
            max_power = P[pk + V_MAX_POWER]
            res = P[pk + V_RESOLUTION]
            pend_kind = R[rb + V_PENDING_KIND]
            # 1. does this reading follow on from the last accepted one?
            d = x - last
            ok = False
            keep_last = False
            if pend_kind != PENDING_NONE:
                ev = EV_GLITCH
            prev = last_ts
            if d >= 0.0:
                ok = d <= max_power * ((t - last_ts) / HOUR_NS) + res
                delta = d
            elif -d <= P[pk + V_BACK_TOL]:
                ok = True  # jitter: no consumption, the register is held at its maximum
                keep_last = True
                delta = 0.0
                ev |= EV_BACKWARD
                q |= QUALITY_EDITED
            else:
                w = P[pk + V_WINDOW] * modulus
                if last >= modulus - w and x <= w:
                    delta = modulus - last + x
                    ok = (delta >= 0.0) & (delta <= max_power * ((t - last_ts) / HOUR_NS) + res)
                    if ok:
                        ev |= EV_ROLLOVER
                        q |= QUALITY_EDITED
            if not ok:
                # 2. does it confirm a held reading?
                p_ts = R[rb + V_PENDING_TS]
                dp = x - F[rb + V_PENDING]
                if (pend_kind != PENDING_NONE and t > p_ts and dp >= 0.0
                        and dp <= max_power * ((t - p_ts) / HOUR_NS) + res):
                    ok = True
                    if pend_kind == PENDING_REPLACEMENT:
                        delta = x  # the new meter counted from its assumed start reading 0
                        ev = EV_REPLACEMENT
                        q |= QUALITY_EDITED | QUALITY_ESTIMATED
                    else:
                        delta = dp  # re-based: the jump itself is not consumption
                        prev = p_ts
                        ev = EV_RESET
                        q |= QUALITY_EDITED
                else:
                    # 3. hold it back until the next reading decides
                    F[rb + V_PENDING] = x
                    R[rb + V_PENDING_TS] = t
                    R[rb + V_PENDING_KIND] = (
                        PENDING_REPLACEMENT if (d < 0.0 and x <= P[pk + V_REPL_MAX]) else PENDING_JUMP
                    )
                    delta = np.nan
                    prev = NO_TS
                    q |= QUALITY_SUSPECT
                    ev = EV_HELD
            if ok:
                if t - prev > P[pk + V_MAX_GAP_S] * 1e9:
                    ev |= EV_GAP
                if not keep_last:
                    F[rb + V_LAST] = x
                R[rb + V_LAST_TS] = t
                R[rb + V_PENDING_KIND] = PENDING_NONE
        out_delta[idx] = delta
        out_prev[idx] = prev
        out_q[idx] = q
        out_ev[idx] = ev
    return -1


def _as(a: np.ndarray, dtype: type) -> np.ndarray:
    """``a`` as a C-contiguous, writeable array of ``dtype``: itself when it already is one."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def _array(dtype, ndim: int = 1):
    return numba.types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C")


_VEE_SIG = (_array(np.int32), _array(np.int64), _array(np.float64), _array(np.uint8), _array(np.int32),
            _array(np.bool_), _array(np.float64), _array(np.int64), _array(np.float64), _array(np.int64),
            _array(np.uint8), _array(np.uint16))


_VEE_DTYPES = tuple(np.dtype(t) for t in (np.int32, np.int64, np.float64, np.uint8, np.int32, np.bool_, np.float64))


def _vee_args(batch: ReadingBatch, params_table: np.ndarray | Sequence[VeeParams], series_kind: np.ndarray,
              series_is_counter: np.ndarray) -> list[np.ndarray]:
    """The kernel's input arrays, converted only when their dtype or layout is not the compiled one."""
    table = params_table if isinstance(params_table, np.ndarray) else pack_vee_params(params_table)
    # one specialisation, compiled (or loaded from the cache) on first use; other dtypes or layouts
    # raise TypeError at once and are converted, instead of compiling another one mid-poll
    if not _vee_kernel.signatures:
        _vee_kernel.compile(_VEE_SIG)
        _vee_kernel.disable_compile()
    args = [batch.series, batch.ts_ns, batch.value, batch.quality, series_kind, series_is_counter, table]
    for a, dt in zip(args, _VEE_DTYPES):
        if not (isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous and a.flags.writeable):
            args = [_as(a, dt) for a, dt in zip(args, _VEE_DTYPES)]
            break
    if args[-1].ndim == 2 and args[-1].shape[1] != NP:
        raise ValueError(f"params table has {args[-1].shape[1]} columns, expected {NP}")
    # the kernel reads the table flat (one index per access instead of two)
    args[-1] = args[-1].reshape(-1, NP).reshape(-1)
    for a in args[:-1]:
        if a.ndim != 1:
            raise ValueError("batch columns and per-series arrays must be 1-D")
    return args


def _validate_range(args: list[np.ndarray], state: VeeState, out: VeeResult, lo: int, hi: int,
                    out_lo: int | None = None) -> None:
    """Validate readings lo..hi-1 of ``args`` into ``out`` from position ``out_lo`` (default ``lo``),
    growing the state for new series ids; raises ValueError for bad ids or kinds (readings before
    the bad one are done). Releases the GIL while the kernel runs."""
    if hi <= lo:
        return
    o = lo if out_lo is None else out_lo
    chunk = [a[lo:hi] for a in args[:4]] + args[4:]
    out = (out.delta[o:o + hi - lo], out.prev_ts[o:o + hi - lo], out.quality[o:o + hi - lo],
           out.event[o:o + hi - lo])
    bad = _vee_kernel(*chunk, state.rows, *out)
    if bad == -2:  # a series beyond the state (grow it) or a bad id (raise), then again
        series, kinds, counters = chunk[0], chunk[4], chunk[5]
        smin, smax = int(series.min()), int(series.max())
        if smin < 0:
            raise ValueError(f"negative series id {smin}")
        if len(kinds) <= smax or len(counters) <= smax:
            raise ValueError(f"per-series arrays are shorter than series id {smax} + 1")
        state.ensure_capacity(smax + 1)
        bad = _vee_kernel(*chunk, state.rows, *out)
    if bad >= 0:
        sid = int(chunk[0][bad])
        raise ValueError(f"series {sid} has kind {int(args[4][sid])}, table has {len(args[6]) // NP} kinds")


def new_vee_result(n: int) -> VeeResult:
    """Uninitialised output arrays for ``n`` readings (every position is written by the kernel)."""
    return VeeResult(np.empty(n, np.float64), np.empty(n, np.int64), np.empty(n, np.uint8), np.empty(n, np.uint16))


def validate_batch(
    batch: ReadingBatch,
    state: VeeState,
    params_table: np.ndarray | Sequence[VeeParams],
    series_kind: np.ndarray,
    series_is_counter: np.ndarray,
) -> VeeResult:
    """Validate every reading of ``batch`` in arrival order, updating ``state`` in place.

    ``series_kind``: int32 row of ``params_table`` per series id; ``series_is_counter``: bool per
    series id. The sum of the finite deltas of a counter is its consumption, rollover-corrected.
    """
    n = len(batch)
    res = new_vee_result(n)
    if n == 0:
        return res
    _validate_range(_vee_args(batch, params_table, series_kind, series_is_counter), state, res, 0, n)
    return res


def describe_events(ev: int) -> list[str]:
    """Names of the EV_* bits set in ``ev`` (for logs and the status page)."""
    return [name for bit, name in EVENT_NAMES.items() if ev & bit]
