"""Energy per aligned interval (1 min, 15 min, ...) from validated cumulative kWh counters.

Input is what :mod:`pipelines.validate` produces per reading: a corrected ``delta`` (kWh) over the
span ``(prev_ts, ts]``. Each delta is spread over the aligned intervals its span overlaps, linearly
in time (the meter is assumed to count at a constant rate between two readings). Why this way:

* **Exact totals.** The parts of one delta are computed from cumulative fractions and the last part
  is ``delta - assigned``, so a meter's intervals add up to its counter delta (to rounding).
  Energy that cannot be placed is never dropped: it goes into an *unapportioned* record (meter,
  span, kWh, reason) so that ``sum(intervals) + sum(unapportioned) == counter delta``.
* **Gaps.** A delta whose span VEE flagged as a gap (longer than its ``max_gap_s``) is not spread:
  interpolating over hours would invent a load profile. Its kWh go to an unapportioned record with
  reason ``GAP``; the intervals it covers get no energy from it and stay incomplete (coverage < 1)
  or absent, i.e. *missing*. Shorter spans are interpolated; an interval that contains no reading
  of its own (it lies strictly inside a span) is flagged ``QUALITY_ESTIMATED``. Flags from VEE
  (EDITED after a rollover, ESTIMATED after a replacement, SUSPECT) carry over to the intervals.
* **Watermark.** Intervals are emitted once closed: when their end is at or before the watermark,
  the latest timestamp seen minus ``lateness_ns``. A meter whose data arrives late (within what the
  ring keeps) is folded into its intervals and the changed intervals are emitted again; the last
  emission of an interval is its value (as InfluxDB keeps the last write of a point).
* **Bounded state.** Each meter keeps a ring of ``K = ceil(max_span / interval) + 2`` intervals, so
  memory does not grow with time. Modified intervals are tracked in two lists (waiting for the
  watermark / ready to emit), so the cost per call is proportional to the data, not to the number
  of open intervals: a batch of 1,000 readings does not scan 10,000 meters.

Rows emitted: ``meter`` (dense meter index), ``start_ns``, ``energy_kwh``, ``quality`` (uint8 bits
from pipelines.batch) and ``coverage`` (fraction of the interval the energy accounts for; 1.0 means
complete, less means part of the interval is missing).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np

from pipelines._intrinsics import as_float64
from pipelines.growth import grown_capacity
from pipelines.batch import QUALITY_EDITED, QUALITY_ESTIMATED, QUALITY_SUSPECT, ReadingBatch
from pipelines.validate import EV_GAP, VeeParams, VeeResult, VeeState, _validate_range, _vee_args, new_vee_result

UNAPPORTIONED_GAP = 1  # the span was longer than the max gap: not interpolated
UNAPPORTIONED_LATE = 2  # the span reaches back further than the meter's ring keeps

_CARRY = QUALITY_EDITED | QUALITY_ESTIMATED | QUALITY_SUSPECT
_EMPTY = np.iinfo(np.int64).min
# G (globals) layout
G_MAX_TS, G_SCANNED, G_NPEND, G_NREADY, G_K, G_CAP = range(6)
ST_CLEAN, ST_PENDING, ST_READY = 0, 1, 2
EMIT_NONE, EMIT_CLOSED, EMIT_FLUSH = 0, 1, 2  # what the kernel emits after spreading its range
# Ring record: interval index, energy (float64 through a view), covered ns, quality | state << 8.
# Records are laid out slot-major ((K, cap) records of 32 bytes): the meters reporting in one
# interval touch neighbouring records, and a reading touches one cache line, not one per field.
RI_IDX, RI_E, RI_COV, RI_QS = range(4)
NRI = 4


@dataclass(slots=True)
class IntervalRows:
    """Emitted intervals (re-emissions included, in emission order; the last one wins)."""

    meter: np.ndarray  # int32
    start_ns: np.ndarray  # int64
    energy_kwh: np.ndarray  # float64
    quality: np.ndarray  # uint8
    coverage: np.ndarray  # float32, 1.0 = complete

    def __len__(self) -> int:
        return len(self.meter)


@dataclass(slots=True)
class Unapportioned:
    """Energy that was counted but could not be placed in intervals, with its span and reason."""

    meter: np.ndarray  # int32
    start_ns: np.ndarray  # int64
    end_ns: np.ndarray  # int64
    energy_kwh: np.ndarray  # float64
    reason: np.ndarray  # uint8: UNAPPORTIONED_GAP or UNAPPORTIONED_LATE

    def __len__(self) -> int:
        return len(self.meter)


def _grown(a: np.ndarray, need: int) -> np.ndarray:
    """A copy of ``a`` with at least ``need`` rows, doubling (amortised O(1) per row)."""
    n = max(len(a), 16)
    while n < need:
        n *= 2
    b = np.zeros((n,) + a.shape[1:], dtype=a.dtype)
    b[: len(a)] = a
    return b


class IntervalState:
    """Per-meter rings of open intervals, the emission lists and the watermark."""

    __slots__ = ("interval_ns", "lateness_ns", "k", "cap", "ring", "g", "pend", "ready", "oi", "of", "ui", "uf")

    def __init__(self, interval_ns: int, lateness_ns: int = 0, max_span_ns: int = 7_200 * 10**9,
                 n_meters: int = 16):
        """``max_span_ns``: the longest span that is interpolated (VEE's max gap, the largest over
        meter kinds); it sizes the ring. ``lateness_ns``: how long after its end an interval waits."""
        if interval_ns <= 0 or lateness_ns < 0 or max_span_ns <= 0:
            raise ValueError("interval_ns and max_span_ns must be > 0, lateness_ns >= 0")
        self.interval_ns = int(interval_ns)
        self.lateness_ns = int(lateness_ns)
        # ring size: a power of two (slot = index & (k - 1), no division per reading)
        need = int(-(-int(max_span_ns) // self.interval_ns) + 2)
        self.k = 1 << (need - 1).bit_length()
        self.cap = 0
        self.ring = np.zeros(0, dtype=np.int64)
        self.g = np.array([_EMPTY, _EMPTY, 0, 0, self.k, 0], dtype=np.int64)
        self.pend = np.zeros((64, 2), dtype=np.int64)
        self.ready = np.zeros((64, 2), dtype=np.int64)
        self.oi = np.zeros((256, 3), dtype=np.int64)  # meter, start index, quality
        self.of = np.zeros((256, 2), dtype=np.float64)  # energy, coverage
        self.ui = np.zeros((16, 4), dtype=np.int64)  # meter, start, end, reason
        self.uf = np.zeros(16, dtype=np.float64)
        self.ensure_capacity(max(int(n_meters), 1))

    def ensure_capacity(self, n_meters: int) -> None:
        if n_meters <= self.cap:
            return
        cap = grown_capacity(self.cap, n_meters)
        ring = np.zeros((self.k, cap, NRI), dtype=np.int64)
        ring[:, :, RI_IDX] = _EMPTY
        ring[:, : self.cap] = self.ring.reshape(self.k, self.cap, NRI)
        self.ring = ring.reshape(-1)
        self.cap = cap
        self.g[G_CAP] = cap

    def _ensure_rows(self, n: int) -> None:
        if len(self.oi) < n:
            self.oi = _grown(self.oi, n)
            self.of = _grown(self.of, n)

    def _reserve(self, n_out: int, n_readings: int) -> None:
        """Room for the rows and list entries ``n_readings`` typically make (one per 8 readings),
        in one step instead of many doublings (each copies what is there; zeroed pages that are
        never written cost nothing)."""
        extra = n_readings // 8
        if extra > 64:
            self._ensure_rows(n_out + extra)
            if len(self.pend) < int(self.g[G_NPEND]) + extra:
                self.pend = _grown(self.pend, int(self.g[G_NPEND]) + extra)

    def _grow_buffers(self, n_out: int, n_un: int) -> None:
        """Room for the worst case of one more reading and for emitting every listed interval
        (called when the kernel stopped for room)."""
        k = self.k
        n_lists = int(self.g[G_NPEND] + self.g[G_NREADY])
        self._ensure_rows(n_out + max(k, n_lists))
        if len(self.ui) < n_un + k + 1:
            self.ui = _grown(self.ui, n_un + k + 1)
            self.uf = _grown(self.uf, n_un + k + 1)
        if len(self.pend) < int(self.g[G_NPEND]) + k:
            self.pend = _grown(self.pend, int(self.g[G_NPEND]) + k)
        if len(self.ready) < max(int(self.g[G_NREADY]) + k, n_lists):
            self.ready = _grown(self.ready, max(int(self.g[G_NREADY]) + k, n_lists))

    @property
    def watermark_ns(self) -> int | None:
        """Latest timestamp seen minus the lateness; intervals ending at or before it are closed."""
        mx = int(self.g[G_MAX_TS])
        return None if mx == _EMPTY else mx - self.lateness_ns


@numba.njit(cache=True, error_model="numpy", nogil=True, no_cfunc_wrapper=True)  # (called from Python only)
def _interval_kernel(series_meter, series, t1s, t0s, deltas, qs, evs, I_ns, late_ns, hint_ts, first, last, mode,
                     ring, G, pend, ready, oi, of, ui, uf, n_out, n_un):  # pragma: no cover
    # Spreads readings first..last-1 over the rings, then (mode EMIT_CLOSED or EMIT_FLUSH) emits:
    # the ready intervals and, when the watermark crossed an interval end, the pending ones it
    # closed (all of them when flushing). With mode EMIT_NONE it only spreads: a batch spread in
    # consecutive ranges, then emitted, gives exactly the rows of one call.
    # Never allocates (an allocating kernel costs seconds of extra compile): when the buffers could
    # not take the worst case of the next reading (K evictions, K list entries, K+1 records), it
    # returns that reading's index, and when they cannot take the emission, the end of the range;
    # the wrapper grows the buffers and calls again from there. Returns (-1, n_out, n_un) when done.
    # nogil: the pipelined driver spreads one chunk while another thread validates the next.
    K = G[G_K]
    cap = G[G_CAP]
    kmask = K - 1
    ring_e = as_float64(ring)
    n_pend = G[G_NPEND]
    n_ready = G[G_NREADY]
    max_ts = G[G_MAX_TS]
    if hint_ts > max_ts:
        max_ts = hint_ts
    n = series.shape[0]
    if last < n:
        n = last
    stop = -1
    if first < 0:  # (lets LLVM see that indices are never negative and drop wrap-around code)
        first = 0
    # the interval of the previous reading: readings arrive roughly in time order, so most need
    # no 64-bit division (tens of cycles each) to find their interval
    c_j = np.int64(0)  # always c_lo == c_j * I_ns
    c_lo = np.int64(0)
    idx = first
    while idx < n:
        # Most readings take the fast path: the span lies in the interval of t1, whose record is
        # open and listed (meters reporting more often than intervals end). It runs as a loop of
        # its own, so what only the general path below keeps live (list counts, buffers) stays
        # out of its registers (measured: 1.2x on the whole kernel); it stops at a reading that
        # needs the general path, which does the same for it, and every other case.
        while idx < n:
            u = np.uint64(idx)  # unsigned indices: no negative-index handling on each access
            t1 = t1s[u]
            if t1 > max_ts:
                max_ts = t1
            m = series_meter[np.uint64(series[u])]
            d = deltas[u]
            if m < 0 or not d - d == 0.0:  # not an interval meter, or NaN: no delta
                idx += 1
                continue
            t0 = t0s[u]
            t1m = t1 - 1
            if t1m >= c_lo and t1m - c_lo < I_ns:
                j1 = c_j
            else:
                j1 = t1m // I_ns
                c_j = j1
                c_lo = j1 * I_ns
            if not (t0 >= c_lo and t0 < t1 and (evs[u] & EV_GAP) == 0):
                break
            rec = np.uint64(((j1 & kmask) * cap + m) * NRI)
            qs_rec = ring[rec + RI_QS]
            if ring[rec + RI_IDX] != j1 or (qs_rec >> 8) == ST_CLEAN:
                break
            ring_e[rec + RI_E] += d
            ring[rec + RI_COV] += t1 - t0
            ring[rec + RI_QS] = qs_rec | (qs[u] & _CARRY)
            idx += 1
        if idx >= n:
            break
        # ---- the general path, for reading idx (its max_ts, c_j and c_lo are already taken)
        # (only this path adds rows, list entries or records: room is checked here, not on
        # every reading)
        if (n_out + K > oi.shape[0] or n_un + K + 1 > ui.shape[0] or n_pend + K > pend.shape[0]
                or n_ready + K > ready.shape[0]):
            stop = idx
            break
        u = np.uint64(idx)
        idx += 1
        t1 = t1s[u]
        m = series_meter[np.uint64(series[u])]
        d = deltas[u]
        t0 = t0s[u]
        q = qs[u] & _CARRY
        j1 = c_j
        off0 = t0 - (c_lo - I_ns)
        if off0 >= I_ns and off0 < 2 * I_ns:
            j0 = c_j
        elif off0 >= 0 and off0 < I_ns:
            j0 = c_j - 1
        else:
            j0 = t0 // I_ns
        if (evs[u] & EV_GAP) != 0 or t1 <= t0 or j1 - j0 >= K:
            # a gap, or more intervals than the ring holds (a span beyond the max_span_ns the
            # state was sized for): not interpolated; and no buffer can overflow
            ui[n_un, 0] = m
            ui[n_un, 1] = t0
            ui[n_un, 2] = t1
            ui[n_un, 3] = UNAPPORTIONED_GAP
            uf[n_un] = d
            n_un += 1
            continue
        wm = max_ts - late_ns
        span = np.float64(t1 - t0)
        assigned = 0.0
        for j in range(j0, j1 + 1):
            a = j * I_ns
            b = a + I_ns
            lo = t0 if t0 > a else a
            hi = t1 if t1 < b else b
            if j == j1:
                part = d - assigned
            else:
                cum = d * ((hi - t0) / span)
                part = cum - assigned
                assigned = cum
            qj = q
            if j0 < j < j1:
                qj |= QUALITY_ESTIMATED
            rec = np.uint64(((j & kmask) * cap + m) * NRI)
            cur = ring[rec + RI_IDX]
            qs_rec = ring[rec + RI_QS]
            if cur != j:
                if cur > j:
                    # older than this meter's ring keeps: counted, but cannot be placed
                    ui[n_un, 0] = m
                    ui[n_un, 1] = lo
                    ui[n_un, 2] = hi
                    ui[n_un, 3] = UNAPPORTIONED_LATE
                    uf[n_un] = part
                    n_un += 1
                    continue
                if cur != _EMPTY and (qs_rec >> 8) != ST_CLEAN:
                    # evicted while modified since its last emission: emit now (it can no longer change)
                    oi[n_out, 0] = m
                    oi[n_out, 1] = cur
                    oi[n_out, 2] = qs_rec & 0xFF
                    of[n_out, 0] = ring_e[rec + RI_E]
                    of[n_out, 1] = ring[rec + RI_COV] / I_ns
                    n_out += 1
                ring[rec + RI_IDX] = j
                ring_e[rec + RI_E] = 0.0
                ring[rec + RI_COV] = 0
                qs_rec = ST_CLEAN << 8
            ring_e[rec + RI_E] += part
            ring[rec + RI_COV] += hi - lo
            qs_rec |= qj
            if (qs_rec >> 8) == ST_CLEAN:
                if b <= wm:
                    ready[n_ready, 0] = m
                    ready[n_ready, 1] = j
                    n_ready += 1
                    qs_rec = (qs_rec & 0xFF) | (ST_READY << 8)
                else:
                    pend[n_pend, 0] = m
                    pend[n_pend, 1] = j
                    n_pend += 1
                    qs_rec = (qs_rec & 0xFF) | (ST_PENDING << 8)
            ring[rec + RI_QS] = qs_rec
    G[G_MAX_TS] = max_ts
    G[G_NPEND] = n_pend
    G[G_NREADY] = n_ready
    if stop >= 0 or mode == EMIT_NONE:
        return stop, n_out, n_un
    # ---- emission: the ready list, then (when the watermark crossed an interval end, or flushing)
    # the pending list, whose closed intervals are emitted and the others kept, in order; one loop
    # over both lists so the emission is spelled once (less to compile at start-up)
    if n_out + n_pend + n_ready > oi.shape[0]:
        return n, n_out, n_un
    flush = mode == EMIT_FLUSH
    wm = max_ts - late_ns
    wm_idx = wm // I_ns  # intervals with index < wm_idx end at or before wm
    n_scan = n_ready
    if max_ts != _EMPTY and (flush or wm_idx > G[G_SCANNED]):
        n_scan += n_pend
        G[G_SCANNED] = wm_idx
    keep = np.int64(0)  # (not a literal 0: its type is settled at once, one pass of type inference less)
    for e in range(n_scan):
        want = ST_READY
        if e < n_ready:
            m = ready[e, 0]
            j = ready[e, 1]
        else:
            want = ST_PENDING
            m = pend[e - n_ready, 0]
            j = pend[e - n_ready, 1]
        rec = np.uint64(((j & kmask) * cap + m) * NRI)
        qs_rec = ring[rec + RI_QS]
        if ring[rec + RI_IDX] != j or (qs_rec >> 8) != want:
            continue  # stale: evicted and emitted, or already moved on
        if want == ST_PENDING and not flush and (j + 1) * I_ns > wm:
            pend[keep, 0] = m  # still open (keep <= e - n_ready: compacting in place is safe)
            pend[keep, 1] = j
            keep += 1
            continue
        oi[n_out, 0] = m
        oi[n_out, 1] = j
        oi[n_out, 2] = qs_rec & 0xFF
        of[n_out, 0] = ring_e[rec + RI_E]
        of[n_out, 1] = ring[rec + RI_COV] / I_ns
        n_out += 1
        ring[rec + RI_QS] = qs_rec & 0xFF  # clean
    if n_scan > n_ready:
        G[G_NPEND] = keep
    G[G_NREADY] = 0
    return -1, n_out, n_un


def _rows(state: IntervalState, n_out: int) -> IntervalRows:
    oi, of = state.oi[:n_out], state.of[:n_out]
    return IntervalRows(
        oi[:, 0].astype(np.int32), oi[:, 1] * state.interval_ns, of[:, 0].copy(),
        oi[:, 2].astype(np.uint8), of[:, 1].astype(np.float32),
    )


def _unapportioned(state: IntervalState, n_un: int) -> Unapportioned:
    ui = state.ui[:n_un]
    return Unapportioned(
        ui[:, 0].astype(np.int32), ui[:, 1].copy(), ui[:, 2].copy(), state.uf[:n_un].copy(),
        ui[:, 3].astype(np.uint8),
    )


def _run(state: IntervalState, meters, series, ts, vee_prev, vee_delta, vee_q, vee_ev, hint: int,
         mode: int, first: int = 0, last: int | None = None, n_out: int = 0, n_un: int = 0) -> tuple[int, int]:
    """Spread readings first..last-1 (all by default), growing the buffers as the kernel asks, and
    emit per ``mode``; ``n_out``/``n_un`` rows are already in the buffers (earlier ranges)."""
    end = len(series) if last is None else int(last)
    state._reserve(n_out, end - first)
    while True:
        stop, n_out, n_un = _interval_kernel(
            meters, series, ts, vee_prev, vee_delta, vee_q, vee_ev, np.int64(state.interval_ns),
            np.int64(state.lateness_ns), np.int64(hint), np.int64(first), np.int64(end), np.int64(mode),
            state.ring, state.g, state.pend, state.ready, state.oi, state.of, state.ui, state.uf,
            np.int64(n_out), np.int64(n_un),
        )
        if stop < 0:
            return int(n_out), int(n_un)
        first = int(stop)
        state._grow_buffers(int(n_out), int(n_un))


def accumulate_intervals(
    series: np.ndarray,
    ts_ns: np.ndarray,
    vee: VeeResult,
    series_meter: np.ndarray,
    state: IntervalState,
    now_ts_ns: int | None = None,
) -> tuple[IntervalRows, Unapportioned]:
    """Spread the VEE deltas of one batch over intervals; return the intervals closed (or changed
    after closing) by this batch, and the energy that could not be placed.

    ``series_meter``: int32 per series id, the dense meter index, -1 for series that are not
    interval meters (they are skipped). ``now_ts_ns`` optionally advances the watermark with the
    latest timestamp of the whole poll (other series), so quiet meters' intervals still close.
    """
    n = len(series)
    meters = np.ascontiguousarray(series_meter, dtype=np.int32)
    s = np.ascontiguousarray(series, dtype=np.int32)
    if n:
        smin, smax = int(s.min()), int(s.max())
        if smin < 0 or smax >= len(meters):
            raise ValueError(f"series ids must lie in [0, {len(meters)})")
    if len(meters):
        state.ensure_capacity(int(meters.max()) + 1)
    hint = _EMPTY if now_ts_ns is None else int(now_ts_ns)
    n_out, n_un = _run(state, meters, s, np.ascontiguousarray(ts_ns, dtype=np.int64),
                       np.ascontiguousarray(vee.prev_ts, dtype=np.int64),
                       np.ascontiguousarray(vee.delta, dtype=np.float64),
                       np.ascontiguousarray(vee.quality, dtype=np.uint8),
                       np.ascontiguousarray(vee.event, dtype=np.uint16), hint, EMIT_CLOSED)
    return _rows(state, n_out), _unapportioned(state, n_un)


# Readings per chunk of the pipelined driver: at most PIPELINE_CHUNK, so that a chunk's VEE output
# is still in cache (L2/L3) when the interval stage reads it; large, because every hand-over between
# the threads can wait for a time slice when the machine is busy (on this shared 2-core VM 256 Ki
# readings beat 64 Ki by 10-30 %); but a batch gets at least 8 chunks, or the stages hardly overlap.
PIPELINE_CHUNK = 1 << 18
PIPELINE_CHUNK_MIN = 1 << 15
PIPELINE_MIN_READINGS = 1 << 18  # below this a second thread costs more than it saves

_POOL: list = []  # one single-worker ThreadPoolExecutor, created on the first pipelined call


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="vee"))
    return _POOL[0]


def validate_and_accumulate(
    batch: ReadingBatch,
    vee_state: VeeState,
    params_table: np.ndarray | Sequence[VeeParams],
    series_kind: np.ndarray,
    series_is_counter: np.ndarray,
    series_meter: np.ndarray,
    state: IntervalState,
    now_ts_ns: int | None = None,
    threads: int = 1,
    keep_vee: bool = True,
) -> tuple[VeeResult | None, IntervalRows, Unapportioned]:
    """``validate_batch`` then ``accumulate_intervals`` on one batch, chunk by chunk.

    The states and the rows are exactly those of the two calls. Why chunks: the VEE output of a
    chunk is read by the interval stage while it is still in cache, instead of going out to memory
    and back; and with ``threads=2`` one thread validates chunk i+1 while the calling one spreads
    chunk i (both kernels release the GIL). Each stage still sees its readings in arrival order.
    ``keep_vee=False`` returns no per-reading VEE result: the chunks go through two chunk-sized
    scratch buffers, so no array per reading of the batch is written at all (fresh memory costs a
    page fault per 4 KiB, and this VM's first touch of a page is slow). A second thread pays off
    with ``keep_vee=False``; with the per-reading result kept, writing it (page faults, memory
    bandwidth) dominates and the second thread gains little.
    On a bad series id or kind a ValueError is raised; the chunks before it have been spread.
    """
    n = len(batch)
    meters = np.ascontiguousarray(series_meter, dtype=np.int32)
    if len(meters):
        state.ensure_capacity(int(meters.max()) + 1)
    hint = _EMPTY if now_ts_ns is None else int(now_ts_ns)
    res = new_vee_result(n) if keep_vee else None
    if n == 0:
        n_out, n_un = _run(state, meters, _NONE_I32, _NONE_I64, _NONE_I64, _NONE_F64, _NONE_U8, _NONE_U16,
                           hint, EMIT_CLOSED)
        return res, _rows(state, n_out), _unapportioned(state, n_un)
    args = _vee_args(batch, params_table, series_kind, series_is_counter)
    series, ts = args[0], args[1]
    n_ok = min(len(args[4]), len(args[5]))  # VEE has checked the ids of a validated chunk against these
    step = min(PIPELINE_CHUNK, max(PIPELINE_CHUNK_MIN, n // 8))
    scratch = None if keep_vee else [new_vee_result(min(step, n)) for _ in range(2)]

    def vee(c: int) -> None:
        lo, hi = c * step, min(n, (c + 1) * step)
        if scratch is None:
            _validate_range(args, vee_state, res, lo, hi)
        else:
            _validate_range(args, vee_state, scratch[c & 1], lo, hi, 0)
        if len(meters) < n_ok and int(series[lo:hi].max()) >= len(meters):  # VEE accepted it, we cannot
            raise ValueError(f"series ids must lie in [0, {len(meters)})")

    n_chunks = -(-n // step)
    state._reserve(0, n)  # for the whole batch: the chunks would reserve a little at a time
    pool = _pool() if threads > 1 and n >= PIPELINE_MIN_READINGS else None
    n_out = n_un = 0
    vee(0)
    for c in range(n_chunks):
        lo, hi = c * step, min(n, (c + 1) * step)
        mode = EMIT_CLOSED if hi == n else EMIT_NONE
        nxt = pool.submit(vee, c + 1) if pool is not None and c + 1 < n_chunks else None
        try:
            if scratch is None:
                n_out, n_un = _run(state, meters, series, ts, res.prev_ts, res.delta, res.quality, res.event,
                                   hint, mode, lo, hi, n_out, n_un)
            else:
                r = scratch[c & 1]
                n_out, n_un = _run(state, meters, series[lo:hi], ts[lo:hi], r.prev_ts, r.delta, r.quality,
                                   r.event, hint, mode, 0, hi - lo, n_out, n_un)
        finally:
            if nxt is not None:
                nxt.result()  # re-raises a VEE error: nothing after its chunk is spread
        if pool is None and c + 1 < n_chunks:
            vee(c + 1)
    return res, _rows(state, n_out), _unapportioned(state, n_un)


_NONE_I32 = np.empty(0, dtype=np.int32)
_NONE_I64 = np.empty(0, dtype=np.int64)
_NONE_F64 = np.empty(0, dtype=np.float64)
_NONE_U8 = np.empty(0, dtype=np.uint8)
_NONE_U16 = np.empty(0, dtype=np.uint16)


def flush_intervals(state: IntervalState) -> IntervalRows:
    """Emit every interval modified since its last emission, closed or not (shutdown, tests)."""
    n_out, _ = _run(state, _NONE_I32, _NONE_I32, _NONE_I64, _NONE_I64, _NONE_F64, _NONE_U8, _NONE_U16, _EMPTY,
                    EMIT_FLUSH)
    return _rows(state, n_out)


def latest_rows(rows: IntervalRows) -> IntervalRows:
    """Keep the last emission of each (meter, start): what a store that overwrites would hold."""
    if len(rows) == 0:
        return rows
    key_order = np.lexsort((np.arange(len(rows)), rows.start_ns, rows.meter))
    m, st = rows.meter[key_order], rows.start_ns[key_order]
    last = np.ones(len(rows), dtype=bool)
    last[:-1] = (m[1:] != m[:-1]) | (st[1:] != st[:-1])
    sel = key_order[last]
    return IntervalRows(rows.meter[sel], rows.start_ns[sel], rows.energy_kwh[sel], rows.quality[sel],
                        rows.coverage[sel])


def concat_rows(parts: list[IntervalRows]) -> IntervalRows:
    """Concatenate emissions from several calls, keeping emission order."""
    if not parts:
        return IntervalRows(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64),
                            np.empty(0, np.uint8), np.empty(0, np.float32))
    return IntervalRows(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("meter", "start_ns", "energy_kwh", "quality", "coverage")))
