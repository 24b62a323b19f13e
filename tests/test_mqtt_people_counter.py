"""People counters: cumulative totals into interval counts, with resets detected and never negative."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mqtt.people_counter import MAX_COUNT, PeopleCounterDecoder

S = 1_000_000_000
T0 = 1_772_410_500 * S  # 2026-03-02T08:15:00+08:00
TOPIC = "cameras/cam-1/peopleCounting"


def report(enter: object, exit_: object, t_ns: int | None = T0, device: str = "cam-1", gate: str = "north-gate",
           **extra: object) -> bytes:
    doc: dict = {"deviceID": device, "macAddress": "44:19:b6:01:02:03", "channelID": 1, "channelName": gate,
                 "eventType": "PeopleCounting",
                 "peopleCounting": {"statisticalMethods": "realTime", "enter": enter, "exit": exit_}}
    if t_ns is not None:
        secs, ns = divmod(t_ns, S)
        local = datetime.fromtimestamp(secs, timezone(timedelta(hours=8)))
        doc["dateTime"] = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1_000_000:03d}+08:00"
    doc.update(extra)
    return json.dumps(doc).encode()


def fields_of(decoder: PeopleCounterDecoder, payload: bytes, now: int = T0) -> tuple[dict, list[str]]:
    result = decoder(TOPIC, payload, "site", now)
    assert len(result.readings) <= 1
    return (result.readings[0].fields if result.readings else {}), [r for r, _ in result.problems]


def test_first_report_keeps_totals_and_invents_no_interval():
    fields, problems = fields_of(PeopleCounterDecoder(), report(120, 97))
    assert problems == []
    assert fields == {"in_total": 120.0, "out_total": 97.0, "net_total": 23.0}


def test_interval_counts_from_consecutive_totals():
    d = PeopleCounterDecoder()
    fields_of(d, report(120, 97, T0))
    fields, problems = fields_of(d, report(125, 99, T0 + 60 * S), T0 + 60 * S)
    assert problems == []
    assert fields == {"in_total": 125.0, "out_total": 99.0, "net_total": 26.0, "in_count": 5.0, "out_count": 2.0,
                      "net_count": 3.0, "resets": 0.0}


def test_tags_and_timestamp():
    result = PeopleCounterDecoder()(TOPIC, report(1, 2, T0 + 120_000_000), "site", T0)
    [r] = result.readings
    assert result.device == "cam-1"
    assert r.measurement == "people_counter"
    assert r.tags == {"site": "site", "device": "cam-1", "gate": "north-gate"}
    assert r.ts_ns == T0 + 120_000_000


@pytest.mark.parametrize(("before", "after", "counts"), [
    ((1500, 1480), (3, 1), (3, 1)),  # the midnight reset: both totals restart
    ((1500, 1480), (0, 0), (0, 0)),
    ((5, 500), (7, 2), (7, 2)),  # entries passed the old total again, but exits went down: both restarted
    ((500, 5), (2, 7), (2, 7)),
])
def test_a_total_going_down_is_a_reset_counted_from_zero(before, after, counts):
    d = PeopleCounterDecoder()
    fields_of(d, report(*before, T0))
    fields, problems = fields_of(d, report(*after, T0 + 10 * S), T0 + 10 * S)
    assert problems == []
    assert (fields["in_count"], fields["out_count"], fields["resets"]) == (*counts, 1.0)
    assert (fields["in_total"], fields["out_total"]) == after
    # and the next report counts from the new baseline again
    fields, _ = fields_of(d, report(after[0] + 4, after[1] + 1, T0 + 20 * S), T0 + 20 * S)
    assert (fields["in_count"], fields["out_count"], fields["resets"]) == (4.0, 1.0, 0.0)


def test_state_is_per_camera_and_gate():
    d = PeopleCounterDecoder()
    fields_of(d, report(100, 100, T0, device="cam-1"))
    fields_of(d, report(5, 5, T0, device="cam-2"))
    fields_of(d, report(50, 50, T0, device="cam-1", gate="lobby"))
    fields, _ = fields_of(d, report(101, 102, T0 + S, device="cam-1"), T0 + S)
    assert (fields["in_count"], fields["out_count"], fields["resets"]) == (1.0, 2.0, 0.0)
    fields, _ = fields_of(d, report(6, 5, T0 + S, device="cam-2"), T0 + S)
    assert (fields["in_count"], fields["resets"]) == (1.0, 0.0)
    fields, _ = fields_of(d, report(51, 50, T0 + S, device="cam-1", gate="lobby"), T0 + S)
    assert (fields["in_count"], fields["resets"]) == (1.0, 0.0)


def test_late_and_repeated_reports_never_make_intervals():
    d = PeopleCounterDecoder()
    fields_of(d, report(100, 90, T0))
    fields_of(d, report(110, 95, T0 + 60 * S), T0 + 60 * S)
    late, problems = fields_of(d, report(105, 92, T0 + 30 * S), T0 + 61 * S)
    assert problems == ["out_of_order"]
    assert late == {"in_total": 105.0, "out_total": 92.0, "net_total": 13.0}
    again, problems = fields_of(d, report(110, 95, T0 + 60 * S), T0 + 62 * S)  # a QoS 1 redelivery
    assert problems == [] and "in_count" not in again
    after, _ = fields_of(d, report(112, 95, T0 + 120 * S), T0 + 120 * S)
    assert (after["in_count"], after["out_count"], after["resets"]) == (2.0, 0.0, 0.0)


def test_a_dropped_report_leaves_the_baseline_so_nothing_is_lost():
    d = PeopleCounterDecoder()
    fields_of(d, report(100, 90, T0))
    _, problems = fields_of(d, report(104, 91, T0 + 3600 * S), T0 + 30 * S)  # camera clock an hour ahead
    assert problems == ["clock_skew"]
    _, problems = fields_of(d, report("104", 91, T0 + 40 * S), T0 + 40 * S)
    assert problems == ["wrong_type"]
    fields, _ = fields_of(d, report(106, 93, T0 + 60 * S), T0 + 60 * S)
    assert (fields["in_count"], fields["out_count"]) == (6.0, 3.0)


@pytest.mark.parametrize(("enter", "exit_", "problem", "kept"), [
    ("12", 3, "wrong_type", {"out_total": 3.0}),
    (12, True, "wrong_type", {"in_total": 12.0}),
    (12.5, 3, "wrong_type", {"out_total": 3.0}),
    (12.0, 3, None, {"in_total": 12.0, "out_total": 3.0, "net_total": 9.0}),
    (-1, 3, "out_of_range", {"out_total": 3.0}),
    (MAX_COUNT + 1, 3, "out_of_range", {"out_total": 3.0}),
    (None, 3, "missing_field", {"out_total": 3.0}),
])
def test_bad_counts(enter, exit_, problem, kept):
    fields, problems = fields_of(PeopleCounterDecoder(), report(enter, exit_))
    assert problems == ([problem] if problem else [])
    assert fields == kept


@pytest.mark.parametrize(("extra", "problem"), [
    ({"eventType": "videoloss"}, "unsupported_event"),
    ({"peopleCounting": {"statisticalMethods": "daily", "enter": 1, "exit": 1}}, "unsupported_event"),
    ({"peopleCounting": [1, 2]}, "missing_field"),
    ({"deviceID": None, "macAddress": None}, "missing_device"),
    ({"dateTime": "08:15"}, "bad_timestamp"),
])
def test_unusable_reports(extra, problem):
    fields, problems = fields_of(PeopleCounterDecoder(), report(1, 1, **extra))
    assert problems == [problem] and fields == {}


def test_mac_address_identifies_a_camera_without_device_id():
    result = PeopleCounterDecoder()(TOPIC, report(1, 1, deviceID=None), "site", T0)
    assert result.device == "44:19:b6:01:02:03"


def test_time_range_reports_are_interval_counts_already():
    doc = {"deviceID": "cam-1", "channelName": "north-gate", "eventType": "PeopleCounting",
           "peopleCounting": {"statisticalMethods": "timeRange", "enter": 7, "exit": 4,
                              "TimeRange": {"startTime": "2026-03-02T08:00:00+08:00",
                                            "endTime": "2026-03-02T08:15:00+08:00"}}}
    result = PeopleCounterDecoder()(TOPIC, json.dumps(doc).encode(), "site", T0)
    [r] = result.readings
    assert r.ts_ns == T0
    assert r.fields == {"in_count": 7.0, "out_count": 4.0, "net_count": 3.0}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), min_size=1, max_size=30))
def test_interval_counts_never_negative_and_add_up_between_resets(totals):
    d = PeopleCounterDecoder()
    sum_in = 0
    for i, (enter, exit_) in enumerate(totals):
        fields, problems = fields_of(d, report(enter, exit_, T0 + i * S), T0 + i * S)
        assert problems == []
        if i == 0:
            continue
        assert fields["in_count"] >= 0 and fields["out_count"] >= 0
        if fields["resets"]:
            sum_in = 0
            assert fields["in_count"] == enter
        sum_in += fields["in_count"]
    if len(totals) > 1:
        # since the last reset the intervals add up to the total (or to the growth since the first report)
        first_in = totals[0][0] if not any(
            b[0] < a[0] or b[1] < a[1] for a, b in zip(totals, totals[1:])) else 0
        assert sum_in == totals[-1][0] - first_in
