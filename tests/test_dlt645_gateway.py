"""DL/T 645-2007 meters read by `cgw run`, over a socat pty and through a TCP transparent converter.

firmware-sim's meter runs as its own process and logs every value it put on the wire; the values
stored in InfluxDB must be exactly those, in order. A configured meter that never answers gets stale
marks and a device_health record saying why, never a value.
"""
from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest
import tomli_w

from drivers.dlt645.identifiers import BY_FIELD
from drivers.polling import ERROR_KINDS
from gateway.devservices import free_port
from tests.conftest import wait_for
from tests.ptys import pty_pair
from tests.test_end_to_end import start, stop

FIELDS = ["energy_import", "energy_total", "active_power", "voltage_l1", "current_l1", "frequency"]


def polls_stored(influx, db: str) -> int:
    try:
        return len(influx.rows("SELECT energy_import FROM energy_meter WHERE device='flat-101'", db))
    except AssertionError:  # the sink creates the database on its first delivery
        return 0


@pytest.mark.parametrize("transport", ["serial", "tcp"])
def test_dlt645_meters_read_by_the_gateway(transport, tmp_path, influx):
    db = f"dlt_{transport}_{time.time_ns()}"
    served = tmp_path / "served.jsonl"
    with ExitStack() as stack:
        if transport == "serial":
            gateway_end, meter_end = stack.enter_context(pty_pair())
            where = ["--serial", meter_end]
            bus = {"type": "dlt645_serial", "name": "rs485-1", "device": gateway_end, "timeout_s": 0.5}
        else:
            port = free_port()
            where = ["--tcp", f"127.0.0.1:{port}"]
            bus = {"type": "dlt645_tcp", "name": "converter-1", "host": "127.0.0.1", "port": port, "timeout_s": 0.5}
        sim = start(["-m", "firmware_sim.dlt645_meter", *where, "--address", "000000000101",
                     "--address", "000000000102", "--served-log", str(served)], tmp_path / "sim.log")
        stack.callback(lambda: sim.poll() is None and (sim.kill(), sim.wait(5)))
        time.sleep(0.5)
        cfg = {
            "gateway": {"site": "dlt", "data_dir": str(tmp_path / "data"), "status_interval_s": 1.0},
            "buses": [bus],
            "devices": [
                {"id": "flat-101", "bus": bus["name"], "address": "000000000101", "fields": FIELDS,
                 "building": "B3", "poll_interval_s": 1.0},
                {"id": "flat-102", "bus": bus["name"], "address": "000000000102", "building": "B3",
                 "poll_interval_s": 1.0},
                # configured, but no such meter on the line: it times out
                {"id": "flat-199", "bus": bus["name"], "address": "000000000199", "fields": ["energy_import"],
                 "building": "B3", "poll_interval_s": 1.0},
            ],
            "sinks": [{"type": "influxdb1", "name": "local", "url": influx.url, "database": db}],
        }
        config = tmp_path / "gateway.toml"
        config.write_text(tomli_w.dumps(cfg))
        gw_log = tmp_path / "gateway.log"
        gw = start(["-m", "gateway.cli", "run", "-c", str(config)], gw_log)
        stack.callback(lambda: gw.poll() is None and (gw.kill(), gw.wait(5)))
        wait_for(lambda: polls_stored(influx, db) >= 4, 40, "four polls of flat-101 in InfluxDB")
        assert stop(gw) == 0
        sim.terminate()
        sim.wait(5)

    records = [json.loads(line) for line in served.read_text().splitlines()]
    by_address: dict[str, dict[int, list[float]]] = {}
    for r in records:
        by_address.setdefault(r["address"], {}).setdefault(r["di"], []).append(r["value"])
    for device, address, fields in (("flat-101", "000000000101", FIELDS),
                                    ("flat-102", "000000000102", None)):
        rows = influx.rows(f"SELECT * FROM energy_meter WHERE device='{device}'", db)
        assert len(rows) >= 3, device
        assert {r["model"] for r in rows} == {"dlt645"} and {r["building"] for r in rows} == {"B3"}
        stored_fields = fields or [k for k in rows[0] if k in BY_FIELD]
        assert len(stored_fields) >= 12 if fields is None else stored_fields == FIELDS
        for field in stored_fields:
            row = BY_FIELD[field]
            stored = [r[field] for r in rows]
            wire = [v * row.to_field for v in by_address[address][row.di]]
            # every stored value is what the meter served, in order; a poll cut by SIGTERM may be missing
            assert stored == pytest.approx(wire[: len(stored)], rel=1e-12, abs=1e-9), (device, field)
            assert len(wire) - len(stored) <= 1, (device, field)
    # the absent meter: never a value, a stale mark in device_health with the reason
    assert influx.rows("SELECT * FROM energy_meter WHERE device='flat-199'", db) == []
    health = influx.rows("SELECT * FROM device_health WHERE device='flat-199'", db)
    assert health and all(h["online"] == 0 and h["stale"] == 1 for h in health)
    assert {h["error_code"] for h in health} == {ERROR_KINDS["timeout"]}
    assert {h["driver"] for h in health} == {"dlt645"}
    log = (tmp_path / "gateway.log").read_text()
    assert "event=poll_failed" in log and "device=flat-199" in log and "error=timeout" in log
