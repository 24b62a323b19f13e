"""Dense series ids: (measurement, tags, field) -> int32, so numba state lives in arrays indexed by id."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.schema import measurement as lookup_measurement


@dataclass(frozen=True, slots=True)
class SeriesKey:
    measurement: str
    tags: tuple[tuple[str, str], ...]  # sorted by tag key
    field: str


class SeriesRegistry:
    """Assigns ids once per series (at configuration or first sight), never per point.

    Series sharing a measurement and tag set share a ``line_id``: the encoder writes their values
    at one timestamp as one line-protocol line.
    """

    def __init__(self) -> None:
        self._ids: dict[SeriesKey, int] = {}
        self.keys: list[SeriesKey] = []
        self._line_ids: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.lines: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self._line_of = np.empty(64, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.keys)

    def register(self, measurement: str, tags: dict[str, str], field: str) -> int:
        """Return the id of a series, creating it; unknown measurements, tags or fields are errors."""
        m = lookup_measurement(measurement)
        m.field(field)
        unknown = set(tags) - set(m.tags)
        if unknown:
            raise KeyError(f"measurement {measurement!r} has no tag(s) {sorted(unknown)}")
        tag_items = tuple(sorted((k, str(v)) for k, v in tags.items() if v is not None and str(v) != ""))
        key = SeriesKey(measurement, tag_items, field)
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        line_key = (measurement, tag_items)
        line_id = self._line_ids.get(line_key)
        if line_id is None:
            line_id = len(self.lines)
            self._line_ids[line_key] = line_id
            self.lines.append(line_key)
        sid = len(self.keys)
        self._ids[key] = sid
        self.keys.append(key)
        if sid >= len(self._line_of):  # grow by doubling: amortised O(1) and arrays stay contiguous
            grown = np.empty(len(self._line_of) * 2, dtype=np.int32)
            grown[: len(self._line_of)] = self._line_of
            self._line_of = grown
        self._line_of[sid] = line_id
        return sid

    def lookup(self, measurement: str, tags: dict[str, str], field: str) -> int | None:
        tag_items = tuple(sorted((k, str(v)) for k, v in tags.items() if v is not None and str(v) != ""))
        return self._ids.get(SeriesKey(measurement, tag_items, field))

    @property
    def line_of(self) -> np.ndarray:
        """line id per series id (a view; valid up to len(self))."""
        return self._line_of[: len(self.keys)]
