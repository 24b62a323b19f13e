"""Elevator monitors: real-time car status and fault/alarm events.

The message format is the neutral one in the project's elevator reference (section 4, built from
open-source monitors because GB/T 24476's own tables are not public)::

    {"type": "status", "elevator_id": "B1-L1", "building": "B1", "ts": "2026-03-02T08:15:00.120+08:00",
     "direction": "up", "floor": 7, "at_level": false, "door": "closed", "occupied": true,
     "speed_mps": 1.62, "load_pct": 21.0, "mode": "normal", "run_count": 48211, "active_faults": []}

    {"type": "event", "event_id": "...", "elevator_id": "B1-L1", "building": "B1", "ts": "...",
     "code": "TRAPPED_BETWEEN_FLOORS", "state": "raised", "floor": 7, "direction": "stopped",
     "speed_mps": 0.0, "occupied": true, "detail": "..."}

Enumerations are also accepted in the numeric encoding most firmware uses (direction 0 stopped,
1 up, 2 down; door 0 closed, 1 open, 2 closing, 3 opening). Status becomes the ``elevator``
measurement; each raise or clear becomes an ``elevator_alarm`` point tagged with the fault code.
The decoder remembers which faults are active per car: when a status lists a fault it never saw
raised (an event lost, or the gateway started during the fault) or omits one it saw raised, it
writes the missing raise or clear, so an alarm cannot stay on in the database after the car
recovered.
"""
from __future__ import annotations

from drivers.mqtt.decoded import (
    DEFAULT_CLOCK,
    ClockWindow,
    DecodedReading,
    DecodeResult,
    checked_time,
    json_kind,
    load_json_object,
    number,
    short_text,
)

DIRECTIONS = {"stopped": 0, "up": 1, "down": 2}
DOORS = {"closed": 0, "open": 1, "closing": 2, "opening": 3}
MODES = {"normal": 0, "inspection": 1, "maintenance": 2, "fire": 3, "out_of_service": 4}
FAULT_CODES = frozenset({
    "TRAPPED_AT_LEVEL", "TRAPPED_BETWEEN_FLOORS", "DOOR_OPEN_WHILE_RUNNING", "MOVING_WITH_DOOR_OPEN",
    "STOPPED_OUTSIDE_DOOR_ZONE", "OVERSPEED", "TOP_OVERRUN", "BOTTOM_OVERRUN", "DOOR_REPEATED_REOPEN",
    "DOOR_OPEN_TOO_LONG", "DOOR_FAILS_TO_OPEN", "SAFETY_CIRCUIT_OPEN", "POWER_FAILURE", "ALARM_BUTTON",
    "EBIKE_IN_CAR", "IDLE_TOO_LONG", "ABNORMAL_VIBRATION",
})
FLOOR_RANGE = (-20, 200)  # five basement levels is already a lot; 163 floors is the tallest building
SPEED_RANGE_MPS = (0.0, 21.0)  # the fastest passenger lifts run at about 20 m/s
LOAD_RANGE_PCT = (0.0, 200.0)  # above 110 % a car refuses to move, but a sensor may still report it
_MISSING = object()


class _Fields:
    """Collects a message's fields, turning each bad value into a problem without losing the rest."""

    def __init__(self, doc: dict, result: DecodeResult) -> None:
        self.doc = doc
        self.result = result
        self.values: dict[str, float] = {}

    def enum(self, key: str, field: str, names: dict[str, int], unknown: tuple[str, ...] = ("unknown",)) -> None:
        raw = self.doc.get(key, _MISSING)
        if raw is _MISSING or raw is None or raw in unknown:
            return
        if isinstance(raw, str):
            if raw in names:
                self.values[field] = float(names[raw])
            else:
                self.result.problem("out_of_range", f"{key} {raw[:40]!r} is not one of {', '.join(names)}")
        elif isinstance(raw, int) and not isinstance(raw, bool):
            if raw in names.values():
                self.values[field] = float(raw)
            else:
                self.result.problem("out_of_range", f"{key} code {raw} is not one of {sorted(names.values())}")
        else:
            self.result.problem("wrong_type", f"{key} is a {json_kind(raw)}, expected a string")

    def flag(self, key: str, field: str) -> None:
        raw = self.doc.get(key, _MISSING)
        if raw is _MISSING or raw is None:  # null: the monitor has no such sensor
            return
        if isinstance(raw, bool) or raw in (0, 1):
            self.values[field] = float(bool(raw))
        else:
            self.result.problem("wrong_type", f"{key} is {str(raw)[:40]!r}, expected a boolean")

    def number(self, key: str, field: str, lo: float, hi: float, integer: bool = False) -> None:
        raw = self.doc.get(key, _MISSING)
        if raw is _MISSING or raw is None:
            return
        is_number = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        value = number(raw)
        if is_number and value is None:  # NaN, infinity, or an integer beyond float range
            self.result.problem("out_of_range", f"{key} is {str(raw)[:40]}")
            return
        if value is None or (integer and not value.is_integer()):
            kind = "an integer" if integer else "a number"
            self.result.problem("wrong_type", f"{key} is {str(raw)[:40]!r} ({json_kind(raw)}), expected {kind}")
            return
        if not lo <= value <= hi:
            self.result.problem("out_of_range", f"{key} = {value:g} outside {lo:g}..{hi:g}")
            return
        self.values[field] = value


