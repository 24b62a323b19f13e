"""Faults with real processes: `cgw run` reading firmware-sim devices while its target misbehaves.

(a) the gateway's own influxd is terminated for 60 s and started again on the same port and data
    directory: every reading taken during the outage lands, once;
(b) the gateway is killed with SIGKILL and started again on the same data directory: every
    reading that had been committed to the outbox lands;
(c) a misbehaving server (500s, 429 + Retry-After, partial 400s, answers slower than the timeout):
    the gateway keeps reading, the queue grows and drains, refused lines become dead letters.

Stored values are compared with what the simulated devices served (firmware-sim's served log).
"""
from __future__ import annotations

import gzip
import json
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest
import tomli_w

from firmware_sim.scenario import Scenario, gateway_config
from gateway.devservices import free_port, start_influxd
from gateway.sinks.outbox import Outbox
from tests.conftest import Influx, run_cli, wait_for
from tests.misbehaving_http import MisbehavingInflux
from tests.test_end_to_end import SENSORS, served_records, start, stop

POLL_S = 0.5
METERS = [
    {"device": "f-101", "unit_id": 1, "profile": "sdm630", "building": "B1", "start_kwh": 1520.25,
     "poll_interval_s": POLL_S},
    {"device": "f-102", "unit_id": 2, "profile": "sdm120", "building": "B1", "start_kwh": 88.5,
     "poll_interval_s": POLL_S},
    {"device": "f-common", "unit_id": 7, "profile": "dtsu666", "building": "B2", "kind": "common",
     "start_kwh": 20411.0, "poll_interval_s": POLL_S},
]
MEASUREMENTS = ("energy_meter", "parking_bay", "device_health")


