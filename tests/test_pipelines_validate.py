"""Meter-data VEE: rollover, replacement, resets, glitches, gaps, ranges; nothing invented silently."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.batch import (
    QUALITY_EDITED,
    QUALITY_ESTIMATED,
    QUALITY_OUT_OF_RANGE,
    QUALITY_SUSPECT,
    ReadingBatch,
)
from pipelines.validate import (
    EV_BACKWARD,
    EV_FIRST,
    EV_GAP,
    EV_GLITCH,
    EV_HELD,
    EV_MISSING,
    EV_OUT_OF_ORDER,
    EV_OUT_OF_RANGE,
    EV_REPLACEMENT,
    EV_RESET,
    EV_ROLLOVER,
    NO_TS,
    VeeParams,
    VeeState,
    describe_events,
    pack_vee_params,
    validate_batch,
)

MIN = 60 * 1_000_000_000
PARAMS = VeeParams(backward_tolerance=0.05)


def _vee(values, ts=None, params=PARAMS, counter=True, quality=0):
    values = np.asarray(values, dtype=np.float64)
    if ts is None:
        ts = np.arange(len(values), dtype=np.int64) * 10 * MIN
    batch = ReadingBatch.from_arrays(np.zeros(len(values), np.int32), ts, values, quality)
    return validate_batch(batch, VeeState(1), pack_vee_params([params]), np.zeros(1, np.int32), np.array([counter]))


def test_normal_deltas_and_first_reading():
    r = _vee([10.0, 10.5, 11.25])
    assert np.isnan(r.delta[0]) and r.prev_ts[0] == NO_TS and r.event[0] == EV_FIRST
    np.testing.assert_array_equal(r.delta[1:], [0.5, 0.75])
    np.testing.assert_array_equal(r.prev_ts[1:], [0, 10 * MIN])
    assert (r.quality == 0).all() and (r.event[1:] == 0).all()


def test_rollover_at_the_register_modulus():
    r = _vee([99_990.0, 99_995.0, 3.0, 8.0])
    assert r.event[2] == EV_ROLLOVER
    assert r.delta[2] == pytest.approx(8.0)  # (100000 - 99995) + 3
    assert r.quality[2] & QUALITY_EDITED
    assert r.delta[3] == 5.0 and r.event[3] == 0
    # a 32-bit register scaled to 0.01 kWh
    modulus = 2**32 * 0.01
    r2 = _vee([modulus - 1.0, 2.0], params=VeeParams(rollover_modulus=modulus))
    assert r2.event[1] == EV_ROLLOVER and r2.delta[1] == pytest.approx(3.0)


def test_meter_replacement_is_confirmed_by_the_next_reading():
    r = _vee([500.0, 501.0, 0.4, 1.0, 2.0])
    assert r.event[2] == EV_HELD and np.isnan(r.delta[2]) and r.quality[2] & QUALITY_SUSPECT
    assert r.event[3] == EV_REPLACEMENT
    assert r.delta[3] == 1.0  # new meter counted from its assumed start at 0
    assert r.prev_ts[3] == 10 * MIN  # spread from the old meter's last good reading
    assert r.quality[3] & QUALITY_EDITED and r.quality[3] & QUALITY_ESTIMATED
    assert r.delta[4] == 1.0 and r.event[4] == 0


def test_a_single_zero_read_is_a_glitch_not_a_replacement():
    r = _vee([500.0, 501.0, 0.0, 502.0, 503.0])
    assert r.event[2] == EV_HELD and np.isnan(r.delta[2])
    assert r.event[3] == EV_GLITCH and r.delta[3] == 1.0 and r.prev_ts[3] == 10 * MIN
    assert np.nansum(r.delta) == 3.0


def test_impossible_jump_is_held_then_dropped_or_rebased():
    # 400 kWh in 10 minutes is 2400 kW: a glitch, dropped when the next reading agrees with the last
    r = _vee([100.0, 101.0, 501.0, 102.0])
    assert r.event[2] == EV_HELD and r.event[3] == EV_GLITCH and r.delta[3] == 1.0
    # ... or a re-based register when the next reading agrees with the jump
    r = _vee([100.0, 101.0, 901.0, 902.0, 903.5])
    assert r.event[3] == EV_RESET and r.delta[3] == 1.0 and r.prev_ts[3] == 20 * MIN
    assert r.quality[3] & QUALITY_EDITED
    assert np.nansum(r.delta) == 3.5  # the 800 kWh jump is not consumption
    # a reset to a mid value (not near zero, not near the modulus)
    r = _vee([50_000.0, 50_001.0, 20_000.0, 20_001.0])
    assert r.event[2] == EV_HELD and r.event[3] == EV_RESET and r.delta[3] == 1.0


def test_backward_jitter_within_tolerance_is_no_consumption():
    r = _vee([100.0, 101.0, 100.98, 101.5])
    assert r.event[2] == EV_BACKWARD and r.delta[2] == 0.0 and r.quality[2] & QUALITY_EDITED
    assert r.delta[3] == pytest.approx(0.5)  # from the held maximum 101.0, nothing counted twice


def test_gap_is_flagged_but_the_delta_is_kept():
    ts = np.array([0, 10, 20, 200, 210], dtype=np.int64) * MIN
    r = _vee([1.0, 2.0, 3.0, 20.0, 21.0], ts)
    assert r.event[3] & EV_GAP and r.delta[3] == 17.0
    assert not r.event[4] & EV_GAP


def test_missing_out_of_range_and_out_of_order_do_not_advance():
    ts = np.array([0, 10, 20, 15, 20, 30, 40], dtype=np.int64) * MIN
    r = _vee([1.0, np.nan, 2.0, 1.5, 2.0, 1e9, 3.0], ts)
    assert r.event[1] == EV_MISSING and r.quality[1] & QUALITY_SUSPECT
    assert r.event[3] == EV_OUT_OF_ORDER and r.quality[3] & QUALITY_SUSPECT
    assert r.event[4] == EV_OUT_OF_ORDER and r.quality[4] == 0  # exact duplicate: harmless
    assert r.event[5] == EV_OUT_OF_RANGE and r.quality[5] & QUALITY_OUT_OF_RANGE
    assert r.delta[6] == 1.0 and r.prev_ts[6] == 20 * MIN
    assert np.nansum(r.delta) == 2.0


def test_gauges_get_the_range_check_only():
    r = _vee([1.0, -5.0, 300.0, 2.0], params=VeeParams(min_value=0.0, max_value=250.0), counter=False,
             quality=QUALITY_ESTIMATED)
    assert np.isnan(r.delta).all()
    assert (r.quality[[1, 2]] == QUALITY_ESTIMATED | QUALITY_OUT_OF_RANGE).all()
    assert (r.quality[[0, 3]] == QUALITY_ESTIMATED).all()


def test_describe_events():
    assert describe_events(EV_ROLLOVER | EV_GAP) == ["rollover", "gap"]


def _register(increments, start, modulus=100_000.0):
    raw = start + np.cumsum(np.r_[0.0, increments])
    return np.mod(raw, modulus)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 30.0), min_size=1, max_size=200),
    st.floats(90_000.0, 99_999.0),
    st.integers(0, 2**31 - 1),
)
def test_deltas_add_up_to_the_rollover_corrected_consumption(increments, start, seed):
    inc = np.round(np.asarray(increments), 2)
    values = _register(inc, start)
    ts = np.arange(len(values), dtype=np.int64) * 10 * MIN
    batch = ReadingBatch.from_arrays(np.zeros(len(values), np.int32), ts, values)
    rng = np.random.default_rng(seed)
    cuts = np.unique(rng.integers(1, max(len(values), 2), size=5))
    state = VeeState(1)
    table = pack_vee_params([VeeParams()])
    deltas = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(values)]):
        r = validate_batch(batch.take(slice(a, b)), state, table, np.zeros(1, np.int32), np.ones(1, bool))
        deltas.append(r.delta)
    d = np.concatenate(deltas)
    assert (d[~np.isnan(d)] >= 0).all()  # never negative consumption
    assert np.nansum(d) == pytest.approx(inc.sum(), rel=1e-9, abs=1e-6)


def test_from_arrays_uses_writeable_columns_as_they_are():
    ts = np.arange(4, dtype=np.int64) * MIN
    b = ReadingBatch.from_arrays(np.zeros(4, np.int32), ts, np.ones(4))
    assert b.ts_ns is ts  # no copy of a large batch's timestamps
    assert b.quality.tolist() == [0, 0, 0, 0] and b.quality.dtype == np.uint8
    frozen = ts.copy()
    frozen.flags.writeable = False
    b = ReadingBatch.from_arrays(np.zeros(4, np.int32), frozen, np.ones(4), QUALITY_SUSPECT)
    assert b.ts_ns.flags.writeable and b.ts_ns is not frozen  # kernels take writeable arrays only
    assert b.quality.tolist() == [QUALITY_SUSPECT] * 4
    assert ReadingBatch.from_arrays([0, 1], 7, [1.0, 2.0]).ts_ns.tolist() == [7, 7]


def test_validate_accepts_other_dtypes_and_a_flat_table():
    table = pack_vee_params([PARAMS])
    batch = ReadingBatch.from_arrays([0, 0, 0], np.array([0, 10, 20]) * MIN, [1.0, 1.5, 2.5])
    ref = validate_batch(batch, VeeState(1), table, np.zeros(1, np.int32), np.array([True]))
    other = validate_batch(batch, VeeState(1), table.ravel(), np.zeros(1, np.int64), [1])
    np.testing.assert_array_equal(ref.delta, other.delta)
    np.testing.assert_array_equal(ref.event, other.event)
    with pytest.raises(ValueError):
        validate_batch(batch, VeeState(1), table, np.array([3], np.int32), np.array([True]))  # no kind 3
