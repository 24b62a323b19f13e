"""Generic JSON payloads decoded by a field mapping declared in the configuration.

For devices that publish plain JSON (a Tasmota plug, a vendor's lift monitor, a home-made sensor),
the subscription says where the device id, the tags, the fields and the timestamp are::

    [subscriptions.mapping]
    measurement = "elevator"
    device_from_topic = 2                       # or device_path = "meta.id"
    tags = { building = "B1" }
    tag_paths = { }
    time_path = "ts"
    time_format = "epoch_ms"                    # rfc3339, epoch_s, epoch_ms, epoch_ns; no time_path: receive time
    fields.speed = { path = "car.speed_mms", scale = 0.001, unit = "m/s" }

Paths are dot-separated keys; a purely numeric part indexes an array (``rxInfo.0.rssi``).
The configuration loader checks the mapping against pipelines.schema; this module trusts it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from drivers.mqtt.decoded import (
    DEFAULT_CLOCK,
    ClockWindow,
    DecodedReading,
    DecodeResult,
    TimeFormat,
    checked_time,
    json_kind,
    load_json_object,
    number,
    short_text,
)

_MISSING = object()


def split_path(path: str) -> tuple[str | int, ...]:
    """``"a.0.b"`` -> ``("a", 0, "b")``: numeric parts index arrays."""
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def lookup(doc: object, path: tuple[str | int, ...]) -> object:
    """The value at path in a parsed JSON document, or ``_MISSING``."""
    for part in path:
        if isinstance(part, int) and isinstance(doc, list):
            if part >= len(doc):
                return _MISSING
            doc = doc[part]
        elif isinstance(doc, dict):
            # a numeric part may also be an object key ("1": ...), as JSON keys are strings
            doc = doc.get(str(part), _MISSING)
            if doc is _MISSING:
                return _MISSING
        else:
            return _MISSING
    return doc


@dataclass(frozen=True, slots=True)
class FieldSpec:
    path: str
    scale: float = 1.0
    min: float | None = None  # bounds apply to the scaled value
    max: float | None = None


@dataclass(frozen=True, slots=True)
class JsonMapping:
    measurement: str
    fields: dict[str, FieldSpec]
    device_from_topic: int | None = None  # topic level, 0-based
    device_path: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    tag_paths: dict[str, str] = field(default_factory=dict)
    time_path: str | None = None
    time_format: TimeFormat = "rfc3339"


class JsonDecoder:
    """Decodes one subscription's messages with its mapping; stateless apart from the parsed paths."""

    def __init__(self, mapping: JsonMapping, clock: ClockWindow = DEFAULT_CLOCK) -> None:
        self.mapping = mapping
        self.clock = clock
        # paths are split once here, not per message
        self._fields = [(name, split_path(spec.path), spec) for name, spec in mapping.fields.items()]
        self._tag_paths = [(tag, path, split_path(path)) for tag, path in mapping.tag_paths.items()]
        self._device_path = split_path(mapping.device_path) if mapping.device_path else None
        self._time_path = split_path(mapping.time_path) if mapping.time_path else None

    def __call__(self, topic: str, payload: bytes, site: str, now_ns: int) -> DecodeResult:
        m = self.mapping
        result = DecodeResult()
        if m.device_from_topic is not None:
            # known before parsing, so even unparseable payloads are counted against their device
            levels = topic.split("/")
            device = short_text(levels[m.device_from_topic]) if m.device_from_topic < len(levels) else None
            if device is None:
                result.problem("missing_device", f"topic {topic[:120]!r} has no level {m.device_from_topic}")
                return result
            result.device = device
        doc = load_json_object(payload, result)
        if doc is None:
            return result
        if self._device_path is not None:
            raw = lookup(doc, self._device_path)
            device = short_text(raw)
            if device is None:
                detail = "is missing" if raw is _MISSING else f"is a {json_kind(raw)}, not a device id"
                result.problem("missing_device", f"{m.device_path} {detail}")
                return result
            result.device = device

        ts_ns = now_ns
        if self._time_path is not None:
            raw = lookup(doc, self._time_path)
            if raw is _MISSING:
                result.problem("bad_timestamp", f"{m.time_path} is missing")
                return result
            checked = checked_time(raw, m.time_format, now_ns, self.clock, result)
            if checked is None:
                return result
            ts_ns = checked

        tags = {"site": site, "device": result.device, **m.tags}
        for tag, path, parts in self._tag_paths:
            raw = lookup(doc, parts)
            value = short_text(raw, 256)
            if value is not None:
                tags[tag] = value
            elif raw is _MISSING:
                result.problem("missing_field", f"tag {tag}: {path} is missing")
            else:
                result.problem("wrong_type", f"tag {tag}: {path} is a {json_kind(raw)}, expected a string or integer")

        fields: dict[str, float] = {}
        problems_before_fields = len(result.problems)
        for name, parts, spec in self._fields:
            raw = lookup(doc, parts)
            if raw is _MISSING or raw is None:
                continue  # devices send partial messages; a mapping that never matches is caught below
            if isinstance(raw, bool):
                value = 1.0 if raw else 0.0
            else:
                value = number(raw)
                if value is None:
                    reason = "out_of_range" if isinstance(raw, (int, float)) else "wrong_type"
                    result.problem(reason, f"{name}: {spec.path} is {str(raw)[:60]!r} ({json_kind(raw)}), "
                                           "expected a finite number")
                    continue
                value *= spec.scale
                if not math.isfinite(value):  # a huge reading times the scale overflows
                    result.problem("out_of_range", f"{name}: {spec.path} = {raw!r} times {spec.scale:g} overflows")
                    continue
            if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
                result.problem("out_of_range", f"{name} = {value:g} outside {spec.min}..{spec.max}")
                continue
            fields[name] = value
        if fields:
            result.readings.append(DecodedReading(m.measurement, tags, ts_ns, fields))
        elif len(result.problems) == problems_before_fields:  # nothing was wrong with a field: none was there
            result.problem("no_fields", "none of the mapped field paths is in the message")
        return result
