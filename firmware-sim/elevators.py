"""Elevator monitors on residential lifts, publishing car status and fault events over MQTT.

The car runs trips that make physical sense: it answers one call at a time (travelling empty to
the caller's floor if needed), the doors open, dwell while people step in and close before the car
moves, travel time follows a trapezoidal speed profile (acceleration, rated speed, floor height),
and the doors open again at the destination. Calls follow the residents' day: people go down to
the lobby or the garage in the morning and come home in the evening, in bigger groups at the peaks.

Faults follow the detection rules open-source monitors implement (project reference
elevator-iot.md, section 3.1): a car stopped between floors raises STOPPED_OUTSIDE_DOOR_ZONE
and, with someone inside, TRAPPED_BETWEEN_FLOORS after their timers; a door that keeps reopening
raises DOOR_REPEATED_REOPEN after more than 11 toggles; a passenger can press the alarm button.
Faults clear the way [R1] clears them: at level, the door opens and then closes.

Faults can also be forced at a given time (``ForcedFault``, from a scenario's ``[[faults]]``): the
car is planned to be stuck between floors with people inside (``trapped_passenger``) or to creep to
the next landing with its door open (``door_open_while_moving``) exactly then, the idle wait before
being shortened so that the trip leading to the fault starts in time.

Deterministic for a seed: the car's day is planned from local midnight with hashed draws, so the
state at a given time does not depend on when the simulator started.
"""
from __future__ import annotations

import bisect
import math
import uuid
from collections import deque
from dataclasses import dataclass

from firmware_sim.loads import _bump
from firmware_sim.wire import MqttMessage, local_hour, local_midnight_s, local_rfc3339_ms, uniform01

TOPIC_ROOT = "elevators"  # elevators/<building>/<elevator_id>/status | event
DIRECTION_CODES = {"stopped": 0, "up": 1, "down": 2}
DOOR_CODES = {"closed": 0, "open": 1, "closing": 2, "opening": 3}
MODE_CODES = {"normal": 0, "inspection": 1, "maintenance": 2, "fire": 3, "out_of_service": 4}
PASSENGER_KG = 75.0  # design mass per person in lift standards (EN 81-20 rates cars by it)
RESCUE_SPEED_MPS = 0.3  # a technician moves the car by hand control, slowly, to the nearest landing
REOPEN_CYCLES = 6  # six reopenings are twelve door toggles: more than the 11 that raise the alarm
REOPEN_STROKE = 0.4  # a blocked door turns back about 40 % into its closing stroke
DWELL_PER_PASSENGER_S = 0.8
MAX_IDLE_S = 1800.0  # a call at least every half hour, so a quiet night does not skip the morning rise
MAX_GROUP = 6  # the most passengers _call boards at once
FORCED_KINDS = ("trapped_passenger", "door_open_while_moving")


@dataclass(frozen=True, slots=True)
class ElevatorSpec:
    elevator_id: str
    building: str
    lowest_floor: int = -1
    top_floor: int = 18
    lobby_floor: int = 1
    floor_height_m: float = 3.0
    rated_speed_mps: float = 1.75
    acceleration_mps2: float = 0.8
    rated_load_kg: float = 1000.0
    door_open_s: float = 2.5
    door_dwell_s: float = 3.0
    door_close_s: float = 3.0
    calls_per_hour: float = 40.0  # at the busiest hour; the day's curve scales it
    status_moving_s: float = 5.0
    status_idle_s: float = 60.0
    fault_probability: float = 0.001  # per trip
    outside_zone_alarm_s: float = 90.0  # [R1] fires after ~90 s; [R2] asks for at least 45 s
    trapped_alarm_s: float = 180.0  # [R1]: 3 min with a passenger detected
    rescue_s: float = 1200.0  # from the stop until the car is brought to a landing
    start_run_count: int = 0


@dataclass(slots=True)
class Segment:
    """A stretch of the car's timeline in which one thing happens."""

    kind: str  # idle | opening | open | closing | travel | stuck
    t0: float
    t1: float
    pos0: float  # in floors; fractional while between landings
    pos1: float
    passengers: int = 0
    speed_mps: float = 0.0  # travel: the cruising speed of the profile
    mode: str = "normal"
    runs: int = 0  # the run counter during this segment
    door: str = "closed"  # travel and stuck: the door (open only in a door_open_while_moving fault)


