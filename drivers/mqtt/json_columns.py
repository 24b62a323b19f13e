"""The json decoder's fast path: a whole burst of payloads into numpy columns at once.

At tens of thousands of messages a second, ``json.loads`` into dicts and a ``DecodedReading`` per
message cost more than everything else the gateway does. For the common mapping (device from the
topic, top-level keys, an integer epoch timestamp), msgspec decodes each payload straight into a
small typed struct (~0.2 us), and the checks of ``JsonDecoder`` (timestamp plausibility, the clock
window, scale, bounds, no fields) run as numpy operations over the burst.

The fast path never decides that a message is bad: any message it is not sure about (malformed,
a float or missing timestamp, a boolean or huge number, a value out of bounds, outside the clock
window, no mapped field) is left to ``JsonDecoder``, which records the problem with its detail.
So both paths give the same readings and the same counted drops, message by message.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np

from drivers.mqtt.decoded import _EPOCH_UNIT_NS, _MAX_EPOCH_NS, NS, short_text
from drivers.mqtt.json_mapping import JsonDecoder

_TOPIC_CACHE_MAX = 50_000  # distinct topics remembered (a broker can send arbitrarily many)
_NO_DEVICE = -1


@dataclass(frozen=True, slots=True)
class Columns:
    """What the fast path decoded from a burst; ``rest`` is for the per-message decoder."""

    taken: np.ndarray  # int64: positions in the burst of the decoded messages, ascending
    device: np.ndarray  # int32: per taken message, an index into JsonColumns.devices
    ts_ns: np.ndarray  # int64: per taken message
    values: np.ndarray  # float64 (taken, fields); NaN where the message does not carry the field
    rest: np.ndarray  # int64: positions of the messages the fast path leaves to JsonDecoder


def supports(decoder: JsonDecoder) -> bool:
    """Whether a mapping fits the fast path: device from the topic, flat keys, epoch or no timestamp."""
    m = decoder.mapping
    keys = [spec.path for spec in m.fields.values()]
    flat = all("." not in k and not k.isdigit() for k in keys)
    time_ok = m.time_path is None or (m.time_format in _EPOCH_UNIT_NS and "." not in m.time_path
                                     and not m.time_path.isdigit() and m.time_path not in keys)
    return (m.device_from_topic is not None and m.device_path is None and not m.tag_paths and flat and time_ok
            and bool(keys))


class JsonColumns:
    """Decodes bursts for one ``JsonDecoder`` (check ``supports`` first)."""

    def __init__(self, decoder: JsonDecoder) -> None:
        m = decoder.mapping
        self.mapping = m
        self.clock = decoder.clock
        self.field_names = list(m.fields)
        keys = [spec.path for spec in m.fields.values()]
        self._keys = list(dict.fromkeys(keys))  # one struct attribute per distinct key
        self._col_of_field = [self._keys.index(k) for k in keys]
        # struct attributes are f0, f1, ... renamed to the JSON keys, which need not be identifiers;
        # strict types: a boolean, a float timestamp or a string fails here and goes to JsonDecoder
        attrs = [(f"f{i}", int | float | None, None) for i in range(len(self._keys))]
        rename = {f"f{i}": k for i, k in enumerate(self._keys)}
        if m.time_path is not None:
            attrs.append(("ts", int | None, None))
            rename["ts"] = m.time_path
        self._struct = msgspec.defstruct("JsonMessage", attrs, rename=rename)
        self._decode = msgspec.json.Decoder(self._struct).decode
        self._empty = self._struct()
        self._unit = _EPOCH_UNIT_NS.get(m.time_format, 1) if m.time_path is not None else 1
        self._scale = np.array([spec.scale for spec in m.fields.values()])
        self._lo = np.array([-np.inf if spec.min is None else spec.min for spec in m.fields.values()])
        self._hi = np.array([np.inf if spec.max is None else spec.max for spec in m.fields.values()])
        self._bounded = any(s.min is not None or s.max is not None for s in m.fields.values())
        self._scaled = any(s.scale != 1.0 for s in m.fields.values())
        self.devices: list[str] = []  # device index -> device id; grows, never reorders
        self._device_index: dict[str, int] = {}
        self._device_of_topic: dict[str, int] = {}

    def _device(self, topic: str) -> int:
        levels = topic.split("/")
        k = self.mapping.device_from_topic
        assert k is not None
        device = short_text(levels[k]) if k < len(levels) else None
        if device is None:
            return _NO_DEVICE
        idx = self._device_index.get(device)
        if idx is None:
            idx = self._device_index[device] = len(self.devices)
            self.devices.append(device)
        if len(self._device_of_topic) >= _TOPIC_CACHE_MAX:
            self._device_of_topic.clear()
        self._device_of_topic[topic] = idx
        return idx

    def decode(self, topics: list[str], payloads: list[bytes], now_ns: int) -> Columns:
        n = len(payloads)
        bad = np.zeros(n, dtype=bool)
        decode = self._decode
        try:
            msgs = [decode(p) for p in payloads]
        except (msgspec.DecodeError, TypeError):  # someone's garbage: decode one by one, mark it
            msgs = []
            for i, p in enumerate(payloads):
                try:
                    msgs.append(decode(p))
                except (msgspec.DecodeError, TypeError):
                    msgs.append(self._empty)
                    bad[i] = True
        cache = self._device_of_topic
        dev = np.fromiter([cache.get(t, -2) for t in topics], dtype=np.int32, count=n)
        for i in np.flatnonzero(dev == -2):
            dev[i] = self._device(topics[i])
        bad |= dev == _NO_DEVICE

        if self.mapping.time_path is not None:
            raw = [m.ts for m in msgs]
            try:
                ts = np.fromiter(raw, dtype=np.int64, count=n)
            except (TypeError, OverflowError):  # missing (None) or beyond int64: JsonDecoder says which
                ts = np.fromiter([t if t is not None and -(1 << 63) <= t < (1 << 63) else -1 for t in raw],
                                 dtype=np.int64, count=n)
            # plausible (0 .. year 2200) before multiplying, so the product cannot overflow
            bad |= (ts < 0) | (ts > _MAX_EPOCH_NS // self._unit)
            ts = np.where(bad, 0, ts) * self._unit
            # the clock window, with a microsecond of margin: near its edges JsonDecoder decides exactly
            ahead = (ts - now_ns) / NS
            bad |= (ahead > self.clock.max_ahead_s - 1e-6) | (-ahead > self.clock.max_behind_s - 1e-6)
        else:
            ts = np.full(n, now_ns, dtype=np.int64)

        cols = []
        for i in range(len(self._keys)):
            attr = f"f{i}"
            raw = [getattr(m, attr) for m in msgs]
            try:
                cols.append(np.array(raw, dtype=np.float64))  # None (absent or null) -> NaN
            except OverflowError:  # an integer beyond float: out_of_range, with JsonDecoder's detail
                col = np.array([v if v is None or isinstance(v, float) or abs(v) < 1e308 else np.nan for v in raw],
                               dtype=np.float64)
                huge = np.fromiter((v is not None and not isinstance(v, float) and abs(v) >= 1e308 for v in raw),
                                   dtype=bool, count=n)
                bad |= huge
                cols.append(col)
        values = np.stack([cols[c] for c in self._col_of_field], axis=1) if cols else np.empty((n, 0))
        if self._scaled:
            values = values * self._scale
            bad |= np.isinf(values).any(axis=1)
        if self._bounded:
            bad |= ((values < self._lo) | (values > self._hi)).any(axis=1)
        bad |= np.isnan(values).all(axis=1)  # no mapped field at all: a no_fields problem
        taken = np.flatnonzero(~bad)
        if len(taken) == n:
            return Columns(taken, dev, ts, values, np.flatnonzero(bad))
        return Columns(taken, dev[taken], ts[taken], values[taken], np.flatnonzero(bad))
