"""Elevator monitors: status into the elevator measurement, faults into elevator_alarm points."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from drivers.mqtt.elevator import FAULT_CODES, ElevatorDecoder

S = 1_000_000_000
T0 = 1_772_410_500 * S  # 2026-03-02T08:15:00+08:00
TOPIC = "elevators/B1/B1-L1/status"


def stamp(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns // S, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{t_ns % S // 1_000_000:03d}Z"


def status(t_ns: int = T0, **changes: object) -> bytes:
    doc = {"type": "status", "elevator_id": "B1-L1", "building": "B1", "ts": stamp(t_ns), "direction": "up",
           "floor": 7, "at_level": False, "door": "closed", "occupied": True, "speed_mps": 1.62, "load_pct": 22.5,
           "mode": "normal", "power": "mains", "run_count": 48211, "active_faults": []}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def event(code: str, state: str, t_ns: int = T0, **changes: object) -> bytes:
    doc = {"type": "event", "event_id": "e-1", "elevator_id": "B1-L1", "building": "B1", "ts": stamp(t_ns),
           "code": code, "state": state, "floor": 7, "direction": "stopped", "speed_mps": 0.0, "occupied": True,
           "detail": "car stopped between floors 7 and 8"}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def decode(decoder: ElevatorDecoder, payload: bytes, now: int = T0):
    result = decoder(TOPIC, payload, "site", now)
    return result, [r for r, _ in result.problems]


def alarms(result) -> list[tuple[str, float, int]]:
    return [(r.tags["code"], r.fields["active"], r.ts_ns) for r in result.readings if r.measurement == "elevator_alarm"]


def test_status_fields_follow_the_schema_encodings():
    result, problems = decode(ElevatorDecoder(), status())
    assert problems == []
    assert result.device == "B1-L1"
    [r] = result.readings
    assert r.measurement == "elevator"
    assert r.tags == {"site": "site", "device": "B1-L1", "building": "B1"}
    assert r.ts_ns == T0
    assert r.fields == {"floor": 7.0, "direction": 1.0, "moving": 1.0, "in_door_zone": 0.0, "door_state": 0.0,
                        "occupied": 1.0, "speed": 1.62, "load": 22.5, "mode": 0.0, "run_count": 48211.0,
                        "faults_active": 0.0}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"direction": "down"}, {"direction": 2.0, "moving": 1.0}),
    ({"direction": "stopped"}, {"direction": 0.0, "moving": 0.0}),
    ({"direction": 2}, {"direction": 2.0, "moving": 1.0}),  # the numeric encoding of most firmware
    ({"door": "opening"}, {"door_state": 3.0}),
    ({"door": 1}, {"door_state": 1.0}),
    ({"floor": -2}, {"floor": -2.0}),
    ({"mode": "inspection"}, {"mode": 1.0}),
    ({"at_level": True}, {"in_door_zone": 1.0}),
    ({"occupied": 0}, {"occupied": 0.0}),
])
def test_enumerations(changes, expected):
    result, problems = decode(ElevatorDecoder(), status(**changes))
    assert problems == []
    fields = result.readings[0].fields
    assert {k: fields[k] for k in expected} == expected


@pytest.mark.parametrize(("changes", "problem", "missing"), [
    ({"floor": 7.5}, "wrong_type", "floor"),
    ({"floor": "7"}, "wrong_type", "floor"),
    ({"floor": 250}, "out_of_range", "floor"),
    ({"direction": "sideways"}, "out_of_range", "direction"),
    ({"direction": 5}, "out_of_range", "direction"),
    ({"direction": [1]}, "wrong_type", "direction"),
    ({"door": "ajar"}, "out_of_range", "door_state"),
    ({"speed_mps": -1}, "out_of_range", "speed"),
    ({"speed_mps": 99}, "out_of_range", "speed"),
    ({"speed_mps": "1.6"}, "wrong_type", "speed"),
    ({"load_pct": 250}, "out_of_range", "load"),
    ({"occupied": "yes"}, "wrong_type", "occupied"),
    ({"run_count": -5}, "out_of_range", "run_count"),
    ({"active_faults": "TRAPPED"}, "wrong_type", "faults_active"),
])
def test_a_bad_value_is_reported_and_the_rest_kept(changes, problem, missing):
    result, problems = decode(ElevatorDecoder(), status(**changes))
    assert problems == [problem]
    fields = result.readings[0].fields
    assert missing not in fields
    assert len(fields) >= 8


def test_unknown_and_absent_values_are_not_problems():
    result, problems = decode(ElevatorDecoder(), status(door="unknown", occupied=None, mode="unknown", speed_mps=...))
    assert problems == []
    fields = result.readings[0].fields
    assert not {"door_state", "occupied", "mode", "speed"} & set(fields)


@pytest.mark.parametrize(("payload", "problem"), [
    (json.dumps({"type": "status", "floor": 3}).encode(), "missing_device"),
    (json.dumps({"type": "login", "elevator_id": "B1-L1"}).encode(), "unsupported_event"),
    (status(ts="yesterday"), "bad_timestamp"),
    (status(T0 - 2 * 86400 * S), "clock_skew"),
    (event("TRAPPED", "raised"), "unknown_alarm_code"),
    (event("TRAPPED_AT_LEVEL", "on"), "out_of_range"),
    (event(..., "raised"), "missing_field"),
    (event(42, "raised"), "wrong_type"),
])
def test_unusable_messages(payload, problem):
    result, problems = decode(ElevatorDecoder(), payload)
    assert problems == [problem]
    assert result.readings == []


def test_raise_and_clear_events_become_alarm_points():
    d = ElevatorDecoder()
    result, problems = decode(d, event("TRAPPED_BETWEEN_FLOORS", "raised", T0))
    assert problems == []
    [r] = result.readings
    assert r.measurement == "elevator_alarm"
    assert r.tags == {"site": "site", "device": "B1-L1", "building": "B1", "code": "TRAPPED_BETWEEN_FLOORS"}
    assert r.fields == {"active": 1.0, "floor": 7.0, "occupied": 1.0}
    # the status that follows lists the fault: nothing new to write about the alarm
    result, _ = decode(d, status(T0 + S, active_faults=["TRAPPED_BETWEEN_FLOORS"], direction="stopped"), T0 + S)
    assert alarms(result) == []
    assert result.readings[0].fields["faults_active"] == 1.0
    result, _ = decode(d, event("TRAPPED_BETWEEN_FLOORS", "cleared", T0 + 2 * S, occupied=False), T0 + 2 * S)
    assert alarms(result) == [("TRAPPED_BETWEEN_FLOORS", 0.0, T0 + 2 * S)]
    assert result.readings[0].fields["occupied"] == 0.0
    result, _ = decode(d, status(T0 + 3 * S), T0 + 3 * S)
    assert alarms(result) == []


def test_status_recovers_alarms_whose_events_were_lost():
    d = ElevatorDecoder()
    # the gateway started during a fault: the status is the first it hears of it
    result, problems = decode(d, status(T0, active_faults=["DOOR_OPEN_TOO_LONG", "ALARM_BUTTON"]))
    assert problems == []
    assert sorted(alarms(result)) == [("ALARM_BUTTON", 1.0, T0), ("DOOR_OPEN_TOO_LONG", 1.0, T0)]
    # the clear event was lost: the next status without the fault clears it
    result, _ = decode(d, status(T0 + 5 * S, active_faults=["DOOR_OPEN_TOO_LONG"]), T0 + 5 * S)
    assert alarms(result) == [("ALARM_BUTTON", 0.0, T0 + 5 * S)]
    alarm = next(r for r in result.readings if r.measurement == "elevator_alarm")
    assert alarm.fields == {"active": 0.0, "floor": 7.0, "occupied": 1.0}


def test_a_late_status_does_not_undo_a_newer_event():
    d = ElevatorDecoder()
    decode(d, event("ALARM_BUTTON", "raised", T0 + 10 * S), T0 + 10 * S)
    result, _ = decode(d, status(T0 + 5 * S, active_faults=[]), T0 + 11 * S)  # redelivered after the event
    assert alarms(result) == []
    result, _ = decode(d, status(T0 + 12 * S, active_faults=["ALARM_BUTTON"]), T0 + 12 * S)
    assert alarms(result) == []


def test_unknown_codes_in_the_fault_list_are_reported_and_the_known_kept():
    result, problems = decode(ElevatorDecoder(), status(active_faults=["OVERSPEED", "WARP_DRIVE", 7]))
    assert problems == ["unknown_alarm_code", "unknown_alarm_code"]
    assert alarms(result) == [("OVERSPEED", 1.0, T0)]
    assert next(r for r in result.readings if r.measurement == "elevator").fields["faults_active"] == 1.0


def test_alarm_state_is_per_car():
    d = ElevatorDecoder()
    decode(d, event("POWER_FAILURE", "raised"))
    other = json.loads(status(active_faults=[]))
    other["elevator_id"] = "B1-L2"
    result, _ = decode(d, json.dumps(other).encode())
    assert alarms(result) == []
    result, _ = decode(d, status(T0 + S, active_faults=["POWER_FAILURE"]), T0 + S)
    assert alarms(result) == []


def test_the_catalogue_is_the_references_proposal():
    assert len(FAULT_CODES) == 17
    assert {"TRAPPED_AT_LEVEL", "TRAPPED_BETWEEN_FLOORS", "STOPPED_OUTSIDE_DOOR_ZONE", "DOOR_REPEATED_REOPEN",
            "ALARM_BUTTON"} <= FAULT_CODES