@dataclass(frozen=True, slots=True)
class CarState:
    floor: int
    direction: str
    door: str
    at_level: bool
    passengers: int
    speed_mps: float
    mode: str
    run_count: int


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    t_s: float
    code: str
    state: str  # raised | cleared
    detail: str


@dataclass(frozen=True, slots=True)
class ForcedFault:
    """A fault planned into the car's day at a simulated time (``kind`` one of FORCED_KINDS)."""

    kind: str
    start_s: float
    duration_s: float


def creep_speed_mps(distance_m: float, duration_s: float, accel_mps2: float) -> float:
    """The cruising speed that covers ``distance_m`` in exactly ``duration_s`` (a slow creep).

    From travel_time_s: duration = distance / v + v / a, the smaller root; needs the duration to be
    at least the accelerate-then-brake minimum 2 * sqrt(distance / a).
    """
    disc = (accel_mps2 * duration_s) ** 2 - 4 * accel_mps2 * distance_m
    if disc < 0:
        raise ValueError(f"{distance_m} m cannot take {duration_s} s at {accel_mps2} m/s^2: too short")
    return (accel_mps2 * duration_s - math.sqrt(disc)) / 2


def travel_time_s(distance_m: float, speed_mps: float, accel_mps2: float) -> float:
    """Trapezoidal profile: accelerate, cruise, brake; short hops never reach the cruising speed."""
    if distance_m <= speed_mps**2 / accel_mps2:
        return 2.0 * math.sqrt(distance_m / accel_mps2)
    return distance_m / speed_mps + speed_mps / accel_mps2


def travel_progress(distance_m: float, speed_mps: float, accel_mps2: float, dt: float) -> tuple[float, float]:
    """(metres covered, current speed) dt seconds into a trip of distance_m."""
    total = travel_time_s(distance_m, speed_mps, accel_mps2)
    dt = min(max(dt, 0.0), total)
    v = min(speed_mps, accel_mps2 * total / 2)  # the peak speed actually reached
    ta = v / accel_mps2
    if dt < ta:
        return 0.5 * accel_mps2 * dt * dt, accel_mps2 * dt
    if dt <= total - ta:
        return 0.5 * accel_mps2 * ta * ta + v * (dt - ta), v
    left = total - dt
    return distance_m - 0.5 * accel_mps2 * left * left, accel_mps2 * left


