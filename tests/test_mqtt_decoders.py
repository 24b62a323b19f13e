"""What every MQTT decoder shares: garbage never raises, and each kind of bad input has its reason.

Each decoder gets hypothesis-generated payloads (random bytes, random JSON, and realistic messages
with fields replaced by random JSON values) and must return a DecodeResult whose readings only
carry finite values of fields the schema declares.
"""
from __future__ import annotations

import json
import math
import typing
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.mqtt.chirpstack import decode_parking_uplink
from drivers.mqtt.decoded import (
    DEFAULT_CLOCK,
    ClockWindow,
    Decoder,
    DecodeResult,
    device_time_ns,
    parse_rfc3339_ns,
)
from drivers.mqtt.elevator import ElevatorDecoder
from drivers.mqtt.json_mapping import FieldSpec, JsonDecoder, JsonMapping
from drivers.mqtt.people_counter import PeopleCounterDecoder
from gateway.config import Subscription
from gateway.runtime import DECODERS
from pipelines.schema import measurement

NOW_NS = 1_772_410_500_000_000_000  # 2026-03-02T00:15:00Z
NOW_LOCAL = "2026-03-02T08:15:00.000+08:00"

CHIRPSTACK_UP = {
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d", "time": "2026-03-02T00:15:00.123456789+00:00",
    "deviceInfo": {"devEui": "a840410001810001", "deviceName": "P-001", "tags": {"bay": "P-001", "zone": "general"}},
    "fPort": 2, "data": "Af8=", "object": {"type": "heartbeat", "occupied": True, "temperature": 21},
    "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -80, "snr": 7.5}],
}
CAMERA_REPORT = {
    "deviceID": "cam-north-gate", "macAddress": "44:19:b6:01:02:03", "channelID": 1, "channelName": "north-gate",
    "dateTime": NOW_LOCAL, "eventType": "PeopleCounting",
    "peopleCounting": {"statisticalMethods": "realTime", "enter": 120, "exit": 97},
}
LIFT_STATUS = {
    "type": "status", "elevator_id": "B1-L1", "building": "B1", "ts": NOW_LOCAL, "direction": "up", "floor": 7,
    "at_level": False, "door": "closed", "occupied": True, "speed_mps": 1.62, "load_pct": 22.5, "mode": "normal",
    "run_count": 48211, "active_faults": [],
}
LIFT_EVENT = {
    "type": "event", "event_id": "e1", "elevator_id": "B1-L1", "building": "B1", "ts": NOW_LOCAL,
    "code": "TRAPPED_BETWEEN_FLOORS", "state": "raised", "floor": 7, "occupied": True,
}
SENSOR_JSON = {"meta": {"id": "lift-7", "building": "B2"}, "ts": 1_772_410_500_000,
               "car": {"floor": 3, "speed_mms": 1500, "door_open": False}}


LIFT_MAPPING = JsonMapping(
    "elevator",
    {"floor": FieldSpec("car.floor"), "speed": FieldSpec("car.speed_mms", 0.001, 0.0, 20.0),
     "door_state": FieldSpec("car.door_open")},
    device_path="meta.id", tag_paths={"building": "meta.building"}, time_path="ts", time_format="epoch_ms")


def json_decoder(clock: ClockWindow = DEFAULT_CLOCK) -> JsonDecoder:
    return JsonDecoder(LIFT_MAPPING, clock)


def chirpstack(clock: ClockWindow = DEFAULT_CLOCK) -> Decoder:
    return partial(decode_parking_uplink, clock=clock)


# (name, decoder factory taking a clock window, topic, a good message)
CASES = [
    ("chirpstack", chirpstack, "application/x/device/a840410001810001/event/up", CHIRPSTACK_UP),
    ("people_counter", PeopleCounterDecoder, "cameras/cam-north-gate/peopleCounting", CAMERA_REPORT),
    ("elevator_status", ElevatorDecoder, "elevators/B1/B1-L1/status", LIFT_STATUS),
    ("elevator_event", ElevatorDecoder, "elevators/B1/B1-L1/event", LIFT_EVENT),
    ("json", json_decoder, "sensors/lift-7/state", SENSOR_JSON),
]
IDS = [c[0] for c in CASES]


