"""``cgw score``: the gateway's detector over an exported history (a CSV of ``timestamp,value``).

Integrators tune detector parameters on real history before they change a community's
configuration. The scores are exactly what the running gateway computes for a series of that kind
(same kernel, same parameters, same causal order), so what they see here is what alerts will do.

Timestamps: ISO 8601 (with an offset or ``Z``; without one it is taken as China Standard Time,
UTC+8, like the meters' own clocks) or epoch seconds (fractions allowed). Rows need not be evenly
spaced or sorted: they are scored in time order and written back in input order.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import numpy as np

from pipelines.batch import ReadingBatch
from pipelines.detect import REASON_NAMES, DetectorParams, DetectorState, pack_params, score_batch

CST = timezone(timedelta(hours=8))
KINDS = {"gauge": DetectorParams(), "counter": DetectorParams.counter(max_per_hour=250.0)}


class CsvError(ValueError):
    """A problem with the input file, naming the line."""


@dataclass
class Scored:
    raw_ts: list[str]
    value: np.ndarray
    score: np.ndarray
    reason: np.ndarray


def _parse_ts(text: str, line: int) -> int:
    t = text.strip()
    try:
        return int(round(float(t) * 1e9))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CsvError(f"line {line}: {text!r} is neither an ISO 8601 time nor epoch seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CST)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def read_series(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(raw timestamps, ts_ns, values); an empty or non-numeric value is a missing reading (NaN)."""
    raw, ts, values = [], [], []
    for line, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2:
            raise CsvError(f"line {line}: expected timestamp,value, got {row!r}")
        if line == 1 and not _looks_numeric(row[1]) and row[1].strip():
            try:
                _parse_ts(row[0], line)
            except CsvError:
                continue  # a header row
        ts.append(_parse_ts(row[0], line))
        raw.append(row[0])
        v = row[1].strip()
        values.append(float(v) if _looks_numeric(v) else np.nan)
    if not ts:
        raise CsvError("no rows with a timestamp and a value")
    return raw, np.array(ts, dtype=np.int64), np.array(values, dtype=np.float64)


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def score_series(raw: list[str], ts: np.ndarray, values: np.ndarray, kind: str = "gauge",
                 overrides: dict[str, float] | None = None) -> Scored:
    params = replace(KINDS[kind], **(overrides or {}))
    order = np.argsort(ts, kind="stable")
    batch = ReadingBatch.from_arrays(np.zeros(len(ts), dtype=np.int32), ts[order], values[order])
    score_sorted, reason_sorted = score_batch(batch, DetectorState(1), pack_params([params]),
                                              np.zeros(1, dtype=np.int32), np.array([kind == "counter"]))
    score = np.empty_like(score_sorted)
    reason = np.empty_like(reason_sorted)
    score[order] = score_sorted
    reason[order] = reason_sorted
    return Scored(raw, values, score, reason)


def write_scores(s: Scored, with_reason: bool = False) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["timestamp", "value", "anomaly_score"] + (["reason"] if with_reason else []))
    for i, t in enumerate(s.raw_ts):
        v = "" if np.isnan(s.value[i]) else repr(float(s.value[i]))
        row = [t, v, f"{float(s.score[i]):.4f}"]
        if with_reason:
            row.append(REASON_NAMES[int(s.reason[i])])
        w.writerow(row)
    return out.getvalue()
