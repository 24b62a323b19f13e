"""The generic JSON decoder: the mapping in the subscription, checked at load, applied per message."""
from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mqtt.json_mapping import FieldSpec, JsonDecoder, JsonMapping, lookup, split_path
from gateway.config import ConfigError, parse_config
from gateway.runtime import DECODERS

NOW_NS = 1_772_410_500_000_000_000

BASE = """
[gateway]
site = "test-site"

[mqtt]
host = "127.0.0.1"

[[sinks]]
type = "influxdb1"
name = "local"
url = "http://127.0.0.1:8086"
database = "community"

[[subscriptions]]
topic = "vendor/lifts/+/state"
decoder = "json"

[subscriptions.mapping]
measurement = "elevator"
device_from_topic = 2
tags = { building = "B1" }
time_path = "ts"
time_format = "epoch_ms"
fields.floor = { path = "car.floor" }
fields.speed = { path = "car.speed_mms", scale = 0.001, unit = "m/s", min = 0, max = 20 }
fields.door_state = { path = "car.door" }
"""


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(textwrap.dedent(text), known_profiles=set())
    return [str(i) for i in exc.value.issues]


def decoder_from_config(text: str = BASE) -> JsonDecoder:
    cfg = parse_config(text, known_profiles=set())
    return DECODERS[cfg.subscriptions[0].decoder](cfg.subscriptions[0])


def test_mapping_from_config_decodes_a_message():
    decode = decoder_from_config()
    payload = json.dumps({"ts": 1_772_410_500_120, "car": {"floor": -1, "speed_mms": 1500, "door": 1}}).encode()
    result = decode("vendor/lifts/lift-7/state", payload, "test-site", NOW_NS)
    assert result.problems == []
    assert result.device == "lift-7"
    [r] = result.readings
    assert r.measurement == "elevator"
    assert r.tags == {"site": "test-site", "device": "lift-7", "building": "B1"}
    assert r.ts_ns == 1_772_410_500_120_000_000
    assert r.fields == {"floor": -1.0, "speed": 1.5, "door_state": 1.0}


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('measurement = "elevator"', 'measurement = "lift"',
     "subscriptions[0].mapping.measurement: unknown measurement 'lift' (known: "),
    ('measurement = "elevator"', 'measurement = "device_health"',
     "subscriptions[0].mapping.measurement: unknown measurement 'device_health'"),
    ("fields.floor = {", "fields.storey = {",
     "subscriptions[0].mapping.fields.storey: measurement 'elevator' has no field 'storey'"),
    ('unit = "m/s"', 'unit = "km/h"',
     "subscriptions[0].mapping.fields.speed.unit: unit 'km/h' differs from the schema's 'm/s'; convert with scale"),
    ("scale = 0.001", 'scale = "fast"', "subscriptions[0].mapping.fields.speed.scale: Input should be a valid number"),
    ("scale = 0.001", "scale = inf", "subscriptions[0].mapping.fields.speed.scale: Input should be a finite number"),
    ("min = 0, max = 20", "min = 20, max = 0", "subscriptions[0].mapping.fields.speed.max: max is below min"),
    ('path = "car.floor"', 'path = "car..floor"', "subscriptions[0].mapping.fields.floor.path: String should match pattern"),
    ('path = "car.floor"', 'paht = "car.floor"', "subscriptions[0].mapping.fields.floor.paht: unknown key"),
    ('tags = { building = "B1" }', 'tags = { model = "x" }',
     "subscriptions[0].mapping.tags.model: measurement 'elevator' has no tag 'model' the mapping may set "
     "(settable: building)"),
    ('tags = { building = "B1" }', 'tags = { device = "x" }', "subscriptions[0].mapping.tags.device: measurement"),
    ('tags = { building = "B1" }', 'tags = { building = "B1" }\ntag_paths = { building = "meta.b" }',
     "subscriptions[0].mapping.tag_paths.building: tag is also given in tags"),
    ("device_from_topic = 2", 'device_path = "meta.id"\ndevice_from_topic = 2',
     "subscriptions[0].mapping: give exactly one of device_from_topic or device_path (found 2)"),
    ("device_from_topic = 2", "",
     "subscriptions[0].mapping: give exactly one of device_from_topic or device_path (found 0)"),
    ("device_from_topic = 2", "device_from_topic = 4",
     "subscriptions[0].mapping.device_from_topic: topic 'vendor/lifts/+/state' has 4 levels (0..3)"),
    ("device_from_topic = 2", "device_from_topic = -1",
     "subscriptions[0].mapping.device_from_topic: Input should be greater than or equal to 0"),
    ('time_path = "ts"\n', "", "subscriptions[0].mapping.time_format: time_format needs a time_path"),
    ('time_format = "epoch_ms"', 'time_format = "unix"', "subscriptions[0].mapping.time_format: Input should be "),
    ('decoder = "json"', 'decoder = "xml"', "subscriptions[0].decoder: Input should be 'chirpstack_parking', 'json', "),
    ('decoder = "json"', 'decoder = "elevator"', "subscriptions[0].mapping: only the json decoder takes a mapping"),
    ("fields.floor = { path = \"car.floor\" }\nfields.speed = { path = \"car.speed_mms\", scale = 0.001, unit = \"m/s\", "
     "min = 0, max = 20 }\nfields.door_state = { path = \"car.door\" }\n", "fields = {}\n",
     "subscriptions[0].mapping.fields: Dictionary should have at least 1 item"),
])
def test_mapping_errors_name_the_exact_key(old, new, expected):
    assert old in BASE
    found = issues_of(BASE.replace(old, new, 1))
    assert any(i.startswith(expected) for i in found), found


