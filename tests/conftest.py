"""Real services for the tests: a private mosquitto and a private influxd on free loopback ports.

A missing binary fails the run with the command that installs it; nothing is skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from gateway.devservices import MissingBinary, Service, start_influxd, start_mosquitto, start_victoria_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory) -> Service:
    try:
        svc = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    except MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory) -> Service:
    try:
        svc = start_influxd(tmp_path_factory.mktemp("influxd"))
    except MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    yield svc
    svc.stop()


class Influx:
    def __init__(self, svc: Service) -> None:
        self.url = f"http://{svc.host}:{svc.port}"

    def query(self, q: str, db: str) -> list[dict]:
        params = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"})
        with urllib.request.urlopen(f"{self.url}/query?{params}", timeout=10) as r:
            doc = json.load(r)
        for res in doc.get("results", []):
            if "error" in res:
                if res["error"].startswith("database not found"):
                    return []  # sinks create their database with the first delivery: no data yet
                raise AssertionError(f"InfluxDB query error: {res['error']} ({q})")
        return [s for res in doc.get("results", []) for s in res.get("series", [])]

    def rows(self, q: str, db: str) -> list[dict]:
        """Query result as dicts, one per row, with the series' tags merged in."""
        out = []
        for s in self.query(q, db):
            for values in s["values"]:
                row = dict(zip(s["columns"], values))
                row.update(s.get("tags", {}))
                out.append(row)
        return out


@pytest.fixture(scope="session")
def influx(influxd) -> Influx:
    return Influx(influxd)


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory) -> Service:
    """A private VictoriaMetrics standing in for an InfluxDB 2.x/3.x target (/api/v2/write)."""
    try:
        svc = start_victoria_metrics(tmp_path_factory.mktemp("victoria-metrics"))
    except MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    yield svc
    svc.stop()


class Victoria:
    def __init__(self, svc: Service) -> None:
        self.url = f"http://{svc.host}:{svc.port}"

    def export(self, match: str) -> dict[tuple, dict[int, float]]:
        """Raw samples of the series matching a selector: {(name, sorted labels): {ms: value}}."""
        # make what was just written searchable now instead of within the next seconds
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).close()
        params = urllib.parse.urlencode({"match[]": match})
        out: dict[tuple, dict[int, float]] = {}
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{params}", timeout=10) as r:
            for line in r.read().decode().splitlines():
                doc = json.loads(line)
                labels = dict(doc["metric"])
                name = labels.pop("__name__")
                key = (name, tuple(sorted(labels.items())))
                samples = out.setdefault(key, {})
                for ts, value in zip(doc["timestamps"], doc["values"]):
                    # the same point written twice is harmless; twice with different values is a bug
                    assert samples.get(ts, value) == value, f"{key} at {ts}: {samples[ts]} and {value}"
                    samples[ts] = value
        return out


@pytest.fixture(scope="session")
def victoria(victoria_metrics) -> Victoria:
    return Victoria(victoria_metrics)


def run_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kw)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
