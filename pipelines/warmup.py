"""Run every kernel once on tiny arrays so the gateway never compiles on its first poll.

Why: numba compiles on first call. With ``cache=True`` the machine code is stored next to the
sources (or in ``NUMBA_CACHE_DIR``) and later processes only load it, but the first process after
an install or upgrade would otherwise pay the whole compile in the middle of its first poll cycle.
Calling ``warm_up()`` at start-up moves that cost (or the cache load) to before the first poll.
The calls use exactly the dtypes and layouts of the production wrappers, so the compiled
specialisations are the ones the run loop uses.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from pipelines.batch import ReadingBatch
from pipelines.detect import AlertState, DetectorParams, DetectorState, ewma_zscore, pack_params, score_batch, update_alerts
from pipelines.intervals import IntervalState, accumulate_intervals, flush_intervals
from pipelines.rollup import rollup
from pipelines.validate import VeeParams, VeeState, pack_vee_params, validate_batch


def warm_up(threads: int = 1, before_each: Callable[[], object] | None = None) -> float:
    """Compile (or load from cache) every kernel of the core; returns the seconds it took.

    ``threads > 1`` also prepares the multi-threaded detector driver (``score_batch(threads=...)``).
    ``before_each`` is called before each kernel's first call (the gateway unmaps the file pages
    the previous compile touched, so the compiles' pages are never all resident at once).
    """
    t0 = time.perf_counter()
    step = before_each if before_each is not None else (lambda: None)
    minute = 60 * 1_000_000_000
    n = 8
    series = np.array([0, 1] * (n // 2), dtype=np.int32)
    ts = 1_700_000_000 * 1_000_000_000 + np.repeat(np.arange(n // 2, dtype=np.int64), 2) * minute
    value = np.array([1.0, 10.0, 1.5, 10.2, np.nan, 10.4, 2.5, 10.6])
    batch = ReadingBatch(series, ts, value, np.zeros(n, dtype=np.uint8))
    kinds = np.zeros(2, dtype=np.int32)
    counter = np.array([False, True])

    dstate = DetectorState(2)
    step()
    score, reason = score_batch(batch, dstate, pack_params([DetectorParams(warmup_samples=1)]), kinds, counter)
    step()
    update_alerts(batch.series, score, reason, AlertState(2))
    if threads > 1:
        from pipelines import detect

        saved = detect.PARALLEL_MIN_PER_THREAD
        detect.PARALLEL_MIN_PER_THREAD = 1
        try:
            score_batch(batch, DetectorState(2), pack_params([DetectorParams(warmup_samples=1)]), kinds, counter,
                        threads=2)
        finally:
            detect.PARALLEL_MIN_PER_THREAD = saved
    step()
    ewma_zscore(batch.series, batch.value, 0.1, np.zeros((2, 3)))

    step()
    vee = validate_batch(batch, VeeState(2), pack_vee_params([VeeParams()]), kinds, counter)
    meters = np.array([-1, 0], dtype=np.int32)
    istate = IntervalState(15 * minute, lateness_ns=minute, max_span_ns=2 * 3600 * 10**9, n_meters=1)
    step()
    rows, _ = accumulate_intervals(batch.series, batch.ts_ns, vee, meters, istate)
    rows = flush_intervals(istate)
    start = (int(ts[0]) // (15 * minute)) * 15 * minute
    step()
    rollup(rows, np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.bool_), 1, start, 2, 15 * minute)
    return time.perf_counter() - t0


if __name__ == "__main__":  # pragma: no cover
    print(f"warm-up took {warm_up():.3f} s")