def test_json_decoder_needs_a_mapping():
    text = BASE[: BASE.index("[subscriptions.mapping]")]
    assert "subscriptions[0].mapping: the json decoder needs a [subscriptions.mapping] table" in issues_of(text)


def test_clock_limits_are_validated():
    found = issues_of(BASE.replace('decoder = "json"', 'decoder = "json"\nmax_ahead_s = 0\nmax_behind_s = 1e9'))
    assert "subscriptions[0].max_ahead_s: Input should be greater than 0" in found
    assert "subscriptions[0].max_behind_s: Input should be less than or equal to 2592000" in found


def test_paths_index_arrays_and_numeric_keys():
    doc = {"rx": [{"rssi": -70}, {"rssi": -80}], "m": {"1": "one"}}
    assert lookup(doc, split_path("rx.1.rssi")) == -80
    assert lookup(doc, split_path("m.1")) == "one"
    assert lookup(doc, split_path("rx.5.rssi")) is lookup(doc, split_path("nope"))


MAPPING = JsonMapping(
    "elevator",
    {"floor": FieldSpec("car.floor"), "speed": FieldSpec("car.speed", 1.0, 0.0, 10.0), "occupied": FieldSpec("car.busy")},
    device_path="id", tag_paths={"building": "where"}, time_path="t", time_format="rfc3339",
)


def decode(doc: object) -> tuple[list[str], dict | None, dict | None]:
    result = JsonDecoder(MAPPING)("t/x", json.dumps(doc).encode(), "s", NOW_NS)
    reading = result.readings[0] if result.readings else None
    return ([reason for reason, _ in result.problems], reading and reading.fields, reading and reading.tags)


GOOD = {"id": "L1", "where": "B1", "t": "2026-03-02T08:15:00+08:00", "car": {"floor": 3, "speed": 1.0, "busy": True}}


def with_(path: str, value: object) -> dict:
    doc = json.loads(json.dumps(GOOD))
    node = doc
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(("doc", "reasons", "fields"), [
    (GOOD, [], {"floor": 3.0, "speed": 1.0, "occupied": 1.0}),
    (with_("car.speed", "fast"), ["wrong_type"], {"floor": 3.0, "occupied": 1.0}),
    (with_("car.speed", 11.0), ["out_of_range"], {"floor": 3.0, "occupied": 1.0}),
    (with_("car.speed", -0.5), ["out_of_range"], {"floor": 3.0, "occupied": 1.0}),
    (with_("car.floor", [3]), ["wrong_type"], {"speed": 1.0, "occupied": 1.0}),
    (with_("car.floor", 10**400), ["out_of_range"], {"speed": 1.0, "occupied": 1.0}),
    (with_("car.speed", ...), [], {"floor": 3.0, "occupied": 1.0}),  # partial messages are normal
    (with_("car.floor", None), [], {"speed": 1.0, "occupied": 1.0}),
    ({"id": "L1", "t": GOOD["t"], "car": {}}, ["missing_field", "no_fields"], None),
    ({**GOOD, "car": {}}, ["no_fields"], None),
    (with_("id", ...), ["missing_device"], None),
    (with_("id", {"x": 1}), ["missing_device"], None),
    (with_("t", ...), ["bad_timestamp"], None),
    (with_("t", 1772410500), ["bad_timestamp"], None),
    (with_("t", "2026-03-02T09:15:00+08:00"), ["clock_skew"], None),
])
def test_each_bad_value_is_a_problem_and_good_fields_are_kept(doc, reasons, fields):
    found, kept, _ = decode(doc)
    assert found == reasons
    assert kept == fields


def test_a_bad_tag_is_reported_and_left_out():
    found, kept, tags = decode(with_("where", 3.5))
    assert found == ["wrong_type"] and kept
    assert tags == {"site": "s", "device": "L1"}
    found, _, tags = decode(with_("where", 12))
    assert found == [] and tags["building"] == "12"


def test_device_from_topic_counts_unparseable_payloads_against_the_device():
    decoder = JsonDecoder(JsonMapping("elevator", {"floor": FieldSpec("f")}, device_from_topic=1))
    result = decoder("lifts/L9/state", b"{not json", "s", NOW_NS)
    assert result.device == "L9" and [r for r, _ in result.problems] == ["malformed_json"]
    result = decoder("lifts", b'{"f": 1}', "s", NOW_NS)
    assert [r for r, _ in result.problems] == ["missing_device"]


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=40), level=st.integers(0, 8), payload=st.binary(max_size=40))
def test_any_topic_and_payload_never_raise(topic, level, payload):
    decoder = JsonDecoder(JsonMapping("elevator", {"floor": FieldSpec("f")}, device_from_topic=level))
    result = decoder(topic, payload, "s", NOW_NS)
    assert result.problems or result.readings


def test_without_a_time_path_the_receive_time_stamps_the_reading():
    decoder = JsonDecoder(JsonMapping("elevator", {"floor": FieldSpec("f")}, device_from_topic=0))
    [r] = decoder("L1", b'{"f": 2}', "s", NOW_NS).readings
    assert r.ts_ns == NOW_NS
