"""The core wired to the gateway's series: intervals, roll-ups, scores and the safety rules.

Batches go in as the drivers emit them (registry ids, columnar); what comes out is checked as the
points that would be written.
"""
from __future__ import annotations

import numpy as np
import pytest

from gateway.analytics import Analytics, AnalyticsSettings, RuleTimes
from pipelines.batch import ReadingBatch
from pipelines.series import SeriesRegistry

T0 = 1_767_225_600 * 10**9  # 2026-01-01 00:00 UTC = 08:00 in Hangzhou
S = 10**9


def rows_of(reg: SeriesRegistry, batch: ReadingBatch, measurement: str) -> list[dict]:
    """Derived points as dicts: tags, field, ts, value."""
    out = []
    for sid, ts, v in zip(batch.series, batch.ts_ns, batch.value):
        key = reg.keys[int(sid)]
        if key.measurement == measurement:
            out.append({**dict(key.tags), "field": key.field, "ts": int(ts), "value": float(v)})
    return out


def make(buildings=("B1", "B2"), pv=(), **rule_times) -> tuple[SeriesRegistry, Analytics]:
    reg = SeriesRegistry()
    a = Analytics(reg, AnalyticsSettings(site="s", rules=RuleTimes(**rule_times)), list(buildings), set(pv))
    return reg, a


def test_intervals_rollups_and_carbon_from_counters():
    reg, a = make(pv={"pv-1"})
    meters = {"h-1": ("B1", 2.0), "h-2": ("B2", 1.0), "pv-1": ("B1", 1.2)}  # kW, constant
    sids = {d: reg.register("energy_meter", {"site": "s", "building": b, "device": d, "model": "x"}, "energy_import")
            for d, (b, _) in meters.items()}
    derived = []
    for k in range(0, 46):  # one reading a minute for 45 minutes
        ts = T0 + k * 60 * S
        values = [100.0 + kw * k / 60.0 for _, (_, kw) in meters.items()]
        out, _ = a.process(ReadingBatch.from_arrays(list(sids.values()), ts, values))
        derived.append(out)
    derived.append(a.flush())
    got = ReadingBatch.concat(derived)
    iv = rows_of(reg, got, "energy_interval")
    last: dict = {}
    for r in iv:
        last[(r["device"], r["interval"], r["field"], r["ts"])] = r["value"]  # InfluxDB keeps the last write
    for d, (_, kw) in meters.items():
        e15 = [v for (dev, i, f, _), v in last.items() if dev == d and i == "15m" and f == "energy"]
        e1 = [v for (dev, i, f, _), v in last.items() if dev == d and i == "1m" and f == "energy"]
        assert sum(e15) == pytest.approx(kw * 45 / 60, rel=1e-9)  # intervals add up to the counter delta
        assert sum(e1) == pytest.approx(kw * 45 / 60, rel=1e-9) and len(e1) == 45
    ru = rows_of(reg, got, "energy_rollup")
    final: dict = {}
    for r in ru:
        final[(r["scope"], r.get("building"), r["interval"], r["field"], r["ts"])] = r["value"]
    q = T0 + 15 * 60 * S  # the second quarter hour: complete for every meter
    assert final[("community", None, "15m", "load", q)] == pytest.approx((2.0 + 1.0) / 4)
    assert final[("community", None, "15m", "pv", q)] == pytest.approx(1.2 / 4)
    assert final[("community", None, "15m", "import", q)] == pytest.approx((3.0 - 1.2) / 4)
    assert final[("community", None, "15m", "demand", q)] == pytest.approx(3.0 - 1.2)
    assert final[("building", "B1", "15m", "import", q)] == pytest.approx((2.0 - 1.2) / 4)
    assert final[("community", None, "15m", "carbon", q)] == pytest.approx(0.45 * 0.5306)
    assert final[("community", None, "15m", "complete", q)] == 1.0
    day0 = T0 - 8 * 3600 * S  # local midnight
    assert final[("community", None, "1d", "peak_demand", day0)] == pytest.approx(1.8)
    assert final[("community", None, "1d", "import", day0)] == pytest.approx(1.8 * 0.75)


def test_trapped_passenger_raises_after_its_time_and_clears_with_hysteresis():
    reg, a = make(trapped_passenger_s=180, clear_after_s=10)
    tags = {"site": "s", "building": "B1", "device": "lift-1"}
    fields = ["occupied", "door_state", "moving", "in_door_zone"]
    ids = [reg.register("elevator", tags, f) for f in fields]

    def state(t_s: float, occupied, door, moving, zone=1):
        return a.process(ReadingBatch.from_arrays(ids, T0 + int(t_s * S), [occupied, door, moving, zone]))[1]

    assert state(0, 1, 0, 0) == []
    assert a.tick(T0 + 100 * S) == []  # not yet
    events = a.tick(T0 + 181 * S)  # no new message from the monitor: the clock raises it
    assert [(e.rule, e.raised, e.device) for e in events] == [("trapped_passenger", True, "lift-1")]
    assert events[0].value == pytest.approx(181)
    assert state(200, 1, 0, 0) == []  # still trapped: no second raise
    assert state(300, 1, 1, 0) == []  # door opens: cleared only after 10 s of not-trapped
    events = state(311, 1, 1, 0)
    assert [(e.rule, e.raised) for e in events] == [("trapped_passenger", False)]
    points = rows_of(reg, a.alert_batch(events), "alert")
    assert {p["field"]: p["value"] for p in points} == {"active": 0.0, "value": pytest.approx(11.0)}