def assert_well_formed(result: DecodeResult) -> None:
    assert isinstance(result, DecodeResult)
    for reason, detail in result.problems:
        assert isinstance(reason, str) and reason and isinstance(detail, str)
    for r in result.readings:
        m = measurement(r.measurement)
        assert set(r.tags) <= set(m.tags)
        assert all(isinstance(v, str) and v for v in r.tags.values())
        assert -(2**63) < r.ts_ns < 2**63
        for name, value in r.fields.items():
            m.field(name)
            assert isinstance(value, float) and math.isfinite(value), (name, value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def mutate(doc: dict, data: st.DataObject) -> dict:
    """The message with some of its keys (at any depth) replaced by arbitrary JSON or removed."""
    out = {}
    for k, v in doc.items():
        action = data.draw(st.sampled_from(["keep", "keep", "replace", "drop", "recurse"]))
        if action == "replace":
            out[k] = data.draw(json_values)
        elif action == "recurse" and isinstance(v, dict):
            out[k] = mutate(v, data)
        elif action != "drop":
            out[k] = v
    return out


@pytest.mark.parametrize(("name", "factory", "topic", "good"), CASES, ids=IDS)
def test_good_message_decodes_without_problems(name, factory, topic, good):
    result = factory(DEFAULT_CLOCK)(topic, json.dumps(good).encode(), "s", NOW_NS)
    assert result.problems == []
    assert result.readings and result.device
    assert_well_formed(result)


@pytest.mark.parametrize(("name", "factory", "topic", "good"), CASES, ids=IDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbage_never_raises(name, factory, topic, good, data):
    decoder = factory(DEFAULT_CLOCK)
    kind = data.draw(st.sampled_from(["bytes", "json", "mutated"]))
    if kind == "bytes":
        payload = data.draw(st.binary(max_size=200))
    elif kind == "json":
        payload = json.dumps(data.draw(json_values)).encode()
    else:
        payload = json.dumps(mutate(good, data)).encode()
    # a stateful decoder sees a good message first, so garbage also meets a baseline or alarm state
    decoder(topic, json.dumps(good).encode(), "s", NOW_NS - 10**9)
    result = decoder(topic, payload, "s", NOW_NS)
    assert_well_formed(result)
    if not result.readings:
        assert result.problems or kind == "mutated", "a dropped message must say why"


@pytest.mark.parametrize(("name", "factory", "topic", "good"), CASES, ids=IDS)
@pytest.mark.parametrize("payload", [b"", b"{", b"\xff\xfe", b"[1, 2]", b"null", b"1e999", b"[" * 100_000,
                                     b'{"a": 1' + b"1" * 5000 + b"}"])
def test_malformed_json_is_one_problem(name, factory, topic, good, payload):
    result = factory(DEFAULT_CLOCK)(topic, payload, "s", NOW_NS)
    assert [r for r, _ in result.problems] == ["malformed_json"]
    assert result.readings == []


@pytest.mark.parametrize(("name", "factory", "topic", "good"), CASES, ids=IDS)
@pytest.mark.parametrize(("offset_s", "kept"), [(-86400 + 60, True), (590, True), (-86400 - 60, False), (610, False),
                                                (-56 * 365 * 86400, False)])
def test_device_clock_far_from_ours_is_dropped(name, factory, topic, good, offset_s, kept):
    """Ten minutes ahead or a day behind the gateway clock (the defaults) is as far as a device may be."""
    result = factory(DEFAULT_CLOCK)(topic, json.dumps(good).encode(), "s", NOW_NS - offset_s * 10**9)
    assert bool(result.readings) is kept
    assert [r for r, _ in result.problems] == ([] if kept else ["clock_skew"])


@pytest.mark.parametrize(("name", "factory", "topic", "good"), CASES, ids=IDS)
def test_clock_window_is_configurable(name, factory, topic, good):
    decoder = factory(ClockWindow(max_ahead_s=10, max_behind_s=5))
    behind = decoder(topic, json.dumps(good).encode(), "s", NOW_NS + 20 * 10**9)
    assert behind.problems == [("clock_skew", "device time is 20 s behind the gateway clock (limit 5 s)")]
    ahead = decoder(topic, json.dumps(good).encode(), "s", NOW_NS - 30 * 10**9)
    assert ahead.problems == [("clock_skew", "device time is 30 s ahead of the gateway clock (limit 10 s)")]
    assert not behind.readings and not ahead.readings


@pytest.mark.parametrize(("text", "ns"), [
    ("2026-03-02T08:15:00.120+08:00", 1_772_410_500_120_000_000),
    ("2026-03-02T00:15:00.123456789Z", 1_772_410_500_123_456_789),
    ("2026-03-02 00:15:00+0000", 1_772_410_500_000_000_000),
])
def test_rfc3339(text, ns):
    assert parse_rfc3339_ns(text) == ns


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+05:00", "2026-13-01T00:00:00Z", "2026-03-02T25:00:00Z",
                                  "yesterday", "2026-03-02T00:00:00+99:00"])
def test_rfc3339_rejects_impossible_times_with_value_error(text):
    with pytest.raises(ValueError):
        parse_rfc3339_ns(text)


@pytest.mark.parametrize(("value", "fmt", "ns"), [
    (1_772_410_500, "epoch_s", 1_772_410_500 * 10**9),
    (1_772_410_500.25, "epoch_s", 1_772_410_500_250_000_000),
    (1_772_410_500_120, "epoch_ms", 1_772_410_500_120_000_000),
    (1_772_410_500_123_456_789, "epoch_ns", 1_772_410_500_123_456_789),
])
def test_epoch_formats(value, fmt, ns):
    assert device_time_ns(value, fmt) == ns


@pytest.mark.parametrize(("value", "fmt"), [("1772410500", "epoch_s"), (True, "epoch_ms"), (float("nan"), "epoch_s"),
                                            (-1, "epoch_s"), (10**30, "epoch_ns"), (1e300, "epoch_ms"),
                                            (1772410500, "rfc3339")])
def test_epoch_garbage_is_a_value_error(value, fmt):
    with pytest.raises(ValueError):
        device_time_ns(value, fmt)


def test_every_configurable_decoder_is_wired():
    names = typing.get_args(Subscription.model_fields["decoder"].annotation)
    assert set(names) == set(DECODERS)
