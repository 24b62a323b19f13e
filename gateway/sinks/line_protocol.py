"""InfluxDB line protocol from columnar batches, vectorised: no Python object per point.

Readings of one series set (measurement + tags) at one timestamp become one line with several
fields. The per-series text (escaped measurement, tags and field key) is prepared once when a
series first appears; encoding a batch is numpy string ufuncs over whole arrays.
"""
from __future__ import annotations

import numpy as np

from pipelines.batch import ReadingBatch
from pipelines.schema import measurement as lookup_measurement
from pipelines.series import SeriesRegistry

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})


def escape_measurement(s: str) -> str:
    return s.translate(_MEASUREMENT_ESCAPES)


def escape_key(s: str) -> str:
    """Tag keys, tag values and field keys share the same escaping rules."""
    return s.translate(_KEY_ESCAPES)


class LineProtocolEncoder:
    def __init__(self, registry: SeriesRegistry) -> None:
        self.registry = registry
        self._n = 0
        self._line_prefix = np.empty(0, dtype="S1")  # per line id: b"meas,tag=v "
        self._field_key = np.empty(0, dtype="S1")  # per series: b"field="
        self._is_int = np.empty(0, dtype=bool)

    def _refresh(self) -> None:
        """Extend the per-series text tables to series registered since the last call."""
        n = len(self.registry)
        if n == self._n:
            return
        prefixes = []
        for meas, tags in self.registry.lines:
            tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in tags)
            prefixes.append((escape_measurement(meas) + tag_text + " ").encode())
        keys, ints = [], []
        for key in self.registry.keys:
            keys.append((escape_key(key.field) + "=").encode())
            ints.append(lookup_measurement(key.measurement).field(key.field).type == "int")
        self._line_prefix = np.array(prefixes, dtype=bytes)
        self._field_key = np.array(keys, dtype=bytes)
        self._is_int = np.array(ints, dtype=bool)
        self._n = n

    def encode(self, batch: ReadingBatch) -> tuple[bytes, int]:
        """Return (line protocol, number of field values written); non-finite values are skipped."""
        self._refresh()
        finite = np.isfinite(batch.value)
        if not finite.all():
            batch = batch.take(finite)
        n = len(batch)
        if n == 0:
            return b"", 0
        line_of = self.registry.line_of
        lines = line_of[batch.series]
        order = np.lexsort((batch.series, batch.ts_ns, lines))
        series = batch.series[order]
        ts = batch.ts_ns[order]
        value = batch.value[order]
        lines = lines[order]
        # duplicates of one series at one timestamp would make invalid lines: keep the last
        dup = np.zeros(n, dtype=bool)
        dup[:-1] = (series[1:] == series[:-1]) & (ts[1:] == ts[:-1])
        if dup.any():
            keep = ~dup
            series, ts, value, lines = series[keep], ts[keep], value[keep], lines[keep]
            n = len(series)
        is_int = self._is_int[series]
        vstr = value.astype("S32")  # numpy's float -> str is the shortest round-tripping repr
        if is_int.any():
            ints = np.round(value[is_int]).astype(np.int64).astype("S")
            vstr = vstr.astype(f"S{max(vstr.dtype.itemsize, ints.dtype.itemsize + 1)}")
            vstr[is_int] = np.strings.add(ints, b"i")
        start = np.ones(n, dtype=bool)
        start[1:] = (lines[1:] != lines[:-1]) | (ts[1:] != ts[:-1])
        end = np.ones(n, dtype=bool)
        end[:-1] = start[1:]
        head = np.where(start, self._line_prefix[lines], b",")
        tail = np.where(end, np.strings.add(np.strings.add(b" ", ts.astype("S")), b"\n"), b"")
        piece = np.strings.add(np.strings.add(np.strings.add(head, self._field_key[series]), vstr), tail)
        # fixed-width bytes pad with NUL, which line protocol never contains: strip them in one pass
        return piece.tobytes().replace(b"\x00", b""), n


# --- the rare path: lines a server refused ---------------------------------------------------
# These work on one line at a time and are used only when a server rejects a batch, never on the
# hot path (batches stay bytes there).

def split_lines(text: bytes) -> list[bytes]:
    """The non-empty, non-comment lines of a line-protocol payload, as they are (no re-encoding)."""
    return [line for line in text.split(b"\n") if line.strip() and not line.lstrip().startswith(b"#")]


def count_fields(line: bytes) -> int:
    """Field values on one line (what the gateway counts as points).

    Honours backslash escapes in the measurement, tags and keys and double-quoted string values
    (which may hold spaces, commas and '='). A line too broken to find a field set counts as one,
    so that a rejected line is never counted as nothing.
    """
    n = len(line)
    i = 0
    # measurement and tags end at the first unescaped space
    while i < n:
        c = line[i]
        if c == 0x5C:  # backslash
            i += 2
            continue
        if c == 0x20:
            break
        i += 1
    i += 1
    fields = 0
    seen_key = False
    in_string = False
    while i < n:
        c = line[i]
        if in_string:
            if c == 0x5C:
                i += 2
                continue
            if c == 0x22:  # closing quote
                in_string = False
        elif c == 0x5C:
            i += 2
            continue
        elif c == 0x22:
            in_string = True
        elif c == 0x3D:  # '=' between a field key and its value
            if not seen_key:
                fields += 1
                seen_key = True
        elif c == 0x2C:  # ',' between fields
            seen_key = False
        elif c == 0x20:  # the timestamp follows
            break
        i += 1
    return max(1, fields)