def test_a_flicker_never_raises_door_open_while_moving():
    reg, a = make(door_open_while_moving_s=2.0)
    ids = [reg.register("elevator", {"site": "s", "device": "lift-2"}, f) for f in ("door_state", "moving")]

    def at(t_s, door, moving):
        return a.process(ReadingBatch.from_arrays(ids, T0 + int(t_s * S), [door, moving]))[1]

    at(0, 0, 1)
    assert at(1.0, 1, 1) == [] and at(1.5, 0, 1) == []  # a door switch chattering for half a second
    assert at(10, 1, 1) == [] and at(11, 1, 1) == []
    events = at(12.5, 1, 1)
    assert [(e.rule, e.raised) for e in events] == [("door_open_while_moving", True)]


def test_fire_lane_only_for_fire_lane_bays():
    reg, a = make(fire_lane_s=300)
    lane = reg.register("parking_bay", {"site": "s", "device": "d1", "bay": "FL-1", "zone": "fire_lane"}, "occupied")
    ordinary = reg.register("parking_bay", {"site": "s", "device": "d2", "bay": "P-1", "zone": "general"}, "occupied")
    a.process(ReadingBatch.from_arrays([lane, ordinary], T0, [1.0, 1.0]))
    assert a.tick(T0 + 299 * S) == []
    events = a.tick(T0 + 301 * S)
    assert [(e.rule, e.device) for e in events] == [("fire_lane_blocked", "d1")]


def test_crowding_on_the_entry_rate():
    reg, a = make(crowding_per_minute=30, crowding_s=60)
    sid = reg.register("people_counter", {"site": "s", "device": "gate-1", "gate": "north"}, "in_count")
    events = []
    for k, n in enumerate([5, 5, 40, 40, 40, 40, 5, 5]):  # reports every 30 s
        events += a.process(ReadingBatch.from_arrays([sid], T0 + k * 30 * S, [float(n)]))[1]
    assert [(e.rule, e.raised) for e in events] == [("crowding", True), ("crowding", False)]


def test_spike_is_scored_written_and_alerted():
    reg, a = make()
    sid = reg.register("energy_meter", {"site": "s", "building": "B1", "device": "h-1", "model": "x"}, "active_power")
    rng = np.random.default_rng(3)
    values = 1000 + rng.normal(0, 20, 200)
    values[150] = 9000.0
    anomaly, events = [], []
    for k, v in enumerate(values):
        out, ev = a.process(ReadingBatch.from_arrays([sid], T0 + k * 60 * S, [v]))
        anomaly += rows_of(reg, out, "anomaly")
        events += ev
    spike = [p for p in anomaly if p["ts"] == T0 + 150 * 60 * S]
    assert {p["field"]: p["value"] for p in spike}["score"] >= 0.8
    assert {p["field"]: p["value"] for p in spike}["reason"] == 4  # spike
    assert spike[0]["source"] == "energy_meter" and spike[0]["field"] in ("score", "reason")
    raised = [e for e in events if e.raised]
    assert raised and raised[0].rule == "anomaly_active_power_spike" and raised[0].ts_ns == T0 + 150 * 60 * S
    assert all(p["ts"] >= T0 + 29 * 60 * S for p in anomaly)  # explicit warm-up: nothing before 30 readings


def test_device_offline_after_its_time():
    reg, a = make(device_offline_s=300)
    sid = reg.register("device_health", {"site": "s", "device": "m-9", "driver": "modbus"}, "stale")
    a.process(ReadingBatch.from_arrays([sid], T0, [1.0]))
    assert a.tick(T0 + 200 * S) == []
    assert [e.rule for e in a.tick(T0 + 300 * S)] == ["device_offline"]
    assert a.process(ReadingBatch.from_arrays([sid], T0 + 400 * S, [0.0]))[1] == []  # back, but not for 10 s yet
    assert [(e.rule, e.raised) for e in a.tick(T0 + 411 * S)] == [("device_offline", False)]


def test_detector_rows_are_per_scored_series_and_score_as_the_core_alone():
    """Scored series get dense detector rows (their own score/reason series and unscored fields take
    none), and the scores are those of the core run on those series alone."""
    from pipelines.detect import DetectorState, pack_params, score_batch
    from gateway.analytics import DEFAULT_DETECTORS

    reg, a = make()
    sids = []
    for d in range(40):
        tags = {"site": "s", "building": "B1", "device": f"h-{d}", "model": "x"}
        reg.register("energy_meter", tags, "voltage")  # not scored
        sids.append(reg.register("energy_meter", tags, "active_power"))
    rng = np.random.default_rng(7)
    n_ticks = 120
    values = 1000 + rng.normal(0, 20, (n_ticks, len(sids)))
    values[90, 3] = 9000.0
    values[100:, 5] = 0.0
    got_score = {}
    for k in range(n_ticks):
        ts = T0 + k * 60 * S
        out, _ = a.process(ReadingBatch.from_arrays(sids, ts, values[k]))
        for p in rows_of(reg, out, "anomaly"):
            if p["field"] == "score":
                got_score[(p["device"], p["ts"])] = p["value"]
    assert len(reg) > 3 * len(sids) and a.det.cap < 100  # rows by series id would need > 160
    # the same readings through the core alone, series 0..39
    state = DetectorState(len(sids))
    table = pack_params([DEFAULT_DETECTORS[k] for k in ("gauge", "energy_counter", "count")])
    want = {}
    for k in range(n_ticks):
        b = ReadingBatch.from_arrays(np.arange(len(sids), dtype=np.int32), T0 + k * 60 * S, values[k])
        score, _ = score_batch(b, state, table, np.zeros(len(sids), dtype=np.int32), np.zeros(len(sids), dtype=bool))
        for i in np.flatnonzero(score > 0):
            want[(f"h-{i}", T0 + k * 60 * S)] = float(score[i])
    assert want and got_score == pytest.approx(want)
    assert ("h-3", T0 + 90 * 60 * S) in got_score
