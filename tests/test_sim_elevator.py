"""firmware-sim's elevator monitors: trips that make physical sense, the day's flow, faults by the rules."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from firmware_sim.elevators import (
    DIRECTION_CODES,
    DOOR_CODES,
    REOPEN_CYCLES,
    ElevatorMonitor,
    ElevatorSpec,
    travel_progress,
    travel_time_s,
)
from firmware_sim.scenario import Elevator, Scenario, gateway_config
from firmware_sim.wire import local_midnight_s
from tests.conftest import REPO

DAY = local_midnight_s(1_772_410_500.0)  # 2026-03-02 00:00 local
SPEC = ElevatorSpec("B1-L1", "B1", lowest_floor=-1, top_floor=12, calls_per_hour=60, status_moving_s=2,
                    status_idle_s=20)


def states(monitor: ElevatorMonitor, t0: float, t1: float, step: float = 0.1):
    t = t0
    while t < t1:
        yield t, monitor.state_at(t)
        t += step


def test_travel_profile():
    # a long run reaches the rated speed: distance / speed plus the time lost accelerating and braking
    assert travel_time_s(30.0, 1.5, 0.75) == pytest.approx(30.0 / 1.5 + 1.5 / 0.75)
    # one floor of 3 m at 1.75 m/s never cruises: accelerate half way, brake half way
    assert travel_time_s(3.0, 1.75, 0.8) == pytest.approx(2 * (3.0 / 0.8) ** 0.5)
    total = travel_time_s(30.0, 1.5, 0.75)
    assert travel_progress(30.0, 1.5, 0.75, 0.0) == (0.0, 0.0)
    assert travel_progress(30.0, 1.5, 0.75, total / 2) == pytest.approx((15.0, 1.5))
    assert travel_progress(30.0, 1.5, 0.75, total) == pytest.approx((30.0, 0.0))
    metres = [travel_progress(30.0, 1.5, 0.75, total * i / 50)[0] for i in range(51)]
    assert metres == sorted(metres)


def test_physics_over_a_busy_morning():
    m = ElevatorMonitor(SPEC, seed=3, start_s=DAY + 7 * 3600)
    moving_since = None
    trips = 0
    for t, st in states(m, DAY + 7 * 3600, DAY + 8 * 3600):
        assert SPEC.lowest_floor <= st.floor <= SPEC.top_floor
        assert 0.0 <= st.speed_mps <= SPEC.rated_speed_mps + 1e-9
        if st.direction != "stopped":
            assert st.door == "closed", f"doors {st.door} while moving at {t}"
            assert not st.at_level
            moving_since = moving_since or t
        else:
            assert st.speed_mps == 0.0
            if moving_since is not None:
                trips += 1
                moving_since = None
            if st.door != "closed":
                assert st.at_level, "doors only open at a landing"
        if st.passengers:
            assert st.passengers * 75 <= SPEC.rated_load_kg
    assert trips >= 20


def test_a_trip_takes_the_profiles_time_and_the_doors_dwell():
    m = ElevatorMonitor(SPEC, seed=5, start_s=DAY + 8 * 3600)
    timeline = []  # (t, door, direction, floor)
    for t, st in states(m, DAY + 8 * 3600, DAY + 8 * 3600 + 900, step=0.05):
        key = (st.door, st.direction)
        if not timeline or timeline[-1][1:3] != key:
            timeline.append((t, *key, st.floor))
    # the first entry may be a run already under way when the window opened
    runs = [(a, b) for a, b in zip(timeline[1:], timeline[2:]) if a[2] != "stopped" and b[2] == "stopped"]
    assert runs
    for start, stop in runs:
        floors = abs(stop[3] - start[3])
        if floors == 0:
            continue
        expected = travel_time_s(floors * SPEC.floor_height_m, SPEC.rated_speed_mps, SPEC.acceleration_mps2)
        assert stop[0] - start[0] == pytest.approx(expected, abs=0.11)
    opens = [(a, b) for a, b in zip(timeline, timeline[1:]) if a[1] == "open"]
    assert opens and all(b[0] - a[0] >= SPEC.door_dwell_s - 0.06 for a, b in opens)


def test_people_flow_follows_the_day():
    m = ElevatorMonitor(SPEC, seed=11, start_s=DAY + 2 * 3600)

    def runs_between(h0: float, h1: float) -> tuple[int, int, int]:
        """(occupied runs down, occupied runs up, all runs) started in the hours."""
        down = up = runs = 0
        last = None
        for _, st in states(m, DAY + h0 * 3600, DAY + h1 * 3600, step=0.5):
            if st.direction != "stopped" and last != st.run_count:
                runs += 1
                down += st.passengers > 0 and st.direction == "down"
                up += st.passengers > 0 and st.direction == "up"
            last = st.run_count
        return down, up, runs

    night = runs_between(2, 3)
    morning = runs_between(7, 8)
    evening = runs_between(18, 19)
    assert morning[2] > 3 * night[2] and evening[2] > 3 * night[2]
    assert morning[0] > 2 * morning[1], morning  # residents going down to leave
    assert evening[1] > 2 * evening[0], evening  # and up when they come home


def test_state_is_a_function_of_time_not_of_the_start():
    early = ElevatorMonitor(SPEC, seed=9, start_s=DAY + 6 * 3600)
    late = ElevatorMonitor(SPEC, seed=9, start_s=DAY + 9 * 3600)
    for t, st in states(early, DAY + 9 * 3600, DAY + 9 * 3600 + 120, step=1.0):
        assert late.state_at(t) == st
    other_seed = ElevatorMonitor(SPEC, seed=10, start_s=DAY + 9 * 3600)
    assert [other_seed.state_at(DAY + 9 * 3600 + i) for i in range(120)] != \
        [late.state_at(DAY + 9 * 3600 + i) for i in range(120)]


def poll_all(m: ElevatorMonitor, t0: float, seconds: float, tick: float = 0.2):
    out = []
    for i in range(int(seconds / tick)):
        out += m.poll(t0 + i * tick)
    return out


FAULTY = dataclasses.replace(SPEC, fault_probability=1.0, outside_zone_alarm_s=5, trapped_alarm_s=10, rescue_s=30)


def test_faults_raise_and_clear_by_the_rules():
    m = ElevatorMonitor(FAULTY, seed=1, start_s=DAY + 8 * 3600)
    msgs = poll_all(m, DAY + 8 * 3600, 1800)
    events = [(x.t_ms, x.doc["code"], x.doc["state"]) for x in msgs if x.measurement == "elevator_alarm"]
    codes = {c for _, c, _ in events}
    assert {"STOPPED_OUTSIDE_DOOR_ZONE", "TRAPPED_BETWEEN_FLOORS", "DOOR_REPEATED_REOPEN", "ALARM_BUTTON"} <= codes
    # every raise is cleared later, and never twice in a row
    state: dict[str, str] = {}
    for _, code, s in events:
        assert state.get(code) != s
        state[code] = s
    assert set(state.values()) <= {"cleared", "raised"}
    # trapped: the car stood between floors with people inside for trapped_alarm_s before the alarm
    raised = [t for t, c, s in events if c == "TRAPPED_BETWEEN_FLOORS" and s == "raised"]
    zone = [t for t, c, s in events if c == "STOPPED_OUTSIDE_DOOR_ZONE" and s == "raised"]
    assert raised and [t - z for t, z in zip(raised, zone)] == [5000] * len(raised)
    for t in raised:
        stuck = [x for x in msgs if x.measurement == "elevator" and x.t_ms >= t][0].doc
        assert (stuck["direction"], stuck["at_level"], stuck["occupied"], stuck["door"]) == \
            ("stopped", False, True, "closed")
    # the status lists exactly the faults raised and not yet cleared
    active: set[str] = set()
    for x in msgs:
        if x.measurement == "elevator_alarm":
            (active.add if x.doc["state"] == "raised" else active.discard)(x.doc["code"])
        else:
            assert set(x.doc["active_faults"]) == active
            assert x.values["faults_active"] == len(active)


def test_door_reopen_alarm_comes_after_more_than_eleven_toggles():
    m = ElevatorMonitor(FAULTY, seed=1, start_s=DAY + 8 * 3600)
    msgs = poll_all(m, DAY + 8 * 3600, 1800, tick=0.1)
    doors = [(x.t_ms, x.doc["door"]) for x in msgs if x.measurement == "elevator"]
    raised = [x.t_ms for x in msgs if x.measurement == "elevator_alarm" and x.doc["code"] == "DOOR_REPEATED_REOPEN"
              and x.doc["state"] == "raised"]
    assert raised
    for t in raised:
        window = [d for ts, d in doors if t - 120_000 <= ts <= t]
        toggles = sum(1 for a, b in zip(window, window[1:]) if a != b and b in ("opening", "closing"))
        assert toggles >= 2 * REOPEN_CYCLES - 1 > 10


def test_status_on_change_and_at_least_every_period():
    m = ElevatorMonitor(SPEC, seed=2, start_s=DAY + 18 * 3600)
    msgs = [x for x in poll_all(m, DAY + 18 * 3600, 600) if x.measurement == "elevator"]
    for a, b in zip(msgs, msgs[1:]):
        period = SPEC.status_moving_s if a.doc["direction"] != "stopped" else SPEC.status_idle_s
        assert b.t_ms - a.t_ms <= period * 1000 + 200
    changes = sum(1 for a, b in zip(msgs, msgs[1:]) if (a.doc["floor"], a.doc["door"]) != (b.doc["floor"], b.doc["door"]))
    assert changes > 20


def test_a_status_carries_what_the_gateway_should_store():
    m = ElevatorMonitor(SPEC, seed=2, start_s=DAY + 18 * 3600)
    [status] = [x for x in m.poll(DAY + 18 * 3600) if x.measurement == "elevator"]
    doc, v = status.doc, status.values
    assert status.topic == "elevators/B1/B1-L1/status"
    assert doc["ts"].endswith("+08:00") and status.t_ms == int((DAY + 18 * 3600) * 1000)
    assert v["floor"] == doc["floor"] and v["speed"] == doc["speed_mps"] and v["load"] == doc["load_pct"]
    assert v["direction"] == DIRECTION_CODES[doc["direction"]] and v["door_state"] == DOOR_CODES[doc["door"]]
    assert v["run_count"] == doc["run_count"] >= SPEC.start_run_count
    record = status.served_record()
    assert record["t_ns"] == status.t_ms * 1_000_000 and record["measurement"] == "elevator"
    assert json.loads(status.payload()) == doc


def test_scenario_sections_mirror_the_specs_and_emit_the_subscription():
    assert set(Elevator.model_fields) == {f.name for f in dataclasses.fields(ElevatorSpec)}
    with pytest.raises(ValueError, match="lowest_floor <= lobby_floor < top_floor"):
        Elevator(elevator_id="L", building="B", lowest_floor=2, lobby_floor=1)
    scenario = Scenario.model_validate({"mqtt": {"port": 1883}, "elevators": [{"elevator_id": "L1", "building": "B9"}]})
    cfg = gateway_config(scenario, "http://127.0.0.1:8086", "db", "/tmp/x")
    assert cfg["subscriptions"] == [{"topic": "elevators/+/+/+", "decoder": "elevator", "qos": 1}]
    assert cfg["buildings"] == [{"id": "B9"}]


def test_firmware_sim_never_imports_the_gateway():
    code = ("import sys, firmware_sim.runner, firmware_sim.cli; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gateway', 'pipelines', 'drivers')); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
