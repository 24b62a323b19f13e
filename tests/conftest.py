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

from gateway.devservices import MissingBinary, Service, start_influxd, start_mosquitto

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
