"""`cgw score`: the gateway's detector over a CSV history, any timestamp format and sampling."""
from __future__ import annotations

import csv

import numpy as np

from gateway.score_csv import read_series, score_series
from tests.conftest import run_cli


def write_history(path, n=300, spike_at=200, iso=True, irregular=False):
    rng = np.random.default_rng(5)
    t = 1_767_225_600.0
    rows = []
    for i in range(n):
        t += 60.0 + (rng.uniform(-20, 20) if irregular else 0.0)
        v = 1000 + rng.normal(0, 15)
        if i == spike_at:
            v = 8000.0
        ts = f"{np.datetime64(int(t), 's')}Z" if iso else f"{t:.3f}"
        rows.append((ts, f"{v:.3f}"))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        w.writerows(rows)
    return rows


def test_score_csv_flags_the_spike(tmp_path):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    rows = write_history(src)
    r = run_cli("score", "--input", str(src), "--output", str(dst), "--reason")
    assert r.returncode == 0, r.stderr
    assert "300 rows scored" in r.stdout
    out = list(csv.DictReader(open(dst)))
    assert [o["timestamp"] for o in out] == [ts for ts, _ in rows]  # input order, input text kept
    assert [o["value"] for o in out] == [repr(float(v)) for _, v in rows]
    scores = np.array([float(o["anomaly_score"]) for o in out])
    assert scores[200] >= 0.8 and out[200]["reason"] == "spike"
    assert (scores[:30] == 0).all()  # warm-up
    assert (np.delete(scores, [200, 201]) < 0.8).all()


def test_epoch_seconds_irregular_and_unsorted_give_the_same_scores(tmp_path):
    src = tmp_path / "in.csv"
    write_history(src, iso=False, irregular=True)
    raw, ts, values = read_series(src.read_text())
    a = score_series(raw, ts, values)
    perm = np.random.default_rng(1).permutation(len(ts))
    b = score_series([raw[i] for i in perm], ts[perm], values[perm])
    assert np.array_equal(a.score[perm], b.score)  # scored in time order, whatever the file order
    assert a.score.max() >= 0.8


def test_iso_without_offset_is_china_time_and_bad_rows_name_the_line(tmp_path):
    raw, ts, _ = read_series("timestamp,value\n2026-01-01T08:00:00,1\n2026-01-01T00:00:00Z,2\n")
    assert ts[0] == ts[1]
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2026-01-01T08:00:00,1\nyesterday,2\n")
    r = run_cli("score", "--input", str(bad), "--output", str(tmp_path / "o.csv"))
    assert r.returncode == 1 and "line 3: 'yesterday' is neither an ISO 8601 time nor epoch seconds" in r.stderr
    r = run_cli("score", "--input", str(bad), "--output", str(tmp_path / "o.csv"), "--param", "colour=1")
    assert r.returncode == 2 and "unknown parameter 'colour'" in r.stderr


def test_missing_values_score_zero(tmp_path):
    raw, ts, values = read_series("1767225600,1\n1767225660,\n1767225720,3\n")
    assert np.isnan(values[1])
    s = score_series(raw, ts, values)
    assert s.score[1] == 0