class ElevatorDecoder:
    """Status and events of the elevator monitors on one subscription."""

    def __init__(self, clock: ClockWindow = DEFAULT_CLOCK) -> None:
        self.clock = clock
        # per car: faults seen active, and the time of the last change, so a late status cannot undo it
        self._active: dict[str, set[str]] = {}
        self._changed_ns: dict[str, int] = {}

    def __call__(self, topic: str, payload: bytes, site: str, now_ns: int) -> DecodeResult:
        result = DecodeResult()
        doc = load_json_object(payload, result)
        if doc is None:
            return result
        device = short_text(doc.get("elevator_id"))
        if device is None:
            result.problem("missing_device", "no elevator_id")
            return result
        result.device = device
        kind = doc.get("type", "event" if "code" in doc else "status")
        if kind not in ("status", "event"):
            result.problem("unsupported_event", f"message type {str(kind)[:40]!r} (expected status or event)")
            return result
        ts_ns = now_ns
        if "ts" in doc:
            checked = checked_time(doc["ts"], "rfc3339", now_ns, self.clock, result)
            if checked is None:
                return result
            ts_ns = checked
        tags = {"site": site, "device": device}
        building = short_text(doc.get("building"))
        if building is not None:
            tags["building"] = building
        if kind == "status":
            self._status(doc, tags, ts_ns, result)
        else:
            self._event(doc, tags, ts_ns, result)
        return result

    def _status(self, doc: dict, tags: dict[str, str], ts_ns: int, result: DecodeResult) -> None:
        f = _Fields(doc, result)
        f.number("floor", "floor", *FLOOR_RANGE, integer=True)
        f.enum("direction", "direction", DIRECTIONS)
        if "direction" in f.values:
            f.values["moving"] = float(f.values["direction"] != DIRECTIONS["stopped"])
        f.flag("at_level", "in_door_zone")
        f.enum("door", "door_state", DOORS)
        f.flag("occupied", "occupied")
        f.number("speed_mps", "speed", *SPEED_RANGE_MPS)
        f.number("load_pct", "load", *LOAD_RANGE_PCT)
        f.enum("mode", "mode", MODES)
        f.number("run_count", "run_count", 0, 2**53, integer=True)
        faults = doc.get("active_faults", _MISSING)
        if faults is not _MISSING and faults is not None:
            if isinstance(faults, list):
                known = self._known_codes(faults, result)
                f.values["faults_active"] = float(len(known))
                self._reconcile(result.device, known, f.values, tags, ts_ns, result)
            else:
                result.problem("wrong_type", f"active_faults is a {json_kind(faults)}, expected an array")
        if f.values:
            result.readings.append(DecodedReading("elevator", tags, ts_ns, f.values))

    def _event(self, doc: dict, tags: dict[str, str], ts_ns: int, result: DecodeResult) -> None:
        code = doc.get("code")
        if not isinstance(code, str):
            reason = "missing_field" if code is None else "wrong_type"
            result.problem(reason, f"event code is {json_kind(code)}, expected a fault code string")
            return
        if code not in FAULT_CODES:
            result.problem("unknown_alarm_code", f"{code[:60]!r}")
            return
        state = doc.get("state")
        if state not in ("raised", "cleared"):
            result.problem("out_of_range", f"event state {str(state)[:40]!r} (expected raised or cleared)")
            return
        f = _Fields(doc, result)
        f.number("floor", "floor", *FLOOR_RANGE, integer=True)
        f.flag("occupied", "occupied")
        f.values["active"] = 1.0 if state == "raised" else 0.0
        active = self._active.setdefault(result.device, set())
        if state == "raised":
            active.add(code)
        else:
            active.discard(code)
        self._changed_ns[result.device] = max(ts_ns, self._changed_ns.get(result.device, ts_ns))
        result.readings.append(DecodedReading("elevator_alarm", {**tags, "code": code}, ts_ns, f.values))

    @staticmethod
    def _known_codes(faults: list, result: DecodeResult) -> set[str]:
        known = set()
        for code in faults:
            if isinstance(code, str) and code in FAULT_CODES:
                known.add(code)
            else:
                result.problem("unknown_alarm_code", f"active_faults entry {str(code)[:60]!r}")
        return known

    def _reconcile(self, device: str, listed: set[str], status: dict[str, float], tags: dict[str, str],
                   ts_ns: int, result: DecodeResult) -> None:
        if ts_ns < self._changed_ns.get(device, ts_ns):
            return  # an older status delivered late: the events after it know better
        active = self._active.setdefault(device, set())
        context = {k: status[k] for k in ("floor", "occupied") if k in status}
        for code in sorted(listed - active):
            result.readings.append(DecodedReading("elevator_alarm", {**tags, "code": code}, ts_ns,
                                                  {**context, "active": 1.0}))
        for code in sorted(active - listed):
            result.readings.append(DecodedReading("elevator_alarm", {**tags, "code": code}, ts_ns,
                                                  {**context, "active": 0.0}))
        if listed != active:
            self._changed_ns[device] = ts_ns
        active.clear()
        active.update(listed)
