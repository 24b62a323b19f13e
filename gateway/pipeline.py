"""Runs the pure pipelines/ stages over every batch the drivers emit."""
from __future__ import annotations

from collections import Counter

import numpy as np

from pipelines.batch import ReadingBatch


class Pipeline:
    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()

    def process(self, batch: ReadingBatch) -> ReadingBatch:
        finite = np.isfinite(batch.value)
        if not finite.all():
            # a NaN or inf from a device is not a reading: count it, never write it
            self.dropped["non_finite"] += int((~finite).sum())
            batch = batch.take(finite)
        return batch
