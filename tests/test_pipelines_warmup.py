"""warm_up() runs every kernel once, so the gateway never compiles on its first poll; with an empty
numba cache it compiles in two processes at once (a forked child fills the cache with the alert,
VEE, interval and roll-up kernels while this process compiles the detector)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.warmup import warm_up

REPO = Path(__file__).resolve().parents[1]

# Runs warm_up in a fresh process and reports, per kernel, whether this process compiled it or
# loaded it from the cache, whether a compile child was forked, and what the kernels compute.
WARM_UP_AND_REPORT = """
import json, os, sys
import numpy as np
import pipelines.warmup as W
forked = []
real_fork = W._fork_compiler
def fork(work):
    if {child_fails}:  # a child that dies before compiling anything
        pid = os.fork()
        if pid == 0:
            os._exit(3)
        forked.append(pid)
        return pid
    pid = real_fork(work)
    forked.append(pid)
    return pid
W._fork_compiler = fork
W.warm_up()
from pipelines.detect import _alert_kernel, _score_kernel
from pipelines.intervals import _interval_kernel
from pipelines.rollup import _rollup_kernel
from pipelines.validate import _vee_kernel
how = {{k.py_func.__name__: ("compiled" if sum(k.stats.cache_misses.values()) else
                            "loaded" if sum(k.stats.cache_hits.values()) else "?")
        for k in (_score_kernel, _alert_kernel, _vee_kernel, _interval_kernel, _rollup_kernel)}}
sys.path.insert(0, {tests!r})
from test_pipelines_warmup import energy_sample
print(json.dumps({{"how": how, "forked": len(forked), "energy": energy_sample()}}))
"""


def energy_sample() -> list:
    """Intervals of two meters over an hour with a rollover, through VEE, intervals and roll-up."""
    from pipelines.batch import ReadingBatch
    from pipelines.intervals import IntervalState, accumulate_intervals, concat_rows, flush_intervals
    from pipelines.rollup import rollup
    from pipelines.validate import VeeParams, VeeState, pack_vee_params, validate_batch

    minute = 60 * 10**9
    t = 1_700_000_000 * 10**9 + np.arange(60, dtype=np.int64) * minute
    kwh = np.r_[99_995.0 + np.arange(30) * 0.1, 0.4 + np.arange(30) * 0.1]  # wraps at 100,000: +2.5 kWh
    series = np.repeat(np.array([0, 1], dtype=np.int32), 60)
    batch = ReadingBatch.from_arrays(series, np.r_[t, t], np.r_[kwh, np.arange(60) * 0.1])
    counter = np.ones(2, dtype=bool)
    vee = validate_batch(batch, VeeState(2), pack_vee_params([VeeParams()]), np.zeros(2, np.int32), counter)
    state = IntervalState(15 * minute, n_meters=2)
    rows, _ = accumulate_intervals(batch.series, batch.ts_ns, vee, np.arange(2, dtype=np.int32), state)
    rows = concat_rows([rows, flush_intervals(state)])
    start = (int(t[0]) // (15 * minute)) * 15 * minute
    r = rollup(rows, np.zeros(2, dtype=np.int32), np.zeros(2, dtype=bool), 1, start, 5, 15 * minute)
    return [vee.delta[np.isfinite(vee.delta)].tolist(), rows.energy_kwh.tolist(), r.buildings.load_kwh.tolist()]


def _run(cache: Path, child_fails: bool = False) -> dict:
    code = WARM_UP_AND_REPORT.format(child_fails=child_fails, tests=str(REPO / "tests"))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_warm_up_runs_every_kernel():
    assert warm_up() >= 0.0
    # a second call only runs the compiled code
    assert warm_up() < 1.0


def test_empty_cache_compiles_in_two_processes_then_a_warm_cache_forks_nothing(tmp_path: Path):
    expected = energy_sample()
    cold = _run(tmp_path / "cache")
    assert cold["forked"] == 1
    # the detector compiled here; the other kernels came from the cache the child filled
    assert cold["how"] == {"_score_kernel": "compiled", "_alert_kernel": "loaded", "_vee_kernel": "loaded",
                           "_interval_kernel": "loaded", "_rollup_kernel": "loaded"}
    assert cold["energy"] == expected
    # the rollover was corrected (meter 0: 2.9 + 2.5 + 2.9 kWh, meter 1: 5.9): the comparison compares something
    assert abs(sum(expected[1]) - 14.2) < 1e-9
    warm = _run(tmp_path / "cache")
    assert warm["forked"] == 0
    assert set(warm["how"].values()) == {"loaded"}
    assert warm["energy"] == expected


def test_a_compile_child_that_dies_leaves_this_process_to_compile_everything(tmp_path: Path):
    got = _run(tmp_path / "cache", child_fails=True)
    assert got["forked"] == 1
    assert set(got["how"].values()) == {"compiled"}
    assert got["energy"] == energy_sample()


SIGNAL_TO_THE_CHILD = """
import asyncio, json, os, signal, time
import pipelines.warmup as W
seen = []

async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: seen.append("TERM"))
    # forked from a worker thread while the loop waits, as the gateway's warm-up is
    pid = await asyncio.to_thread(W._fork_compiler, lambda: time.sleep(30))
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    ok = await asyncio.to_thread(W._wait, pid, 20)
    await asyncio.sleep(0.3)  # time for a wake-up byte to reach this loop, if one was sent
    print(json.dumps({"seen": seen, "child_ok": ok, "child_s": time.monotonic() - t0}))

asyncio.run(main())
"""


def test_a_signal_to_the_compile_child_is_the_childs_alone():
    done = subprocess.run([sys.executable, "-c", SIGNAL_TO_THE_CHILD], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["seen"] == []  # the gateway's event loop never saw the child's SIGTERM
    assert got["child_ok"] is False and got["child_s"] < 10  # the child died of it, at once
