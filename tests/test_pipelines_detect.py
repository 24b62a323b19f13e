"""Streaming detectors: causality (batch-split invariance), warm-up, each fault fires, clean data does not."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.batch import ReadingBatch
from pipelines.detect import (
    REASON_COUNTER,
    REASON_FLATLINE,
    REASON_LEVEL,
    REASON_NONE,
    REASON_SEASONAL,
    REASON_SPIKE,
    AlertState,
    DetectorParams,
    DetectorState,
    ewma_zscore,
    pack_params,
    score_batch,
    update_alerts,
)
from pipelines.synthetic import MINUTE_NS, T0_NS, counter_from_power, interleave, load_kw

QUARTER = 15 * MINUTE_NS
LOAD = DetectorParams(seasonal_alpha=0.1)
GAUGE = DetectorParams(seasonal=False, flat_seconds=0.0, flat_samples=20)
COUNTER = DetectorParams.counter(50.0, seasonal_alpha=0.1)
TABLE = pack_params([LOAD, GAUGE, COUNTER])


def _run(values, ts=None, params=LOAD, counter=False, period=QUARTER):
    values = np.asarray(values, dtype=np.float64)
    if ts is None:
        ts = T0_NS + np.arange(len(values), dtype=np.int64) * period
    batch = ReadingBatch.from_arrays(np.zeros(len(values), np.int32), ts, values)
    return score_batch(batch, DetectorState(1), pack_params([params]), np.zeros(1, np.int32), np.array([counter]))


@pytest.fixture(scope="module")
def four_weeks():
    """Four weeks of 15-minute readings of a residential load (kW)."""
    rng = np.random.default_rng(5)
    ts = T0_NS + np.arange(96 * 28, dtype=np.int64) * QUARTER
    return ts, load_kw(ts, 3.0, 0.05, rng)


def _mixed_stream(seed: int, n_ticks: int = 400):
    """Interleaved loads, gauges and counters with NaNs and injected faults, in arrival order."""
    rng = np.random.default_rng(seed)
    n = 12
    series, ts = interleave(n, n_ticks, MINUTE_NS * 5, rng, jitter_ns=MINUTE_NS, shuffle="random")
    value = np.empty(len(ts))
    kinds = np.array([0, 1, 2] * 4, dtype=np.int32)
    for s in range(n):
        m = series == s
        kw = load_kw(ts[m], 1.0 + s, 0.08, rng)
        if kinds[s] == 2:
            v = counter_from_power(ts[m], kw, 99_990.0 if s == 2 else 10.0, resolution=0.01)
            v = np.where(v >= 100_000.0, v - 100_000.0, v)  # rollover
        elif kinds[s] == 1:
            v = 230.0 + rng.normal(0, 0.5, m.sum())
        else:
            v = kw
        v[rng.integers(0, len(v), 3)] = np.nan
        v[len(v) // 2] += 40.0  # spike
        v[len(v) // 3: len(v) // 3 + 25] = v[len(v) // 3]  # flatline
        value[m] = v
    return ReadingBatch.from_arrays(series, ts, value), kinds, kinds == 2


def test_batch_split_invariance_is_bitwise():
    batch, kinds, counters = _mixed_stream(1)
    whole_state = DetectorState(4)
    whole = score_batch(batch, whole_state, TABLE, kinds, counters)
    assert (whole[1] != REASON_NONE).any()
    rng = np.random.default_rng(2)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, len(batch)), size=25, replace=False))
        state = DetectorState(1)  # also exercises growth by doubling mid-stream
        parts = [score_batch(batch.take(slice(a, b)), state, TABLE, kinds, counters)
                 for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(batch)])]
        score = np.concatenate([p[0] for p in parts])
        reason = np.concatenate([p[1] for p in parts])
        assert score.tobytes() == whole[0].tobytes()
        assert reason.tobytes() == whole[1].tobytes()
        n = len(kinds)
        assert np.array_equal(state.f[:n], whole_state.f[:n])
        assert np.array_equal(state.seasonal[:, :n], whole_state.seasonal[:, :n])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 60))
def test_batch_split_invariance_property(seed, n_cuts):
    batch, kinds, counters = _mixed_stream(seed % 1000, n_ticks=60)
    whole = score_batch(batch, DetectorState(16), TABLE, kinds, counters)
    rng = np.random.default_rng(seed)
    cuts = np.unique(rng.integers(1, len(batch), size=n_cuts))
    state = DetectorState(16)
    parts = [score_batch(batch.take(slice(a, b)), state, TABLE, kinds, counters)
             for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(batch)])]
    assert np.concatenate([p[0] for p in parts]).tobytes() == whole[0].tobytes()
    assert np.concatenate([p[1] for p in parts]).tobytes() == whole[1].tobytes()


def test_nan_readings_score_zero_and_leave_state_alone():
    batch, kinds, counters = _mixed_stream(3)
    score, reason = score_batch(batch, DetectorState(16), TABLE, kinds, counters)
    nan = np.isnan(batch.value)
    assert nan.any()
    assert (score[nan] == 0).all() and (reason[nan] == REASON_NONE).all()
    clean = batch.take(~nan)
    s2, r2 = score_batch(clean, DetectorState(16), TABLE, kinds, counters)
    assert s2.tobytes() == score[~nan].tobytes() and r2.tobytes() == reason[~nan].tobytes()


def test_warm_up_scores_zero_until_enough_history():
    params = DetectorParams(warmup_samples=30, seasonal=False)
    v = np.ones(60)
    v[::2] = 5.0  # wild from the start
    v[10] = 1e6
    score, _ = _run(v, params=params)
    assert (score[:30] == 0).all()
    v2 = np.r_[np.random.default_rng(0).normal(10, 0.1, 40), 1e3]
    score2, reason2 = _run(v2, params=params)
    assert score2[-1] == 1.0 and reason2[-1] == REASON_SPIKE


def test_clean_seasonal_load_does_not_fire(four_weeks):
    ts, kw = four_weeks
    score, _ = _run(kw, ts)
    assert score.max() < 0.5
    # and many series interleaved, random arrival order
    rng = np.random.default_rng(11)
    series, ts2 = interleave(8, 96 * 28, QUARTER, rng, shuffle="random")
    value = np.empty(len(ts2))
    for s in range(8):
        m = series == s
        value[m] = load_kw(ts2[m], 2.0 + s, 0.05, rng)
    sc, _ = score_batch(ReadingBatch.from_arrays(series, ts2, value), DetectorState(8), pack_params([LOAD]),
                        np.zeros(8, np.int32), np.zeros(8, bool))
    assert sc.max() < 0.5
    assert (sc > 0).mean() < 0.005


def test_spike_fires_once_and_return_is_not_flagged(four_weeks):
    ts, kw = four_weeks
    v = kw.copy()
    i = 2000
    v[i] += 10.0
    score, reason = _run(v, ts)
    assert score[i] == 1.0 and reason[i] == REASON_SPIKE
    assert score[i + 1] < 0.5
    others = np.delete(score, i)
    assert others.max() < 0.5


def test_level_shift_on_a_gauge():
    rng = np.random.default_rng(7)
    v = 230.0 + rng.normal(0, 0.5, 800)
    i = 400
    v[i:] += 8.0
    score, reason = _run(v, params=GAUGE, period=MINUTE_NS)
    assert score[:i].max() < 0.5
    assert reason[i] == REASON_SPIKE and score[i] == 1.0  # the step itself
    assert (reason[i + 1: i + 5] == REASON_LEVEL).all()  # then the new level persists
    assert (score[i + 1: i + 5] >= 0.9).all()
    assert score[i + 200:].max() < 0.5  # and is eventually accepted


def test_level_shift_on_a_seasonal_load_is_seasonal(four_weeks):
    ts, kw = four_weeks
    v = kw.copy()
    i = 2000
    v[i:] += 3.0
    score, reason = _run(v, ts)
    assert score[i] >= 0.5
    after = reason[i + 1: i + 96]
    assert (after == REASON_SEASONAL).sum() > 48


def test_flatline_after_the_configured_time(four_weeks):
    ts, kw = four_weeks
    v = kw.copy()
    i = 2000
    v[i: i + 20] = v[i]
    score, reason = _run(v, ts)
    # 3600 s at 15-minute readings: the 5th equal reading is one hour after the first
    assert (reason[i: i + 4] != REASON_FLATLINE).all()
    assert (reason[i + 4: i + 20] == REASON_FLATLINE).all() and (score[i + 4: i + 20] == 1.0).all()
    assert reason[i + 20] != REASON_FLATLINE


def test_flatline_by_sample_count_and_zero_runs():
    rng = np.random.default_rng(1)
    v = 230.0 + rng.normal(0, 0.5, 200)
    v[100:130] = 231.0
    _, reason = _run(v, params=GAUGE, period=MINUTE_NS)
    assert (reason[100:119] != REASON_FLATLINE).all()
    assert (reason[119:130] == REASON_FLATLINE).all()
    # zeros are a normal state for PV at night: not a flatline when flat_ignore_zero
    pv = np.r_[rng.uniform(1, 2, 50), np.zeros(100)]
    s_pv, r_pv = _run(pv, params=DetectorParams(seasonal=False, flat_samples=10, spike_z_lo=1e9,
                                               spike_z_hi=2e9, level_z_lo=1e9, level_z_hi=2e9),
                      period=MINUTE_NS)
    assert (r_pv != REASON_FLATLINE).all()


def test_drift_is_caught_by_the_seasonal_baseline(four_weeks):
    ts, kw = four_weeks
    v = kw.copy()
    i = 96 * 21
    v[i:] += np.linspace(0.0, 1.0, len(v) - i) * (len(v) - i) / 96  # +1 kW per day
    score, reason = _run(v, ts)
    assert score[:i].max() < 0.5
    fired = np.nonzero(score[i:] >= 0.5)[0]
    assert len(fired) > 0 and fired[0] < 96 * 2  # within two days
    assert (reason[i:][fired] == REASON_SEASONAL).mean() > 0.9
    assert not (reason[i:] == REASON_LEVEL).any()  # the fast level detector adapts to slow drift


@pytest.fixture(scope="module")
def counter_readings():
    rng = np.random.default_rng(9)
    ts = T0_NS + np.arange(96 * 14, dtype=np.int64) * QUARTER
    kw = load_kw(ts, 3.0, 0.05, rng)
    return ts, counter_from_power(ts, kw, 99_500.0)


def test_counter_clean_does_not_fire(counter_readings):
    ts, c = counter_readings
    score, _ = _run(c, ts, params=COUNTER, counter=True)
    assert score.max() < 0.5


def test_counter_rollover_fires(counter_readings):
    ts, c = counter_readings
    wrapped = np.where(c >= 100_000.0, c - 100_000.0, c)
    j = int(np.argmax(c >= 100_000.0))
    score, reason = _run(wrapped, ts, params=COUNTER, counter=True)
    assert score[j] == 1.0 and reason[j] == REASON_COUNTER
    assert score[j + 1:].max() < 0.5 and score[:j].max() < 0.5


def test_meter_replacement_and_impossible_delta_fire(counter_readings):
    ts, c = counter_readings
    i = 700
    replaced = c.copy()
    replaced[i:] = c[i:] - c[i] + 0.3  # new meter starting near zero
    score, reason = _run(replaced, ts, params=COUNTER, counter=True)
    assert reason[i] == REASON_COUNTER and score[i] == 1.0
    assert score[i + 1:].max() < 0.5
    jump = c.copy()
    jump[i:] += 100.0  # 100 kWh in 15 minutes = 400 kW > 50 kW allowed
    score, reason = _run(jump, ts, params=COUNTER, counter=True)
    assert reason[i] == REASON_COUNTER and score[i] == 1.0


def test_kinds_coexist_and_are_checked():
    rng = np.random.default_rng(4)
    v = 230.0 + rng.normal(0, 0.5, 100)
    v[60] += 5.0
    batch = ReadingBatch.from_arrays(np.tile([0, 1], 100), T0_NS + np.arange(200) * MINUTE_NS, np.repeat(v, 2))
    strict = DetectorParams(seasonal=False, spike_z_lo=2.0, spike_z_hi=3.0)
    lax = DetectorParams(seasonal=False, spike_z_lo=50.0, spike_z_hi=60.0, level_z_lo=50, level_z_hi=60)
    score, _ = score_batch(batch, DetectorState(2), pack_params([strict, lax]), np.array([0, 1], np.int32),
                           np.zeros(2, bool))
    assert score[120] == 1.0 and score[121] == 0.0
    with pytest.raises(ValueError, match="kind"):
        score_batch(batch, DetectorState(2), pack_params([strict]), np.array([0, 1], np.int32), np.zeros(2, bool))
    with pytest.raises(ValueError):
        score_batch(batch, DetectorState(2), pack_params([strict]), np.array([0], np.int32), np.zeros(1, bool))
    with pytest.raises(ValueError):
        pack_params([DetectorParams(level_alpha=0.0)])


def test_alerts_raise_and_clear_with_hysteresis():
    series = np.zeros(8, np.int32)
    score = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.15, 0.85, 0.0], np.float32)
    reason = np.array([0, 4, 4, 1, 1, 1, 2, 0], np.uint8)
    state = AlertState(1, raise_at=0.8, clear_at=0.2)
    change = update_alerts(series, score, reason, state)
    assert change.tolist() == [0, 1, 0, 0, 0, -1, 1, -1]
    assert state.active[0] == 0


def test_ewma_zscore_matches_a_reference():
    rng = np.random.default_rng(0)
    series = rng.integers(0, 3, 300).astype(np.int32)
    value = rng.normal(5, 1, 300)
    z = ewma_zscore(series, value, 0.1, np.zeros((3, 3)))
    for s in range(3):
        x = value[series == s]
        m, d, ref = x[0], None, [np.nan]
        for k in range(1, len(x)):
            r = x[k] - m
            ref.append(np.nan if d is None else r / (np.sqrt(np.pi / 2) * d))
            d = abs(r) if d is None else d + 0.1 * (abs(r) - d)
            m = m + 0.1 * r
        np.testing.assert_allclose(z[series == s], ref, rtol=1e-12, equal_nan=True)


def test_threads_give_bitwise_identical_results(monkeypatch):
    import pipelines.detect as detect

    monkeypatch.setattr(detect, "PARALLEL_MIN_PER_THREAD", 100)
    batch, kinds, counters = _mixed_stream(5)
    one = score_batch(batch, DetectorState(16), TABLE, kinds, counters)
    state = DetectorState(16)
    two = score_batch(batch, state, TABLE, kinds, counters, threads=2)
    assert one[0].tobytes() == two[0].tobytes() and one[1].tobytes() == two[1].tobytes()
    bad_kinds = kinds.copy()
    bad_kinds[3] = 7
    with pytest.raises(ValueError, match="kind"):
        score_batch(batch, DetectorState(16), TABLE, bad_kinds, counters, threads=2)


EDGY = DetectorParams(warmup_samples=2, level_alpha=1.0, level_z_lo=0.5, level_z_hi=1.0, clip=1.5, floor_abs=0.0,
                      floor_rel=0.0, seasonal_alpha=0.7, seasonal_min_count=0, seasonal_z_lo=0.0, seasonal_z_hi=0.5,
                      flat_samples=3, flat_seconds=0.0, flat_eps=0.05, flat_ignore_zero=False, spike_alpha=0.9,
                      spike_z_lo=1.0, spike_z_hi=1.0, max_rate_per_s=0.01)
JITTERY_COUNTER = DetectorParams.counter(5.0, counter_neg_tol=0.5, warmup_samples=3, level_alpha=0.3,
                                         seasonal_min_count=3, seasonal_z_lo=1.0, seasonal_z_hi=2.0, flat_samples=4)
EVERY_KIND = pack_params([LOAD, GAUGE, COUNTER, EDGY, JITTERY_COUNTER])


def _rough_stream(seed: int, n_series: int = 20, n_ticks: int = 300):
    """Everything that leaves the quiet path, often: NaN and inf, spikes, flat and zero runs,
    counters that roll over, step back or jump, repeated and backward timestamps, extreme values."""
    rng = np.random.default_rng(seed)
    series, ts = interleave(n_series, n_ticks, MINUTE_NS * 7, rng, jitter_ns=MINUTE_NS * 3, shuffle="random")
    kinds = rng.integers(0, 5, n_series).astype(np.int32)
    counters = (kinds == 2) | (kinds == 4)
    value = np.empty(len(ts))
    for s in range(n_series):
        m = series == s
        k = int(m.sum())
        v = np.cumsum(rng.normal(0, rng.choice([0.01, 1.0, 100.0]), k)) + rng.uniform(-50, 50)
        if counters[s]:
            v = np.cumsum(np.abs(rng.normal(0, 0.2, k))) + rng.uniform(0, 1000)
            v[rng.integers(0, k, 3)] -= rng.choice([0.2, 5.0, 1000.0], 3)  # jitter, steps back, resets
            v[int(rng.integers(0, k)):] += 500.0  # an impossible jump
        v[rng.integers(0, k, 4)] *= rng.choice([10.0, -3.0, 0.0, 1e12], 4)  # spikes and extremes
        a = int(rng.integers(0, k - 20))
        v[a: a + int(rng.integers(2, 20))] = v[a]  # a flat run
        b = int(rng.integers(0, k - 10))
        v[b: b + int(rng.integers(2, 10))] = 0.0  # a zero run
        v[rng.random(k) < 0.03] = rng.choice([np.nan, np.inf, -np.inf])
        value[m] = v
    dup = rng.random(len(ts)) < 0.02  # repeated and backward timestamps
    ts[dup] -= rng.integers(0, 2 * MINUTE_NS * 7, dup.sum())
    return ReadingBatch.from_arrays(series, ts, value), kinds, counters


def _state_bytes(state: DetectorState, n: int) -> tuple[bytes, bytes]:
    return state.f[:n].tobytes() + state.i[:n].tobytes(), state.seasonal[:, :n].tobytes()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 40))
def test_quiet_path_is_bitwise_the_general_path(seed, n_cuts):
    """The kernel's straight-through path for readings that change no score gives exactly what the
    general path (every case, run for every reading when the quiet path is switched off) gives:
    scores, reasons and the whole state, whole batches or split anywhere."""
    from pipelines.detect import NEVER, _score

    batch, kinds, counters = _rough_stream(seed % 10_000)
    n = len(kinds)
    rng = np.random.default_rng(seed)
    cuts = np.unique(rng.integers(1, len(batch), size=n_cuts))
    runs = []
    for quiet_from in (2, int(NEVER)):
        state = DetectorState(4)
        parts = [_score(batch.take(slice(a, b)), state, EVERY_KIND, kinds, counters, 1, quiet_from)
                 for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(batch)])]
        runs.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     _state_bytes(state, n)))
    (s1, r1, st1), (s2, r2, st2) = runs
    assert (r2 != REASON_NONE).any() and (r2 == REASON_NONE).any()
    assert s1.tobytes() == s2.tobytes()
    assert r1.tobytes() == r2.tobytes()
    assert st1 == st2


def test_quiet_path_on_the_mixed_stream_and_with_threads(monkeypatch):
    import pipelines.detect as detect

    monkeypatch.setattr(detect, "PARALLEL_MIN_PER_THREAD", 100)
    batch, kinds, counters = _mixed_stream(8, n_ticks=600)
    n = len(kinds)
    ref_state = DetectorState(n)
    ref = detect._score(batch, ref_state, TABLE, kinds, counters, 1, int(detect.NEVER))
    for threads in (1, 2, 3):
        state = DetectorState(n)
        got = score_batch(batch, state, TABLE, kinds, counters, threads=threads)
        assert got[0].tobytes() == ref[0].tobytes() and got[1].tobytes() == ref[1].tobytes()
        assert _state_bytes(state, n) == _state_bytes(ref_state, n)


def test_state_grows_mid_batch_and_scoring_goes_on_where_it_stopped(monkeypatch):
    """Series first seen deep into a large batch (past the kernel's first chunk of checked ids)
    make the state grow there; scoring resumes where it stopped, on one thread or several."""
    import pipelines.detect as detect

    monkeypatch.setattr(detect, "PARALLEL_MIN_PER_THREAD", 100)
    rng = np.random.default_rng(3)
    n_series, n_ticks = 64, 800
    series, ts = interleave(n_series, n_ticks, MINUTE_NS, rng, jitter_ns=MINUTE_NS // 2, shuffle="device")
    value = rng.normal(10.0, 1.0, len(series))
    late = series >= 32
    keep = ~late | (np.arange(len(series)) > 3 * detect.CHECK_CHUNK)  # ids 32.. appear late
    batch = ReadingBatch.from_arrays(series[keep], ts[keep], value[keep])
    kinds = (np.arange(n_series) % 3).astype(np.int32)
    counters = kinds == 2
    ref_state = DetectorState(n_series)
    ref = score_batch(batch, ref_state, TABLE, kinds, counters)
    for threads in (1, 2):
        state = DetectorState(32)  # room for the early ids only
        got = score_batch(batch, state, TABLE, kinds, counters, threads=threads)
        assert state.cap > 32
        assert got[0].tobytes() == ref[0].tobytes() and got[1].tobytes() == ref[1].tobytes()
        assert _state_bytes(state, n_series) == _state_bytes(ref_state, n_series)
