"""firmware-sim's people-counting cameras: cumulative totals, the daily reset, reboots and the day's flow."""
from __future__ import annotations

import dataclasses
import json

import pytest

from firmware_sim.cameras import CameraSpec, PeopleCountingCamera, flow_per_min
from firmware_sim.scenario import Camera, Scenario, gateway_config
from firmware_sim.wire import local_midnight_s

DAY = local_midnight_s(1_772_410_500.0)  # 2026-03-02 00:00 local
SPEC = CameraSpec("cam-north-gate", "north-gate", report_s=60, peak_per_min=6, slot_s=10)


def test_totals_only_grow_during_the_day_and_reset_at_local_midnight():
    cam = PeopleCountingCamera(SPEC, seed=4)
    previous = (0, 0)
    for minute in range(0, 24 * 60, 7):
        totals = cam.totals_at(DAY + minute * 60)
        assert totals[0] >= previous[0] and totals[1] >= previous[1]
        previous = totals
    before = cam.totals_at(DAY + 86400 - 0.001)
    after = cam.totals_at(DAY + 86400 + 0.001)
    assert before[0] > 500 and before[1] > 500
    assert after == (0, 0)
    assert cam.totals_at(DAY + 86400 + 3600) < (before[0] // 10, before[1] // 10)


def test_a_day_has_the_residents_rhythm():
    cam = PeopleCountingCamera(SPEC, seed=4)

    def counted(h0: float, h1: float) -> tuple[int, int]:
        a, b = cam.totals_at(DAY + h0 * 3600), cam.totals_at(DAY + h1 * 3600)
        return b[0] - a[0], b[1] - a[1]

    night, morning, evening = counted(2, 4), counted(7, 9), counted(17.5, 19.5)
    assert morning[1] > 2 * morning[0]  # leaving for work and school
    assert evening[0] > 2 * evening[1]  # coming home
    assert min(morning[1], evening[0]) > 10 * max(night)
    day_in, day_out = cam.totals_at(DAY + 86399.9)
    assert abs(day_in - day_out) < 0.1 * day_in  # the gate's entries and exits nearly balance over a day
    assert flow_per_min(7.6, 6)[1] == pytest.approx(6, rel=0.1)


def test_deterministic_for_a_seed():
    a, b, c = (PeopleCountingCamera(SPEC, seed) for seed in (4, 4, 5))
    times = [DAY + h * 3600 for h in (6, 8.5, 12, 19, 23)]
    assert [a.totals_at(t) for t in times] == [b.totals_at(t) for t in times]
    assert [a.totals_at(t) for t in times] != [c.totals_at(t) for t in times]
    # asking out of order gives the same answers as asking in order
    assert [a.totals_at(t) for t in reversed(times)] == [b.totals_at(t) for t in reversed(times)]


def test_a_reboot_loses_the_totals():
    cam = PeopleCountingCamera(dataclasses.replace(SPEC, reboot_interval_s=600, slot_s=1), seed=4)
    t0 = DAY + 18 * 3600
    drops = 0
    previous = cam.totals_at(t0)
    for s in range(1, 3600, 5):
        totals = cam.totals_at(t0 + s)
        if totals[0] < previous[0] or totals[1] < previous[1]:
            drops += 1
            reset = cam.last_reset_s(t0 + s)
            assert t0 + s - 5 < reset <= t0 + s
        previous = totals
    assert drops == 6


def test_reports_once_per_period_in_the_hikvision_shape():
    cam = PeopleCountingCamera(SPEC, seed=4)
    t0 = DAY + 8 * 3600
    msgs = [m for i in range(0, 600 * 4) for m in cam.poll(t0 + i * 0.25)]
    assert len(msgs) == 10
    m = msgs[3]
    doc = json.loads(m.payload())
    assert m.topic == "cameras/cam-north-gate/peopleCounting"
    assert doc["eventType"] == "PeopleCounting" and doc["channelName"] == "north-gate"
    assert doc["deviceID"] == "cam-north-gate" and doc["macAddress"].startswith("44:19:b6:")
    assert doc["dateTime"] == "2026-03-02T08:03:00.000+08:00"
    assert doc["peopleCounting"]["statisticalMethods"] == "realTime"
    assert (doc["peopleCounting"]["enter"], doc["peopleCounting"]["exit"]) == cam.totals_at(t0 + 180)
    assert m.served_record() == {
        "t_ns": int((t0 + 180) * 1e9), "kind": "mqtt", "device": "cam-north-gate", "topic": m.topic,
        "measurement": "people_counter", "tags": {"gate": "north-gate"},
        "values": {"in_total": float(doc["peopleCounting"]["enter"]), "out_total": float(doc["peopleCounting"]["exit"])},
    }
    assert [x.doc["activePostCount"] for x in msgs] == list(range(1, 11))


def test_scenario_sections_mirror_the_specs_and_emit_the_subscription():
    assert set(Camera.model_fields) == {f.name for f in dataclasses.fields(CameraSpec)}
    with pytest.raises(ValueError, match="at most 300 people per slot"):
        Camera(device="c", gate="g", peak_per_min=600, slot_s=60)
    scenario = Scenario.model_validate({"mqtt": {"port": 1883}, "cameras": [{"device": "c1", "gate": "g"}]})
    cfg = gateway_config(scenario, "http://127.0.0.1:8086", "db", "/tmp/x")
    assert cfg["subscriptions"] == [{"topic": "cameras/+/peopleCounting", "decoder": "people_counter", "qos": 1}]
    assert cfg["mqtt"]["port"] == 1883
