"""Detection accuracy on the firmware-sim fault catalogue: precision, recall, F1 and delay per kind.

    .venv/bin/python benchmarks/bench_accuracy.py [--catalogue firmware-sim/scenarios/fault-catalogue.toml]

The catalogue's meters (firmware-sim's device models, with its load curves and injected faults) are
read at every poll time of the simulated days. Each answer goes through the meter's register map
(device side) and the gateway's profile decoder, exactly the words a Modbus poll carries; a meter
that does not answer produces what the poller produces (stale marks and a device_health point). The
batches run through the gateway's own ``Analytics`` (VEE, detectors, alert hysteresis, rules), with
default parameters: nothing is tuned per series. Raised alerts are then matched to the ground truth.

An alert matches a fault when it is on the same device, its rule belongs to the fault's family, and
it is raised between the fault's start and its end plus a grace period (the detector's own window:
flatline needs an hour of identical values). Precision per kind counts the alerts of the kind's
family that match no fault of that kind; recall counts faults with at least one matching alert.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.modbus.blocks import ProfileDecoder, plan_blocks  # noqa: E402
from drivers.modbus.profile import load_profiles  # noqa: E402
from firmware_sim.faults import load_catalogue  # noqa: E402
from firmware_sim.loads import LoadModel  # noqa: E402
from firmware_sim.modbus_meter import SimMeter  # noqa: E402
from firmware_sim.register_map import load_register_map  # noqa: E402
from gateway.analytics import Analytics, AnalyticsSettings  # noqa: E402
from pipelines.batch import QUALITY_STALE, ReadingBatch  # noqa: E402
from pipelines.series import SeriesRegistry  # noqa: E402

# which alert rules detect which fault kind (suffix after anomaly_<field>_ is the detector's reason)
FAMILY = {
    "spike": lambda r: r.endswith("_spike"),
    "level_shift": lambda r: r.endswith("_level") or r.endswith("_seasonal"),
    "drift": lambda r: r.endswith("_level") or r.endswith("_seasonal"),
    "stuck": lambda r: r == "meter_stuck" or r.endswith("_flatline"),
    "rollover": lambda r: r.endswith("_counter"),
    "replacement": lambda r: r.endswith("_counter"),
    "offline": lambda r: r == "device_offline",
}
GRACE_S = {"stuck": 2 * 3600, "offline": 600, "spike": 300, "rollover": 600, "replacement": 600,
           "level_shift": 600, "drift": 600}


def simulate(catalogue_path: str) -> tuple[list, list, dict]:
    cat = load_catalogue(catalogue_path)
    profiles = load_profiles()
    reg = SeriesRegistry()
    buildings = sorted({m.building for m in cat.meters})
    analytics = Analytics(reg, AnalyticsSettings(site="bench"), buildings)
    clock = {"t": cat.start_s}
    meters = []
    for m in cat.meters:
        prof = profiles[m.profile]
        rmap = load_register_map(m.profile)
        sim = SimMeter(m.device, 1, rmap, LoadModel("household", cat.seed, m.device), start_kwh=m.start_kwh,
                       clock_ns=lambda: int(clock["t"] * 1e9), faults=cat.fresh_faults(m.device))
        blocks = plan_blocks(prof.registers, prof.max_block_registers, prof.max_gap)
        tags = {"site": "bench", "building": m.building, "device": m.device, "model": m.profile}
        ids = np.array([reg.register("energy_meter", tags, r.field) for r in prof.registers], dtype=np.int32)
        health = {"site": "bench", "device": m.device, "driver": "modbus"}
        hids = np.array([reg.register("device_health", health, f) for f in ("online", "stale")], dtype=np.int32)
        by_field = {r.field: r for r in rmap.registers}
        meters.append((m, sim, prof, blocks, ProfileDecoder(prof, blocks), ids, hids, by_field))
    events = []
    n_polls = int(cat.days * 86400 / cat.poll_interval_s)
    points = 0
    t0 = time.perf_counter()
    for k in range(1, n_polls + 1):
        t = cat.start_s + k * cat.poll_interval_s
        clock["t"] = t
        batches = []
        for m, sim, prof, blocks, decoder, ids, hids, by_field in meters:
            ts = int(t * 1e9)
            served = sim.served_at(t)
            if served is None:  # what the poller emits for a failed poll
                batches.append(ReadingBatch.from_arrays(ids, ts, np.full(len(ids), np.nan), QUALITY_STALE))
                batches.append(ReadingBatch.from_arrays(hids, ts, [0.0, 1.0]))
                continue
            words = []
            for b in blocks:  # the register words one block read returns
                block = [0] * b.count
                for r in prof.registers:
                    if r.function == b.function and b.address <= r.address < b.address + b.count:
                        w = by_field[r.field].encode(served.get(r.field, 0.0))
                        block[r.address - b.address:r.address - b.address + len(w)] = w
                words += block
            values = decoder.decode(np.array(words, dtype=np.uint16))
            batches.append(ReadingBatch.from_arrays(ids, ts, values))
            batches.append(ReadingBatch.from_arrays(hids, ts, [1.0, 0.0]))
        batch = ReadingBatch.concat(batches)
        # the stale marks are dropped by the gateway's pipeline before the core sees them
        batch = batch.take((batch.quality & QUALITY_STALE) == 0)
        points += len(batch)
        _, ev = analytics.process(batch)
        events += ev
        events += analytics.tick(int(t * 1e9))
    took = time.perf_counter() - t0
    truth = [f.ground_truth() for f in cat.faults]
    return events, truth, {"polls": n_polls * len(meters), "points": points, "seconds": took,
                           "meters": len(meters), "days": cat.days}


def score(events: list, truth: list) -> dict:
    raised = [e for e in events if e.raised]
    out = {}
    for kind, family in FAMILY.items():
        faults = [f for f in truth if f["kind"] == kind]
        fam_alerts = [e for e in raised if family(e.rule)]
        matched_alerts = set()
        delays = []
        detected = 0
        for f in faults:
            lo, hi = f["start_ns"], f["end_ns"] + GRACE_S[kind] * 10**9
            hits = [i for i, e in enumerate(fam_alerts) if e.device == f["device"] and lo <= e.ts_ns <= hi]
            if hits:
                detected += 1
                delays.append((min(fam_alerts[i].ts_ns for i in hits) - lo) / 1e9)
            matched_alerts.update(hits)
        # an alert of this family that no fault of this kind explains is false, unless another
        # injected fault on that device explains it (a level shift's first step looks like a spike):
        # that one is a true anomaly with another label, counted apart
        fp = other = 0
        for i, e in enumerate(fam_alerts):
            if i in matched_alerts:
                continue
            if any(e.device == f["device"] and f["start_ns"] <= e.ts_ns <= f["end_ns"] + GRACE_S[f["kind"]] * 10**9
                   for f in truth):
                other += 1
            else:
                fp += 1
        tp = len(matched_alerts)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = detected / len(faults) if faults else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[kind] = {"faults": len(faults), "detected": detected, "alerts": tp, "false_alerts": fp, "other_fault": other,
                     "precision": precision, "recall": recall, "f1": f1,
                     "delay_s": float(np.median(delays)) if delays else float("nan")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalogue", default=str(REPO / "firmware-sim/scenarios/fault-catalogue.toml"))
    args = ap.parse_args()
    events, truth, stats = simulate(args.catalogue)
    result = score(events, truth)
    print(f"\nfault catalogue: {stats['meters']} meters, {stats['days']:g} simulated days, {stats['polls']:,} polls, "
          f"{stats['points']:,} points through the gateway's core in {stats['seconds']:.1f} s\n")
    print(f"{'kind':<13} {'faults':>6} {'found':>6} {'alerts':>6} {'other':>6} {'false':>6} {'precision':>9} "
          f"{'recall':>7} {'F1':>5} {'median delay':>13}")
    for kind, r in result.items():
        print(f"{kind:<13} {r['faults']:>6} {r['detected']:>6} {r['alerts']:>6} {r['other_fault']:>6} {r['false_alerts']:>6} "
              f"{r['precision']:>9.2f} {r['recall']:>7.2f} {r['f1']:>5.2f} {r['delay_s']:>11.0f} s")
    unexplained = [e for e in events if e.raised and not any(
        e.device == f["device"] and f["start_ns"] <= e.ts_ns <= f["end_ns"] + GRACE_S[f["kind"]] * 10**9
        for f in truth)]
    print("\nalerts: one per series and detector while it stays raised; other = explained by another injected fault")
    print(f"alerts raised: {sum(e.raised for e in events)}, matching no injected fault: {len(unexplained)}")
    for e in unexplained[:15]:
        print(f"  {e.device:<7} {e.rule:<40} at +{(e.ts_ns / 1e9 - load_catalogue(args.catalogue).start_s) / 3600:.2f} h")


if __name__ == "__main__":
    main()
