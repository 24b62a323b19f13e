"""InfluxDB line protocol from columnar batches.

Readings of one series set (measurement + tags) at one timestamp become one line with several
fields. The per-series text (escaped measurement, tags and field key) is prepared once when a
series first appears. Sorting, grouping into lines and dropping duplicates are numpy operations
over the batch; the text itself is one list comprehension and one join: measured on a 1,800-point
batch, numpy's fixed-width string ufuncs (float to text, concatenation, stripping the padding) took
about 3 us per point, Python's float repr and str.join about 0.6.
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
        self._line_prefix: list[str] = []  # per line id: "meas,tag=v "
        self._field_key: list[str] = []  # per series: "field="
        self._is_int = np.empty(0, dtype=bool)

    def _refresh(self) -> None:
        """Extend the per-series text tables to series registered since the last call."""
        n = len(self.registry)
        if n == self._n:
            return
        lines = self.registry.lines
        for meas, tags in lines[len(self._line_prefix):]:
            tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in tags)
            self._line_prefix.append(escape_measurement(meas) + tag_text + " ")
        ints = []
        for key in self.registry.keys[self._n:]:
            self._field_key.append(escape_key(key.field) + "=")
            ints.append(lookup_measurement(key.measurement).field(key.field).type == "int")
        self._is_int = np.concatenate([self._is_int, np.array(ints, dtype=bool)])
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
        text = list(map(repr, value.tolist()))  # the shortest text that reads back as the same float
        is_int = self._is_int[series]
        if is_int.any():
            for i, v in zip(np.flatnonzero(is_int).tolist(), np.round(value[is_int]).astype(np.int64).tolist()):
                text[i] = f"{v}i"
        start = np.ones(n, dtype=bool)
        start[1:] = (lines[1:] != lines[:-1]) | (ts[1:] != ts[:-1])
        end = np.ones(n, dtype=bool)
        end[:-1] = start[1:]
        prefix, key = self._line_prefix, self._field_key
        pieces = [(prefix[line] if first else ",") + key[sid] + v + (f" {t}\n" if last else "")
                  for line, sid, v, first, last, t in zip(lines.tolist(), series.tolist(), text, start.tolist(),
                                                           end.tolist(), ts.tolist())]
        return "".join(pieces).encode(), n


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
