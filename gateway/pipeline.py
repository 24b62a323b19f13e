"""Runs the pure pipelines/ stages over every batch the drivers emit."""
from __future__ import annotations

from collections import Counter

import numpy as np

from pipelines.batch import QUALITY_STALE, ReadingBatch


class Pipeline:
    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self.stale_marks = 0  # points a failed poll marked stale: a gap, never a value

    def process(self, batch: ReadingBatch) -> ReadingBatch:
        stale = (batch.quality & QUALITY_STALE) != 0
        finite = np.isfinite(batch.value)
        n_stale = int(stale.sum())
        if n_stale:
            self.stale_marks += n_stale
        bad = ~finite & ~stale
        if bad.any():
            # a NaN or inf from a device is not a reading: count it, never write it
            self.dropped["non_finite"] += int(bad.sum())
        if n_stale or bad.any():
            batch = batch.take(finite & ~stale)
        return batch
