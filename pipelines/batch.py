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
        """Build a batch, broadcasting a scalar timestamp or quality over all readings."""
        s = np.asarray(series, dtype=np.int32)
        n = len(s)
        t = np.broadcast_to(np.asarray(ts_ns, dtype=np.int64), (n,)).copy()
        v = np.asarray(value, dtype=np.float64)
        q = np.broadcast_to(np.asarray(quality, dtype=np.uint8), (n,)).copy()
        return cls(s, t, v, q)

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
