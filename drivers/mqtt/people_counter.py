"""People-counting cameras at gates and lobbies: cumulative in/out counters into interval counts.

The payload is a Hikvision ISAPI ``PeopleCounting`` event (EventNotificationAlert) relayed as JSON,
with the fields Hikvision integrations document (enter/exit, channelName, dateTime with offset)::

    {"deviceID": "cam-north-gate", "macAddress": "44:19:b6:01:02:03", "channelID": 1,
     "channelName": "north-gate", "dateTime": "2026-03-02T08:15:00.000+08:00",
     "eventType": "PeopleCounting", "eventState": "active",
     "peopleCounting": {"statisticalMethods": "realTime", "enter": 1205, "exit": 1187}}

``realTime`` counts are running totals since the camera's last reset; ``timeRange`` counts are
already the increment of an interval (``TimeRange.endTime`` stamps them). Totals are reset by the
camera at local midnight and lost on a reboot, so a total that goes down is a reset: the new value
is the count since zero, and the report carries ``resets = 1``. The first report of a camera has no
baseline and yields totals only; interval counts are never invented.
"""
from __future__ import annotations

from dataclasses import dataclass

from drivers.mqtt.decoded import (
    DEFAULT_CLOCK,
    ClockWindow,
    DecodedReading,
    DecodeResult,
    checked_time,
    json_kind,
    load_json_object,
    short_text,
)

MAX_COUNT = 2**32 - 1  # cameras keep 32-bit counters (Milesight VS13x totals are uint32)


@dataclass(slots=True)
class _Baseline:
    ts_ns: int
    enter: int
    exit: int


def _count(pc: dict, key: str, result: DecodeResult) -> int | None:
    value = pc.get(key)
    if value is None:
        result.problem("missing_field", f"peopleCounting.{key} is missing")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # relays that pass counts through a float type
    if isinstance(value, bool) or not isinstance(value, int):
        result.problem("wrong_type", f"peopleCounting.{key} is a {json_kind(value)}, expected an integer")
        return None
    if not 0 <= value <= MAX_COUNT:
        result.problem("out_of_range", f"peopleCounting.{key} = {value} outside 0..{MAX_COUNT}")
        return None
    return value


class PeopleCounterDecoder:
    """Keeps the last totals per (camera, gate), so one instance serves one subscription."""

    def __init__(self, clock: ClockWindow = DEFAULT_CLOCK) -> None:
        self.clock = clock
        self._baselines: dict[tuple[str, str], _Baseline] = {}

    def __call__(self, topic: str, payload: bytes, site: str, now_ns: int) -> DecodeResult:
        result = DecodeResult()
        doc = load_json_object(payload, result)
        if doc is None:
            return result
        device = short_text(doc.get("deviceID")) or short_text(doc.get("macAddress"))
        if device is None:
            result.problem("missing_device", "no deviceID or macAddress")
            return result
        result.device = device
        event = doc.get("eventType", "PeopleCounting")
        if event != "PeopleCounting":
            result.problem("unsupported_event", f"eventType {str(event)[:60]!r} is not PeopleCounting")
            return result
        pc = doc.get("peopleCounting")
        if not isinstance(pc, dict):
            result.problem("missing_field", "no peopleCounting object")
            return result
        gate = short_text(doc.get("channelName")) or short_text(doc.get("channelID")) or "main"
        tags = {"site": site, "device": device, "gate": gate}
        method = pc.get("statisticalMethods", "realTime")
        if method == "timeRange":
            return self._interval(doc, pc, tags, now_ns, result)
        if method != "realTime":
            result.problem("unsupported_event", f"statisticalMethods {str(method)[:60]!r}")
            return result

        ts_ns = now_ns
        if "dateTime" in doc:
            checked = checked_time(doc["dateTime"], "rfc3339", now_ns, self.clock, result)
            if checked is None:
                return result  # the counters stay unread, so the next report's interval covers this one
            ts_ns = checked
        enter, exit_ = _count(pc, "enter", result), _count(pc, "exit", result)
        fields: dict[str, float] = {}
        if enter is not None:
            fields["in_total"] = enter
        if exit_ is not None:
            fields["out_total"] = exit_
        if enter is not None and exit_ is not None:
            fields["net_total"] = enter - exit_
            key = (device, gate)
            base = self._baselines.get(key)
            if base is not None and ts_ns < base.ts_ns:
                result.problem("out_of_order", f"report of {ts_ns} arrived after one of {base.ts_ns}; totals kept, "
                                               "no interval counts")
            elif base is None or ts_ns > base.ts_ns:  # the same time again is a redelivery: nothing new
                if base is not None:
                    # the camera resets both totals together: if either went down, both restarted from zero
                    reset = enter < base.enter or exit_ < base.exit
                    in_count = enter if reset else enter - base.enter
                    out_count = exit_ if reset else exit_ - base.exit
                    fields.update(in_count=in_count, out_count=out_count, net_count=in_count - out_count,
                                  resets=int(reset))
                self._baselines[key] = _Baseline(ts_ns, enter, exit_)
        if fields:
            values = {k: float(v) for k, v in fields.items()}
            result.readings.append(DecodedReading("people_counter", tags, ts_ns, values))
        return result

    def _interval(self, doc: dict, pc: dict, tags: dict[str, str], now_ns: int, result: DecodeResult) -> DecodeResult:
        span = pc.get("TimeRange") if isinstance(pc.get("TimeRange"), dict) else {}
        stamp = span.get("endTime", doc.get("dateTime"))
        ts_ns = now_ns
        if stamp is not None:
            checked = checked_time(stamp, "rfc3339", now_ns, self.clock, result)
            if checked is None:
                return result
            ts_ns = checked
        enter, exit_ = _count(pc, "enter", result), _count(pc, "exit", result)
        fields: dict[str, float] = {}
        if enter is not None:
            fields["in_count"] = float(enter)
        if exit_ is not None:
            fields["out_count"] = float(exit_)
        if enter is not None and exit_ is not None:
            fields["net_count"] = float(enter - exit_)
        if fields:
            result.readings.append(DecodedReading("people_counter", tags, ts_ns, fields))
        return result