class ElevatorMonitor:
    def __init__(self, spec: ElevatorSpec, seed: int, start_s: float, forced: tuple[ForcedFault, ...] = ()) -> None:
        self.spec = spec
        self.seed = seed
        self._trips = 0
        self._pending: list[AlarmEvent] = []
        self.active: set[str] = set()
        anchor = local_midnight_s(start_s)
        for f in forced:
            if f.kind not in FORCED_KINDS:
                raise ValueError(f"unknown forced elevator fault {f.kind!r} (known: {', '.join(FORCED_KINDS)})")
        self._forced: deque[ForcedFault] = deque(sorted((f for f in forced if f.start_s >= anchor),
                                                        key=lambda f: f.start_s))
        self._forced_next: ForcedFault | None = None  # the idle now being planned ends in this fault's trip
        self.forced_windows: dict[ForcedFault, tuple[float, float]] = {}  # as planned: the car's real window
        self._max_trip_s = self._longest_trip_s()
        lobby = float(spec.lobby_floor)
        # an empty segment that carries the run count; the day's first wait follows it
        self._segments: deque[Segment] = deque([Segment("idle", anchor, anchor, lobby, lobby,
                                                        runs=spec.start_run_count)])
        self._append_idle(anchor, lobby)
        # the morning so far happened before this monitor was switched on: live it silently
        self._plan_until(start_s)
        while self._pending and self._pending[0].t_s <= start_s:
            self._apply(self._pending.pop(0))
        self._announced = False
        self._last_status_s = -math.inf
        self._last_coarse: tuple | None = None

    # the plan ------------------------------------------------------------------------------------
    def _h(self, *parts: object) -> float:
        return uniform01(self.seed, self.spec.elevator_id, *parts)

    def _flow(self, t_s: float) -> float:
        """Share of the busiest hour's call rate at t: morning and evening peaks, a lunch bump."""
        h = local_hour(t_s)
        return 0.08 + 0.92 * max(_bump(h, 7.5, 1.0), _bump(h, 18.5, 1.5), 0.45 * _bump(h, 12.5, 2.0))

    def _wait(self, t_s: float) -> float:
        rate = self.spec.calls_per_hour / 3600.0 * self._flow(t_s)
        u = self._h("call", self._trips, round(t_s, 3))
        return min(MAX_IDLE_S, -math.log(1.0 - u) / rate) if rate > 0 else MAX_IDLE_S

    def _append(self, kind: str, t0: float, duration: float, pos0: float, pos1: float | None = None,
                passengers: int = 0, speed: float = 0.0, mode: str = "normal") -> float:
        runs = self._segments[-1].runs + (1 if kind == "travel" else 0)
        self._segments.append(Segment(kind, t0, t0 + duration, pos0, pos0 if pos1 is None else pos1,
                                      passengers, speed, mode, runs))
        return t0 + duration

    def _travel(self, t: float, pos0: float, pos1: float, passengers: int, speed: float | None = None,
                mode: str = "normal") -> float:
        speed = speed or self.spec.rated_speed_mps
        duration = travel_time_s(abs(pos1 - pos0) * self.spec.floor_height_m, speed, self.spec.acceleration_mps2)
        return self._append("travel", t, duration, pos0, pos1, passengers, speed, mode)

    def _doors(self, t: float, floor: float, before: int, after: int, reopen: bool = False) -> float:
        """Open, dwell while people get in or out (``before`` -> ``after`` inside), close."""
        s = self.spec
        t = self._append("opening", t, s.door_open_s, floor, passengers=before)
        moving_people = abs(after - before)
        t = self._append("open", t, s.door_dwell_s + DWELL_PER_PASSENGER_S * moving_people, floor, passengers=after)
        if reopen:
            # something keeps blocking the door: it starts closing and reopens, again and again
            for i in range(REOPEN_CYCLES):
                t = self._append("closing", t, REOPEN_STROKE * s.door_close_s, floor, passengers=after)
                if i == REOPEN_CYCLES - 1:
                    self._raise(t, "DOOR_REPEATED_REOPEN", f"door reopened {REOPEN_CYCLES} times at floor {floor:g}")
                t = self._append("opening", t, REOPEN_STROKE * s.door_open_s, floor, passengers=after)
                t = self._append("open", t, s.door_dwell_s * 2 / 3, floor, passengers=after)
        t = self._append("closing", t, s.door_close_s, floor, passengers=after)
        if reopen:
            self._clear(t, "DOOR_REPEATED_REOPEN", "door closed normally")
        return t

    def _call(self, n: int, t_s: float) -> tuple[int, int, int]:
        """(origin floor, destination floor, passengers) of call n."""
        s = self.spec
        h = local_hour(t_s)
        morning, evening = _bump(h, 7.5, 1.0), _bump(h, 18.5, 1.5)
        homes = range(s.lobby_floor + 1, s.top_floor + 1)
        home = homes[int(self._h("home", n) * len(homes))]
        ground = s.lowest_floor if s.lowest_floor < s.lobby_floor and self._h("garage", n) < 0.3 else s.lobby_floor
        going_out = self._h("direction", n) < 0.5 + 0.4 * morning - 0.4 * evening
        passengers = 1 + int(self._h("group", n) * (2 + 3 * max(morning, evening)))
        return (home, ground, passengers) if going_out else (ground, home, passengers)

    def _plan_until(self, t_s: float) -> None:
        while self._segments[-1].t1 <= t_s:
            self._plan_trip(self._segments[-1].t1)

    def _door_cycle_s(self, passengers: int) -> float:
        s = self.spec
        return s.door_open_s + s.door_dwell_s + DWELL_PER_PASSENGER_S * passengers + s.door_close_s

    def _longest_trip_s(self) -> float:
        """An upper bound of an ordinary trip: empty run across the shaft, then back with a full car."""
        s = self.spec
        shaft = travel_time_s((s.top_floor - s.lowest_floor) * s.floor_height_m, s.rated_speed_mps,
                              s.acceleration_mps2)
        reopen = REOPEN_CYCLES * (REOPEN_STROKE * (s.door_close_s + s.door_open_s) + s.door_dwell_s)
        return 2 * shaft + 2 * self._door_cycle_s(MAX_GROUP) + reopen

    def _forced_people(self, n: int) -> int:
        return 1 + int(self._h("forced_group", n) * 3)

    def _forced_lead_s(self, f: ForcedFault, floor: float) -> float:
        """From the start of the fault's trip to the start of the fault itself."""
        s = self.spec
        people = self._forced_people(self._trips)
        if f.kind == "trapped_passenger":
            half = travel_time_s(0.5 * s.floor_height_m, s.rated_speed_mps, s.acceleration_mps2)
            return self._door_cycle_s(people) + half
        return s.door_open_s + s.door_dwell_s + DWELL_PER_PASSENGER_S * people

    def _append_idle(self, t: float, floor: float) -> None:
        """The car waits for the next call; a forced fault coming up cuts the wait so its trip starts in time."""
        wait = self._wait(t)
        if self._forced and self._forced_next is None:
            f = self._forced[0]
            depart = f.start_s - self._forced_lead_s(f, floor)
            if depart < t + wait + self._max_trip_s:
                wait = max(0.0, depart - t)
                self._forced_next = self._forced.popleft()
        self._append("idle", t, wait, floor)

    def _plan_trip(self, t: float) -> None:
        if self._forced_next is not None:
            f, self._forced_next = self._forced_next, None
            self._plan_forced(t, f)
            return
        s = self.spec
        n = self._trips
        self._trips += 1
        car = self._segments[-1].pos1
        origin, dest, people = self._call(n, t)
        fault = None
        # no random fault when a forced one is near: a long rescue would push the forced one back
        forced_near = bool(self._forced) and self._forced[0].start_s < t + s.rescue_s + 2 * self._max_trip_s
        if not forced_near and self._h("fault", n) < s.fault_probability:
            u = self._h("fault_kind", n)
            fault = "reopen" if u < 0.45 else "alarm_button" if u < 0.8 else "stuck"
        if car != origin:
            t = self._travel(t, car, origin, 0)
        t = self._doors(t, origin, 0, people, reopen=fault == "reopen")
        if fault == "stuck":
            t, dest = self._stuck_between_floors(t, n, origin, dest, people)
        else:
            t_start = t
            t = self._travel(t, origin, dest, people)
            if fault == "alarm_button":
                self._raise((t_start + t) / 2, "ALARM_BUTTON", "alarm button pressed in the car")
            t = self._doors(t, dest, people, 0)
            if fault == "alarm_button":
                self._clear(t, "ALARM_BUTTON", "doors opened and closed at a landing")
        self._append_idle(t, float(dest))

    def _plan_forced(self, t: float, f: ForcedFault) -> None:
        """The trip that puts the car into a forced fault at ``f.start_s`` (later if it was busy)."""
        s = self.spec
        n = self._trips
        self._trips += 1
        car = int(round(self._segments[-1].pos1))
        people = self._forced_people(n)
        sign = 1 if car < s.top_floor else -1
        if f.kind == "trapped_passenger":
            t = self._doors(t, car, 0, people)
            stop_at = t + travel_time_s(0.5 * s.floor_height_m, s.rated_speed_mps, s.acceleration_mps2)
            self.forced_windows[f] = (stop_at, stop_at + f.duration_s)
            t, landing = self._stuck_between_floors(t, n, car, car + sign, people, stuck_s=f.duration_s, gap=0)
        else:
            # the door opens for people to step in and never closes: the car creeps off with it open
            t = self._append("opening", t, s.door_open_s, car)
            t = self._append("open", t, s.door_dwell_s + DWELL_PER_PASSENGER_S * people, car, passengers=people)
            landing = car + sign
            speed = creep_speed_mps(s.floor_height_m, f.duration_s, s.acceleration_mps2)
            self.forced_windows[f] = (t, t + f.duration_s)
            self._raise(t + min(1.0, f.duration_s / 2), "DOOR_OPEN_WHILE_RUNNING", f"car moving from floor {car} "
                        "with its door open")
            runs = self._segments[-1].runs + 1
            self._segments.append(Segment("travel", t, t + f.duration_s, car, landing, people, speed, "normal", runs,
                                          door="open"))
            t += f.duration_s
            t = self._append("open", t, s.door_dwell_s + DWELL_PER_PASSENGER_S * people, landing)
            t = self._append("closing", t, s.door_close_s, landing)
            self._clear(t, "DOOR_OPEN_WHILE_RUNNING", f"door closed at floor {landing}")
        self._append_idle(t, float(landing))

    def forced_window(self, f: ForcedFault) -> tuple[float, float] | None:
        """When the car is really in forced fault ``f`` (None: before this monitor's day began).

        Plans the car's day up to the fault, so it is known before it happens (for the ground truth).
        """
        if f not in self.forced_windows:
            self._plan_until(f.start_s + f.duration_s + 2 * self._max_trip_s + MAX_IDLE_S)
        return self.forced_windows.get(f)

    def _stuck_between_floors(self, t: float, n: int, origin: int, dest: int, people: int,
                              stuck_s: float | None = None, gap: int | None = None) -> tuple[float, int]:
        """The car stops between two landings with people inside until a technician brings it down.

        ``stuck_s``: how long until the rescue (default the spec's rescue_s); ``gap``: how many
        landings it passes before it stops (default a random share of the trip).
        """
        s = self.spec
        stuck_s = s.rescue_s if stuck_s is None else stuck_s
        sign = 1 if dest > origin else -1
        if gap is None:
            gap = int(self._h("stuck_gap", n) * abs(dest - origin))
        stop = origin + sign * (gap + 0.5)
        t = self._travel(t, origin, stop, people)
        stopped = t
        t = self._append("stuck", t, stuck_s, stop, passengers=people)
        raised = []
        for code, after_s in (("STOPPED_OUTSIDE_DOOR_ZONE", s.outside_zone_alarm_s),
                              ("TRAPPED_BETWEEN_FLOORS", s.trapped_alarm_s)):
            if after_s < stuck_s:  # rescued before the timer ran out: the monitor never saw a fault
                self._raise(stopped + after_s, code, f"car stopped between floors {stop - 0.5:g} and {stop + 0.5:g}")
                raised.append(code)
        landing = origin + sign * (gap + 1)
        t = self._travel(t, stop, landing, people, speed=RESCUE_SPEED_MPS, mode="inspection")
        t = self._doors(t, landing, people, 0)
        for code in raised:
            self._clear(t, code, f"passengers released at floor {landing}")
        return t, landing

    def _raise(self, t: float, code: str, detail: str) -> None:
        bisect.insort(self._pending, AlarmEvent(t, code, "raised", detail), key=lambda e: e.t_s)

    def _clear(self, t: float, code: str, detail: str) -> None:
        bisect.insort(self._pending, AlarmEvent(t, code, "cleared", detail), key=lambda e: e.t_s)

    def _apply(self, event: AlarmEvent) -> None:
        if event.state == "raised":
            self.active.add(event.code)
        else:
            self.active.discard(event.code)

    # the car at a time -----------------------------------------------------------------------------
    def state_at(self, t_s: float) -> CarState:
        self._plan_until(t_s)
        seg = next(g for g in self._segments if g.t0 <= t_s < g.t1) if t_s >= self._segments[0].t0 else None
        if seg is None:
            raise ValueError(f"{t_s} is before the monitor's earliest remembered state")
        if seg.kind in ("travel", "stuck"):
            if seg.kind == "travel":
                metres = abs(seg.pos1 - seg.pos0) * self.spec.floor_height_m
                done, speed = travel_progress(metres, seg.speed_mps, self.spec.acceleration_mps2, t_s - seg.t0)
                up = seg.pos1 > seg.pos0
                pos = seg.pos0 + (1 if up else -1) * done / self.spec.floor_height_m
                direction = "up" if up else "down"
            else:
                pos, speed, direction, up = seg.pos0, 0.0, "stopped", True
            # a monitor counts landings as the car passes their door-zone sensors: the last one passed
            floor = math.floor(pos + 1e-9) if up else math.ceil(pos - 1e-9)
            return CarState(floor, direction, seg.door, False, seg.passengers, speed, seg.mode, seg.runs)
        door = "closed" if seg.kind == "idle" else seg.kind
        return CarState(int(round(seg.pos0)), "stopped", door, True, seg.passengers, 0.0, seg.mode, seg.runs)

    def next_poll_s(self, t_s: float, tick_s: float) -> float:
        """When ``poll`` next has something to say, after a poll at t.

        While the car travels it passes landings at any moment: look again a tick later. Otherwise
        nothing changes before the current segment ends, the next alarm event or the status period.
        """
        seg = next((g for g in self._segments if g.t0 <= t_s < g.t1), None)
        if seg is None:
            return t_s + tick_s
        if seg.kind == "travel":
            return max(min(t_s + tick_s, seg.t1), t_s + 1e-3)  # and exactly when the car stops
        nxt = min(seg.t1, self._last_status_s + self.spec.status_idle_s)
        if self._pending:
            nxt = min(nxt, self._pending[0].t_s)
        return max(nxt, t_s + 1e-3)

    def _prune(self, t_s: float) -> None:
        while len(self._segments) > 1 and self._segments[0].t1 <= t_s:
            self._segments.popleft()

    # what goes on the wire -------------------------------------------------------------------------
    def poll(self, t_s: float) -> list[MqttMessage]:
        """Events that happened up to t, then a status if something changed or the period is over."""
        self._plan_until(t_s)
        out = []
        if not self._announced:
            # on start the monitor reports what is already wrong: those raises happened before it was on
            out += [self._event(t_s, AlarmEvent(t_s, code, "raised", "active when the monitor started"))
                    for code in sorted(self.active)]
            self._announced = True
        while self._pending and self._pending[0].t_s <= t_s:
            event = self._pending.pop(0)
            self._apply(event)
            out.append(self._event(event.t_s, event))
        state = self.state_at(t_s)
        coarse = (state.floor, state.direction, state.door, state.at_level, state.passengers > 0, state.mode,
                  frozenset(self.active))
        period = self.spec.status_moving_s if state.direction != "stopped" else self.spec.status_idle_s
        if coarse != self._last_coarse or t_s - self._last_status_s >= period:
            out.append(self._status(t_s, state))
            self._last_coarse, self._last_status_s = coarse, t_s
        self._prune(t_s)
        return out

    def _topic(self, kind: str) -> str:
        return f"{TOPIC_ROOT}/{self.spec.building}/{self.spec.elevator_id}/{kind}"

    def _status(self, t_s: float, st: CarState) -> MqttMessage:
        t_ms = round(t_s * 1000)  # a time computed as a float sum lands on its millisecond
        speed = round(st.speed_mps, 2)
        load = round(100.0 * st.passengers * PASSENGER_KG / self.spec.rated_load_kg, 1)
        faults = sorted(self.active)
        doc = {
            "type": "status", "elevator_id": self.spec.elevator_id, "building": self.spec.building,
            "ts": local_rfc3339_ms(t_ms), "direction": st.direction, "floor": st.floor, "at_level": st.at_level,
            "door": st.door, "occupied": st.passengers > 0, "speed_mps": speed, "load_pct": load,
            "mode": st.mode, "power": "mains", "run_count": st.run_count, "active_faults": faults,
        }
        values = {
            "floor": float(st.floor), "direction": float(DIRECTION_CODES[st.direction]),
            "moving": float(st.direction != "stopped"), "in_door_zone": float(st.at_level),
            "door_state": float(DOOR_CODES[st.door]), "occupied": float(st.passengers > 0), "speed": speed,
            "load": load, "mode": float(MODE_CODES[st.mode]), "run_count": float(st.run_count),
            "faults_active": float(len(faults)),
        }
        return MqttMessage(self._topic("status"), doc, t_ms, self.spec.elevator_id, "elevator",
                           {"building": self.spec.building}, values, (("ts",),))

    def _event(self, t_s: float, event: AlarmEvent) -> MqttMessage:
        t_ms = round(t_s * 1000)  # a time computed as a float sum lands on its millisecond
        st = self.state_at(t_s) if t_s >= self._segments[0].t0 else None
        doc = {
            "type": "event",
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{self.seed}/{self.spec.elevator_id}/{event.code}/"
                                                           f"{event.state}/{t_ms}")),
            "elevator_id": self.spec.elevator_id, "building": self.spec.building, "ts": local_rfc3339_ms(t_ms),
            "code": event.code, "state": event.state, "detail": event.detail,
        }
        values = {"active": 1.0 if event.state == "raised" else 0.0}
        if st is not None:
            doc.update(floor=st.floor, direction=st.direction, speed_mps=round(st.speed_mps, 2),
                       occupied=st.passengers > 0)
            values.update(floor=float(st.floor), occupied=float(st.passengers > 0))
        return MqttMessage(self._topic("event"), doc, t_ms, self.spec.elevator_id, "elevator_alarm",
                           {"building": self.spec.building, "code": event.code}, values, (("ts",),))
