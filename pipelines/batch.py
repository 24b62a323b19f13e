"""The columnar batch every layer passes along: equal-length arrays, never an object per point."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Quality is a bit set so that several findings can stack on one reading.
QUALITY_GOOD = 0
QUALITY_ESTIMATED = 1 << 0
QUALITY_EDITED = 1 << 1
QUALITY_SUSPECT = 1 << 2
QUALITY_OUT_OF_RANGE = 1 << 3
QUALITY_STALE = 1 << 4

QUALITY_NAMES = {
    QUALITY_ESTIMATED: "estimated",
    QUALITY_EDITED: "edited",
    QUALITY_SUSPECT: "suspect",
    QUALITY_OUT_OF_RANGE: "out_of_range",
    QUALITY_STALE: "stale",
}


def _column(a: Sequence[int] | np.ndarray | int, dtype: type, n: int) -> np.ndarray:
    """``a`` as an ``n``-long array of ``dtype``: itself if it already is one, a scalar broadcast."""
    arr = np.asarray(a, dtype=dtype)
    if arr.ndim == 1 and len(arr) == n:
        # a read-only array (np.frombuffer, a broadcast view) is copied: the kernels are compiled
        # for writeable arrays, and another array type would mean another compile mid-poll
        return arr if arr.flags.writeable else arr.copy()
    if arr.ndim == 0 and arr == 0:
        return np.zeros(n, dtype=dtype)  # calloc: zero pages cost nothing until written
    return np.broadcast_to(arr, (n,)).copy()


@dataclass(slots=True)
class ReadingBatch:
    """Readings of many series: ``series`` ids from a SeriesRegistry, UTC ns timestamps, values, quality flags."""

    series: np.ndarray  # int32
    ts_ns: np.ndarray  # int64
    value: np.ndarray  # float64
    quality: np.ndarray  # uint8

    def __post_init__(self) -> None:
        n = len(self.series)
        if not (len(self.ts_ns) == len(self.value) == len(self.quality) == n):
            raise ValueError("ReadingBatch columns must have equal lengths")

    def __len__(self) -> int:
        return len(self.series)

    @classmethod
    def empty(cls) -> "ReadingBatch":
        return cls(
            np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.uint8)
        )

    @classmethod
    def from_arrays(
        cls,
        series: Sequence[int] | np.ndarray,
        ts_ns: Sequence[int] | np.ndarray | int,
        value: Sequence[float] | np.ndarray,
        quality: Sequence[int] | np.ndarray | int = QUALITY_GOOD,
    ) -> "ReadingBatch":
        """Build a batch, broadcasting a scalar timestamp or quality over all readings.

        Arrays that already have the column's dtype are used as they are, not copied (as for
        ``series`` and ``value``): a copy of a large batch costs more than the work on it.
        """
        s = np.asarray(series, dtype=np.int32)
        n = len(s)
        return cls(s, _column(ts_ns, np.int64, n), np.asarray(value, dtype=np.float64), _column(quality, np.uint8, n))

    @classmethod
    def concat(cls, batches: Sequence["ReadingBatch"]) -> "ReadingBatch":
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls(
            np.concatenate([b.series for b in batches]),
            np.concatenate([b.ts_ns for b in batches]),
            np.concatenate([b.value for b in batches]),
            np.concatenate([b.quality for b in batches]),
        )

    def take(self, mask_or_index: np.ndarray) -> "ReadingBatch":
        return ReadingBatch(
            self.series[mask_or_index],
            self.ts_ns[mask_or_index],
            self.value[mask_or_index],
            self.quality[mask_or_index],
        )
