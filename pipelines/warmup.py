"""Run every kernel the gateway uses once on tiny arrays, so it never compiles on its first poll.

Why: numba compiles on first call. With ``cache=True`` the machine code is stored next to the
sources (or in ``NUMBA_CACHE_DIR``) and later processes only load it, but the first process after
an install or upgrade would otherwise pay the whole compile in the middle of its first poll cycle.
Calling ``warm_up()`` at start-up moves that cost (or the cache load) to before the first poll.
The calls use exactly the dtypes and layouts of the production wrappers, so the compiled
specialisations are the ones the run loop uses.

With an empty cache the kernels are compiled in two processes at once: numba compiles under one
global lock, almost all of it in Python (type inference and lowering; LLVM itself is ~1/4), so a
second thread gains nothing, but a forked child that compiles the alert, VEE, interval and roll-up
kernels into the cache while this process compiles the detector kernel (about as long) takes the
wall time on two cores from ~4 s to ~2.2 s here (docs/core.md). numba's one-time set-up is done
before the fork, so the child inherits it. This process then loads the child's kernels from the
cache (milliseconds). If the child fails, takes too long or cannot write the cache, this process
compiles them itself: slower, never different.
``ewma_zscore`` is not warmed: it is the benchmarks' reference statistic, the gateway never runs it.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from typing import Callable

import numpy as np

from pipelines.batch import ReadingBatch
from pipelines.detect import (
    AlertState,
    DetectorParams,
    DetectorState,
    _alert_kernel,
    pack_params,
    score_batch,
    update_alerts,
)
from pipelines.intervals import IntervalState, _interval_kernel, accumulate_intervals, flush_intervals
from pipelines.rollup import _rollup_kernel, rollup
from pipelines.validate import VeeParams, VeeState, _vee_kernel, pack_vee_params, validate_batch

MINUTE_NS = 60 * 1_000_000_000
CHILD_TIMEOUT_S = 120.0  # a compile child that takes longer is killed; this process compiles instead
_OTHER_KERNELS = (_alert_kernel, _vee_kernel, _interval_kernel, _rollup_kernel)


def _tiny_batch() -> tuple[ReadingBatch, np.ndarray, np.ndarray]:
    n = 8
    series = np.array([0, 1] * (n // 2), dtype=np.int32)
    ts = 1_700_000_000 * 1_000_000_000 + np.repeat(np.arange(n // 2, dtype=np.int64), 2) * MINUTE_NS
    value = np.array([1.0, 10.0, 1.5, 10.2, np.nan, 10.4, 2.5, 10.6])
    return ReadingBatch(series, ts, value, np.zeros(n, dtype=np.uint8)), np.zeros(2, dtype=np.int32), \
        np.array([False, True])


def _detector_kernels(step: Callable[[], object], threads: int) -> None:
    batch, kinds, counter = _tiny_batch()
    step()
    score_batch(batch, DetectorState(2), pack_params([DetectorParams(warmup_samples=1)]), kinds, counter)
    if threads > 1:
        from pipelines import detect

        saved = detect.PARALLEL_MIN_PER_THREAD
        detect.PARALLEL_MIN_PER_THREAD = 1
        try:
            score_batch(batch, DetectorState(2), pack_params([DetectorParams(warmup_samples=1)]), kinds, counter,
                        threads=2)
        finally:
            detect.PARALLEL_MIN_PER_THREAD = saved


def _other_kernels(step: Callable[[], object]) -> None:
    # the alerts, VEE, intervals and roll-up: about as long to compile as the detector kernel
    batch, kinds, counter = _tiny_batch()
    step()
    score = np.array([0.0, 0.9, 0.0, 0.9, 0.0, 0.1, 0.0, 0.1], dtype=np.float32)
    update_alerts(batch.series, score, np.ones(len(score), dtype=np.uint8), AlertState(2))
    step()
    vee = validate_batch(batch, VeeState(2), pack_vee_params([VeeParams()]), kinds, counter)
    meters = np.array([-1, 0], dtype=np.int32)
    istate = IntervalState(15 * MINUTE_NS, lateness_ns=MINUTE_NS, max_span_ns=2 * 3600 * 10**9, n_meters=1)
    step()
    accumulate_intervals(batch.series, batch.ts_ns, vee, meters, istate)
    rows = flush_intervals(istate)
    start = (int(batch.ts_ns[0]) // (15 * MINUTE_NS)) * 15 * MINUTE_NS
    step()
    rollup(rows, np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.bool_), 1, start, 2, 15 * MINUTE_NS)


def _in_cache(kernel) -> bool:
    """Whether numba's cache holds a current entry for ``kernel`` (an index that matches its source).

    Reads numba's cache index (not a public API: if numba changes it, this says False and the only
    cost is a child that loads from the cache instead of compiling)."""
    try:
        return bool(kernel._cache._cache_file._load_index())
    except Exception:  # noqa: BLE001 - any change in numba's internals means "don't know"
        return False


def _initialise_compiler() -> None:
    """What numba does at the first compile of a process (~0.3 s here: its typing and target
    registries and LLVM's set-up), done by compiling a one-line function."""
    import numba

    numba.njit(lambda x: x + 1)(1)


def _fork_compiler(work: Callable[[], None]) -> int | None:
    """Run ``work`` in a forked child (its kernels land in numba's cache); the child's pid, or None
    where there is no fork or one core only (a child would only take turns with this process)."""
    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        return None
    # SIGINT and SIGTERM stay blocked in the child until it has dropped the parent's handlers (the
    # mask is this thread's, and the child inherits it; the process' other threads take them)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with warnings.catch_warnings():  # Python 3.12+ warns when forking a process with threads: the
        warnings.simplefilter("ignore", DeprecationWarning)  # child only compiles and _exits
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            return None
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid
    code = 1
    try:
        _detach_from_parent()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        work()
        code = 0
    finally:
        os._exit(code)  # never returns into the caller's code, never runs its atexit or flushes


def _detach_from_parent() -> None:
    """In the compile child: what it inherited from a running gateway must not act for it."""
    # A signal to the child takes its default action (the gateway's handlers would otherwise run
    # here, and asyncio's wake-up fd, shared with the parent, would hand the parent's event loop a
    # signal the parent never got). After a fork the forking thread is the main thread.
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
    except ValueError:  # (not the main thread: cannot happen after a fork, but never fail here)
        pass
    # Its own stdout and stderr objects: another thread of the parent may have held their locks at
    # the fork, and a warning written here would then wait for ever.
    sys.stdout = sys.stderr = open(os.devnull, "w")


def _wait(pid: int, timeout_s: float) -> bool:
    """Wait for the compile child; True when it exited cleanly. Polls: the gateway's event loop may
    have a child watcher of its own, and a blocking wait could not time out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the cache says whether it finished
            return False
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.002)


def warm_up(threads: int = 1, before_each: Callable[[], object] | None = None,
            parallel: bool = True) -> float:
    """Compile (or load from cache) every kernel the gateway runs; returns the seconds it took.

    ``threads > 1`` also prepares the multi-threaded detector driver (``score_batch(threads=...)``).
    ``before_each`` is called before each kernel's first call (the gateway unmaps the file pages
    the previous compile touched, so the compiles' pages are never all resident at once).
    ``parallel``: compile the alert and energy kernels in a forked child when they are not in the cache.
    """
    t0 = time.perf_counter()
    step = before_each if before_each is not None else (lambda: None)
    child = None
    if parallel and not all(_in_cache(k) for k in _OTHER_KERNELS):
        _initialise_compiler()  # once, before the fork: the child inherits it instead of paying it
        child = _fork_compiler(lambda: _other_kernels(step))
    _detector_kernels(step, threads)
    if child is not None:
        _wait(child, CHILD_TIMEOUT_S)
    _other_kernels(step)  # from the cache the child filled (or compiled here if it could not)
    return time.perf_counter() - t0


if __name__ == "__main__":  # pragma: no cover
    print(f"warm-up took {warm_up():.3f} s")
