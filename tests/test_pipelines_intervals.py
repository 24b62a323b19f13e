"""Interval energy: linear apportioning, exact totals, gaps not invented, watermark and late data."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.batch import QUALITY_EDITED, QUALITY_ESTIMATED, ReadingBatch
from pipelines.intervals import (
    UNAPPORTIONED_GAP,
    IntervalState,
    Unapportioned,
    accumulate_intervals,
    concat_rows,
    flush_intervals,
    latest_rows,
)
from pipelines.validate import VeeParams, VeeState, pack_vee_params, validate_batch

MIN = 60 * 1_000_000_000
QUARTER = 15 * MIN
VEE = pack_vee_params([VeeParams(max_gap_s=7200.0)])


class Pipeline:
    """validate -> intervals for a few meters (series id == meter index)."""

    def __init__(self, n_meters=1, interval_ns=QUARTER, lateness_ns=0):
        self.n = n_meters
        self.vee = VeeState(n_meters)
        self.iv = IntervalState(interval_ns, lateness_ns=lateness_ns, max_span_ns=7200 * 10**9, n_meters=n_meters)
        self.rows, self.unap, self.deltas = [], [], []

    def feed(self, series, ts, values, now=None):
        batch = ReadingBatch.from_arrays(series, ts, values)
        r = validate_batch(batch, self.vee, VEE, np.zeros(self.n, np.int32), np.ones(self.n, bool))
        rows, un = accumulate_intervals(batch.series, batch.ts_ns, r, np.arange(self.n, dtype=np.int32),
                                        self.iv, now_ts_ns=now)
        self.rows.append(rows)
        self.unap.append(un)
        self.deltas.append((batch.series, r.delta))
        return rows, un

    def final(self):
        self.rows.append(flush_intervals(self.iv))
        return latest_rows(concat_rows(self.rows))


def _one(ts_min, values, **kw):
    p = Pipeline(**kw)
    p.feed(np.zeros(len(values), np.int32), np.asarray(ts_min, dtype=np.int64) * MIN, values)
    return p, p.final()


def test_linear_apportioning_by_hand():
    _, rows = _one([5, 20, 50], [0.0, 1.5, 4.5])
    # (5, 20]: 1.5 kWh -> 10 min in [0,15) and 5 min in [15,30)
    # (20, 50]: 3.0 kWh -> 10 min in [15,30), 15 min in [30,45), 5 min in [45,60)
    np.testing.assert_allclose(rows.energy_kwh, [1.0, 0.5 + 1.0, 1.5, 0.5], rtol=1e-12)
    np.testing.assert_array_equal(rows.start_ns, np.array([0, 15, 30, 45]) * MIN)
    np.testing.assert_allclose(rows.coverage, [10 / 15, 1.0, 1.0, 5 / 15])
    # [30,45) holds no reading of its own: its energy is interpolated
    assert rows.quality.tolist() == [0, 0, QUALITY_ESTIMATED, 0]


def test_one_minute_intervals():
    _, rows = _one([0, 1, 2, 4], [10.0, 10.1, 10.3, 10.5], interval_ns=MIN)
    np.testing.assert_allclose(rows.energy_kwh, [0.1, 0.2, 0.1, 0.1], rtol=1e-9)
    assert rows.quality.tolist() == [0, 0, 0, 0]  # [2,3) and [3,4) each touch a reading's boundary


def test_gap_beyond_max_is_not_invented():
    p, rows = _one([0, 15, 30, 300, 315], [0.0, 1.0, 2.0, 20.0, 21.0])
    un = p.unap[0]
    assert len(un) == 1 and un.reason[0] == UNAPPORTIONED_GAP
    assert un.energy_kwh[0] == 18.0 and un.start_ns[0] == 30 * MIN and un.end_ns[0] == 300 * MIN
    np.testing.assert_array_equal(rows.start_ns, np.array([0, 15, 300]) * MIN)
    np.testing.assert_allclose(rows.energy_kwh, [1.0, 1.0, 1.0])
    # nothing between 30 and 300 minutes was emitted as if measured
    assert rows.energy_kwh.sum() + un.energy_kwh.sum() == 21.0


def test_interpolation_up_to_the_max_gap_is_flagged_estimated():
    _, rows = _one([0, 120], [0.0, 8.0])
    assert len(rows) == 8
    np.testing.assert_allclose(rows.energy_kwh, 1.0)
    assert rows.quality.tolist() == [0] + [QUALITY_ESTIMATED] * 6 + [0]


def test_vee_flags_carry_over():
    _, rows = _one([0, 15, 30], [99_999.0, 0.5, 1.0])
    # the rollover-corrected delta over (0, 15] lands in [0, 15) and marks it edited
    assert rows.quality[0] & QUALITY_EDITED and not rows.quality[1] & QUALITY_EDITED
    np.testing.assert_allclose(rows.energy_kwh, [1.5, 0.5])


def test_watermark_emits_closed_intervals_and_folds_late_data():
    p = Pipeline(n_meters=2, lateness_ns=5 * MIN)
    # both meters at 0 and 10 minutes: nothing closed yet
    rows, _ = p.feed([0, 1, 0, 1], np.array([0, 0, 10, 10]) * MIN, [0.0, 0.0, 1.0, 2.0])
    assert len(rows) == 0
    # meter 0 moves on to 25 min; watermark 20 min closes [0,15) for meter 0 and meter 1
    rows, _ = p.feed([0], np.array([25]) * MIN, [2.5])
    assert sorted(zip(rows.meter.tolist(), rows.start_ns.tolist())) == [(0, 0), (1, 0)]
    m1 = rows.energy_kwh[rows.meter == 1][0]
    assert m1 == 2.0 and rows.coverage[rows.meter == 1][0] == pytest.approx(10 / 15)  # incomplete so far
    # meter 1's reading for 16 minutes arrives late: its [0,15) is folded in and emitted again
    rows, _ = p.feed([1], np.array([16]) * MIN, [2.6])
    assert list(zip(rows.meter.tolist(), rows.start_ns.tolist())) == [(1, 0)]
    assert rows.energy_kwh[0] == pytest.approx(2.5) and rows.coverage[0] == 1.0
    final = p.final()
    got = {(int(m), int(s) // MIN): e for m, s, e in zip(final.meter, final.start_ns, final.energy_kwh)}
    assert got[(1, 0)] == pytest.approx(2.5) and got[(1, 15)] == pytest.approx(0.1)
    assert got[(0, 0)] == pytest.approx(1.5) and got[(0, 15)] == pytest.approx(1.0)


def test_now_hint_closes_intervals_of_quiet_meters():
    p = Pipeline()
    rows, _ = p.feed([0, 0], np.array([0, 14]) * MIN, [0.0, 1.4])
    assert len(rows) == 0
    rows, _ = p.feed([], np.array([], np.int64), [], now=16 * MIN)
    assert len(rows) == 1 and rows.coverage[0] == pytest.approx(14 / 15)


def test_small_batches_do_not_rescan_every_open_interval():
    # 2,000 meters, one reading each per call: each call's work is bounded by its own readings
    n = 2000
    p = Pipeline(n_meters=n)
    p.feed(np.arange(n), np.zeros(n, np.int64), np.zeros(n))
    st = p.iv
    for k in range(1, 5):
        p.feed(np.arange(n), np.full(n, k * MIN), np.full(n, 0.1 * k))
    assert int(st.g[2]) <= 2 * n  # pending list holds each open interval once


@st.composite
def _streams(draw):
    n_meters = draw(st.integers(1, 3))
    series, ts, vals, truth = [], [], [], np.zeros(n_meters)
    for m in range(n_meters):
        n = draw(st.integers(2, 60))
        gaps = np.array(draw(st.lists(st.integers(1, 4 * 3600), min_size=n - 1, max_size=n - 1)), np.int64)
        t = draw(st.integers(0, 3600)) * 10**9 + np.r_[0, np.cumsum(gaps)] * 10**9
        # at most 100 kW on average between two readings: what VEE accepts as plausible
        u = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n - 1, max_size=n - 1)))
        inc = np.round(u * gaps / 3600.0 * 100.0, 3)
        start = draw(st.sampled_from([0.0, 99_990.0, 50_000.0]))
        raw = start + np.r_[0.0, np.cumsum(inc)]
        series.append(np.full(n, m))
        ts.append(t)
        vals.append(np.mod(raw, 100_000.0))
        truth[m] = inc.sum()
    s = np.concatenate(series)
    t = np.concatenate(ts)
    order = np.argsort(t, kind="stable")  # arrival order: interleaved by time
    return s[order], t[order], np.concatenate(vals)[order], truth


@settings(max_examples=60, deadline=None)
@given(_streams(), st.sampled_from([MIN, QUARTER]), st.integers(0, 2**31 - 1), st.sampled_from([0, 10 * MIN]))
def test_intervals_add_up_to_the_counter_delta(stream, interval_ns, seed, lateness):
    series, ts, values, truth = stream
    n = len(truth)

    def run(cuts):
        p = Pipeline(n_meters=n, interval_ns=interval_ns, lateness_ns=lateness)
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(ts)]):
            p.feed(series[a:b], ts[a:b], values[a:b])
        return p, p.final()

    p, rows = run(np.array([], np.int64))
    unap = [u for u in p.unap if len(u)]
    for m in range(n):
        total = rows.energy_kwh[rows.meter == m].sum()
        total += sum(u.energy_kwh[u.meter == m].sum() for u in unap)
        deltas = np.concatenate([d[s == m] for s, d in p.deltas])
        assert np.nansum(deltas) == pytest.approx(truth[m], rel=1e-9, abs=1e-9)
        assert total == pytest.approx(truth[m], rel=1e-9, abs=1e-9)
    assert (rows.start_ns % interval_ns == 0).all()
    assert (rows.coverage <= 1.0 + 1e-6).all()
    # batch splits change when intervals are emitted, never what they finally hold
    rng = np.random.default_rng(seed)
    cuts = np.unique(rng.integers(1, len(ts), size=4)) if len(ts) > 1 else np.array([], np.int64)
    _, rows2 = run(cuts)
    assert rows2.energy_kwh.tobytes() == rows.energy_kwh.tobytes()
    assert rows2.start_ns.tobytes() == rows.start_ns.tobytes()
    assert rows2.quality.tobytes() == rows.quality.tobytes()


def _fields(obj):
    return [getattr(obj, f) for f in obj.__slots__]


@pytest.mark.parametrize("threads,keep_vee,chunk", [(1, True, 7), (2, True, 7), (2, False, 5), (2, False, 1 << 16)])
def test_pipelined_validate_and_accumulate_equals_the_two_calls(monkeypatch, threads, keep_vee, chunk):
    from pipelines import intervals

    # small chunks and no size threshold, so the chunk hand-over is exercised on a small batch
    monkeypatch.setattr(intervals, "PIPELINE_CHUNK", chunk)
    monkeypatch.setattr(intervals, "PIPELINE_MIN_READINGS", 1)
    rng = np.random.default_rng(5)
    n, ticks = 6, 80
    series = np.tile(np.arange(n, dtype=np.int32), ticks)
    ts = np.repeat(np.arange(ticks, dtype=np.int64) * 4 * MIN, n) + rng.integers(0, 60, n * ticks) * 10**9
    values = 100.0 + np.cumsum(rng.uniform(0, 0.5, n * ticks))
    values[rng.integers(0, len(values), 12)] = np.nan
    values[rng.integers(0, len(values), 6)] = 0.0  # replacements and glitches
    keep = ~((series == 2) & (ts > 100 * MIN) & (ts < 260 * MIN))  # a gap: unapportioned energy
    series, ts, values = series[keep], ts[keep], values[keep]
    meters = np.array([0, 1, 2, -1, 3, 4], dtype=np.int32)  # series 3 is not an interval meter
    kinds, counters = np.zeros(n, np.int32), np.ones(n, bool)
    results = []
    for pipelined in (False, True):
        vst = VeeState(2)  # grows on the way
        ist = IntervalState(QUARTER, lateness_ns=MIN, max_span_ns=7200 * 10**9, n_meters=1)
        out = []
        for a, b in ((0, 150), (150, len(ts))):
            batch = ReadingBatch.from_arrays(series[a:b], ts[a:b], values[a:b])
            if pipelined:
                vee, rows, un = intervals.validate_and_accumulate(batch, vst, VEE, kinds, counters, meters, ist,
                                                                  threads=threads, keep_vee=keep_vee)
            else:
                vee = validate_batch(batch, vst, VEE, kinds, counters)
                rows, un = accumulate_intervals(batch.series, batch.ts_ns, vee, meters, ist)
            out += ([vee] if keep_vee else []) + [rows, un]
        out.append(flush_intervals(ist))
        results.append([a.tobytes() for o in out for a in _fields(o)] + [vst.rows.tobytes(), ist.ring.tobytes()])
    assert results[0] == results[1]
    assert any(len(u) for u in out if isinstance(u, Unapportioned))


def test_pipelined_driver_reports_bad_ids():
    batch = ReadingBatch.from_arrays([0, 5], [0, MIN], [1.0, 2.0])
    ist = IntervalState(QUARTER, n_meters=1)
    from pipelines.intervals import validate_and_accumulate

    with pytest.raises(ValueError):
        validate_and_accumulate(batch, VeeState(1), VEE, np.zeros(6, np.int32), np.ones(6, bool),
                                np.zeros(2, np.int32), ist)
    with pytest.raises(ValueError):
        validate_and_accumulate(batch, VeeState(1), VEE, np.zeros(2, np.int32), np.ones(2, bool),
                                np.zeros(6, np.int32), ist)