def logfmt(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def status_lines(log: Path) -> list[dict[str, str]]:
    return [logfmt(line) for line in log.read_text().splitlines() if "event=status " in line]


def stopped_total(log: Path) -> int:
    lines = [line for line in log.read_text().splitlines() if "event=stopped" in line]
    assert lines, log.read_text()[-3000:]
    return int(logfmt(lines[-1])["readings_total"])


def polls_stored(influx: Influx, db: str) -> int:
    try:
        return len(influx.rows("SELECT energy_import FROM energy_meter", db))
    except AssertionError:  # the gateway has not created the database yet
        return 0


def count_all(influx: Influx, db: str) -> int:
    total = 0
    for meas in MEASUREMENTS:
        for s in influx.query(f"SELECT count(*) FROM {meas}", db):
            total += sum(v for v in s["values"][0][1:] if isinstance(v, int))
    return total


def check_meters_against_served(rows: list[dict], records: list[dict]) -> int:
    """Every stored meter value was served to that device in the two seconds before its timestamp."""
    served: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["kind"] == "modbus":
            for field, value in r["values"].items():
                served[(r["device"], field)].append((r["t_ns"], value))
    checked = 0
    # a poll reads several register blocks; on a busy 2-core machine they can spread over a second
    # and more before the answer is stamped
    window = 2.0e9
    for row in rows:
        ts = row["time"]
        for field, value in row.items():
            if field in ("time", "site", "building", "device", "model") or value is None:
                continue
            candidates = [v for t, v in served[(row["device"], field)] if ts - window <= t <= ts]
            assert value in candidates, f"{row['device']}.{field}={value!r} at {ts} not among served {candidates}"
            checked += 1
    return checked


def write_config(tmp_path: Path, scenario: Scenario, url: str, db: str, **sink: object) -> Path:
    cfg = gateway_config(scenario, url, db, str(tmp_path / "data"), status_interval_s=1.0)
    cfg["sinks"][0].update(sink)
    # the sink is under test: readings only, no derived analytics points, so counts compare exactly
    cfg["analytics"] = {"enabled": False}
    if "mqtt" in cfg:
        cfg["mqtt"]["client_id"] = f"cgw-faults-{time.time_ns()}"
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def scenario_file(tmp_path: Path, mqtt=None) -> tuple[Scenario, Path]:
    doc = {"sim": {"seed": 11, "site": "fault-community", "tick_s": 0.2},
           "modbus_tcp": {"host": "127.0.0.1", "port": free_port()}, "meters": METERS}
    if mqtt is not None:
        doc["mqtt"] = {"host": mqtt.host, "port": mqtt.port}
        doc["parking"] = SENSORS
    scenario = Scenario.model_validate(doc)
    path = tmp_path / "scenario.toml"
    path.write_text(tomli_w.dumps(scenario.model_dump(exclude_none=True)))
    return scenario, path


TAGS = {"energy_meter": ("site", "building", "device", "model"), "device_health": ("site", "device", "driver")}


def stored_points(influx: Influx, db: str) -> dict[tuple, float]:
    """(measurement, tags, field, ts) -> value for every point of the polled measurements."""
    out = {}
    for meas, tag_keys in TAGS.items():
        for r in influx.rows(f"SELECT * FROM {meas} GROUP BY *", db):
            tags = frozenset((k, r[k]) for k in tag_keys if r.get(k))
            for key, value in r.items():
                if key not in tag_keys and key != "time" and value is not None:
                    out[(meas, tags, key, r["time"])] = float(value)
    return out


def snapshot_points(snapshot: dict[tuple[bytes, bytes, int], bytes]) -> dict[tuple, float]:
    out = {}
    for (series, key, ts), value in snapshot.items():
        meas, *tag_pairs = series.decode().split(",")
        tags = frozenset(tuple(t.split("=", 1)) for t in tag_pairs)
        out[(meas, tags, key.decode(), ts)] = float(value.decode().rstrip("i"))
    return out


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(5)


@pytest.mark.timeout(180)
def test_influxd_down_for_60s_loses_nothing(tmp_path, mosquitto, procs):
    influxd = start_influxd(tmp_path / "influxd")
    influx = Influx(influxd)
    db = "outage"
    try:
        scenario, scenario_path = scenario_file(tmp_path, mqtt=mosquitto)
        config = write_config(tmp_path, scenario, influx.url, db, retry_max_s=2.0)
        gw_log, served = tmp_path / "gateway.log", tmp_path / "served.jsonl"
        gw = start(["-m", "gateway.cli", "run", "-c", str(config)], gw_log)
        procs.append(gw)
        wait_for(lambda: "event=mqtt_connected" in gw_log.read_text(), 30, "the gateway's MQTT subscription")
        sim = start(["-m", "firmware_sim", "--scenario", str(scenario_path), "--served-log", str(served)],
                    tmp_path / "sim.log")
        procs.append(sim)
        wait_for(lambda: polls_stored(influx, db) >= 6, 30, "first polls")

        influxd.stop()  # SIGTERM: a real stop, not a pause; the port refuses connections from now
        outage_start = time.time_ns()
        time.sleep(60)
        during = [s for s in status_lines(gw_log) if s.get("sink") == "local"][-40:]
        influxd = start_influxd(tmp_path / "influxd", port=influxd.port)  # same port, same data
        outage_end = time.time_ns()

        # the gateway kept reading and queueing all along
        totals = [int(s["readings_total"]) for s in during]
        queued = [int(s["queued_points"]) for s in during]
        assert totals == sorted(totals) and totals[-1] - totals[0] > 500, totals
        assert queued[-1] > queued[0] > 0, queued
        wait_for(lambda: any(s.get("queued_points") == "0" for s in status_lines(gw_log)[-2:]), 30,
                 "the backlog to drain")
        assert stop(sim) == 0
        time.sleep(1.5)  # the last polls and uplinks reach the outbox
        assert stop(gw) == 0, gw_log.read_text()[-3000:]

        read = stopped_total(gw_log)
        assert count_all(influx, db) == read, "every reading is stored once: none lost, none extra"
        records = served_records(served)
        rows = influx.rows("SELECT * FROM energy_meter GROUP BY *", db)
        assert check_meters_against_served(rows, records) > 1000
        in_outage = {(r["device"], r["time"]) for r in rows if outage_start < r["time"] < outage_end}
        # three meters polled every 0.5 s through 60 s: allow for the polls' alignment at the edges
        assert len(in_outage) >= 3 * (60 / POLL_S) * 0.9, len(in_outage)
        uplinks = [r for r in records if r["kind"] == "mqtt"]
        stored = {(r["device"], r["time"]): r for r in influx.rows("SELECT * FROM parking_bay GROUP BY *", db)}
        assert uplinks and len(stored) == len(uplinks)
        for u in uplinks:
            assert stored[(u["device"], u["t_ns"])]["occupied"] == int(u["values"]["occupied"])
        assert any(outage_start < u["t_ns"] < outage_end for u in uplinks)
    finally:
        influxd.stop()


def test_sigkill_loses_nothing_committed(tmp_path, influx, procs):
    db = f"kill_{time.time_ns()}"
    scenario, scenario_path = scenario_file(tmp_path)
    # first run: the target does not answer, so committed batches pile up in the outbox
    config = write_config(tmp_path, scenario, f"http://127.0.0.1:{free_port()}", db, retry_max_s=1.0)
    gw_log, served = tmp_path / "gateway.log", tmp_path / "served.jsonl"
    sim = start(["-m", "firmware_sim", "--scenario", str(scenario_path), "--served-log", str(served)],
                tmp_path / "sim.log")
    procs.append(sim)
    gw = start(["-m", "gateway.cli", "run", "-c", str(config)], gw_log)
    procs.append(gw)
    outbox_path = tmp_path / "data" / "outbox-local.sqlite3"
    wait_for(lambda: sum(int(s["queued_points"]) > 200 for s in status_lines(gw_log)) >= 1, 30, "a backlog")
    time.sleep(0.7)  # kill it in the middle of the flow, with readings in memory not yet committed
    gw.send_signal(signal.SIGKILL)
    gw.wait(5)

    snapshot: dict[tuple[bytes, bytes, int], bytes] = {}
    ob = Outbox(outbox_path, read_only=True)
    for b in ob.oldest(limit=100_000):
        for line in gzip.decompress(b.payload).splitlines():
            series, fields, ts = line.rsplit(b" ", 2)
            for kv in fields.split(b","):
                key, value = kv.split(b"=", 1)
                snapshot[(series, key, int(ts))] = value
    committed = ob.stats().points
    ob.close()
    assert committed == len(snapshot) and committed > 200

    # second run, same data directory, now with a reachable InfluxDB
    config = write_config(tmp_path, scenario, influx.url, db, retry_max_s=1.0)
    gw_log2 = tmp_path / "gateway2.log"
    gw2 = start(["-m", "gateway.cli", "run", "-c", str(config)], gw_log2)
    procs.append(gw2)
    wait_for(lambda: any(s.get("queued_points") == "0" and int(s["delivered"]) >= committed
                         for s in status_lines(gw_log2)), 30, "the committed backlog to land")
    assert stop(sim) == 0
    time.sleep(1.0)
    assert stop(gw2) == 0, gw_log2.read_text()[-3000:]

    # every committed point is in InfluxDB with the committed value
    stored = stored_points(influx, db)
    for (meas, tags, key, ts), value in snapshot_points(snapshot).items():
        assert stored.get((meas, tags, key, ts)) == value, (meas, dict(tags), key, ts, value)
    # and exactly those plus what the second run read: nothing lost, nothing extra
    assert count_all(influx, db) == committed + stopped_total(gw_log2)
    rows = influx.rows("SELECT * FROM energy_meter GROUP BY *", db)
    assert check_meters_against_served(rows, served_records(served)) > 300


def test_misbehaving_server_queue_behaves_and_reading_goes_on(tmp_path, procs):
    server = MisbehavingInflux()
    try:
        scenario, scenario_path = scenario_file(tmp_path)
        config = write_config(tmp_path, scenario, server.url, "db", retry_max_s=1.0, timeout_s=1.0)
        gw_log = tmp_path / "gateway.log"
        sim = start(["-m", "firmware_sim", "--scenario", str(scenario_path)], tmp_path / "sim.log")
        procs.append(sim)
        gw = start(["-m", "gateway.cli", "run", "-c", str(config)], gw_log)
        procs.append(gw)
        wait_for(lambda: len(server.stored.points) > 50, 30, "first deliveries")

        def phase(seconds: float) -> list[dict]:
            before = len(status_lines(gw_log))
            time.sleep(seconds)
            return status_lines(gw_log)[before:]

        def reading_goes_on(lines: list[dict]) -> None:
            totals = [int(s["readings_total"]) for s in lines]
            assert len(totals) >= 2 and totals[-1] > totals[0], totals

        server.set(mode="error500")
        during_500 = phase(4)
        reading_goes_on(during_500)
        queued = [int(s["queued_points"]) for s in during_500]
        assert queued[-1] > queued[0] and queued == sorted(queued), f"the queue grows while the server fails: {queued}"
        status = json.loads(run_cli("outbox", "status", "-c", str(config), "--json").stdout)[0]
        assert status["queued_points"] > 0 and status["delivered_points"] > 0

        server.set(mode="throttle", retry_after="2")
        reading_goes_on(phase(5))

        # partial 400: the server refuses device_health lines and stores the rest
        server.set(mode="ok", refuse=lambda line: "refused health" if line.startswith(b"device_health,") else None)
        reading_goes_on(phase(4))
        server.set(refuse=None, mode="slow", slow_s=2.5)
        reading_goes_on(phase(4))
        server.set(mode="ok")
        wait_for(lambda: any(s.get("queued_points") == "0" for s in status_lines(gw_log)[-2:]), 20, "drained")
        assert stop(sim) == 0
        time.sleep(1.0)
        assert stop(gw, timeout=10) == 0, gw_log.read_text()[-3000:]
    finally:
        server.close()

    read = stopped_total(gw_log)
    ob = Outbox(tmp_path / "data" / "outbox-local.sqlite3", read_only=True)
    dead = ob.dead_letters()
    st = ob.stats()
    ob.close()
    assert st.points == 0
    assert dead and all(d.text().startswith("device_health,") and d.reason == "partial write: refused health dropped="
                        f"{d.reason.rsplit('=', 1)[-1]}" for d in dead)
    dead_points = sum(d.points for d in dead)
    assert not server.stored.conflicts, server.stored.conflicts[:3]
    # every reading is either stored by the server or a dead letter, and nothing twice
    assert len(server.stored.points) + dead_points == read
    writes = server.writes()
    # Retry-After honoured: after each 429 the next request waited for it
    for a, b in zip(writes, writes[1:]):
        if a.status == 429:
            assert b.t - a.t >= 1.9, f"request {b.t - a.t:.2f}s after a 429 with Retry-After: 2"
    assert sum(r.status == 429 for r in writes) >= 2
    assert sum(r.status == 500 for r in writes) >= 3
