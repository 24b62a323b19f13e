"""The vectorised line-protocol encoder, checked by the real influxd reading back what it stored."""
from __future__ import annotations

import gzip
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sinks.influxdb import InfluxV1Writer
from gateway.sinks.line_protocol import LineProtocolEncoder
from pipelines.batch import ReadingBatch
from pipelines.series import SeriesRegistry


def test_fields_of_one_device_and_time_share_a_line():
    reg = SeriesRegistry()
    tags = {"site": "s", "device": "m1"}
    v = reg.register("energy_meter", tags, "voltage_l1")
    e = reg.register("energy_meter", tags, "energy_import")
    occ = reg.register("parking_bay", {"device": "p1"}, "occupied")
    enc = LineProtocolEncoder(reg)
    lp, n = enc.encode(ReadingBatch.from_arrays([v, e, occ, v, e], [10, 10, 10, 20, 20],
                                                [230.1, 1234.5678, 1.0, float("nan"), 1e20]))
    assert n == 4
    assert lp.decode().splitlines() == [
        "energy_meter,device=m1,site=s voltage_l1=230.1,energy_import=1234.5678 10",
        "energy_meter,device=m1,site=s energy_import=1e+20 20",
        "parking_bay,device=p1 occupied=1i 10",
    ]


tag_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and "\\" not in s)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=tag_text, building=tag_text, value=st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_escaping_round_trips_through_influxd(influx, device, building, value):
    db = "lp_escaping"
    writer = InfluxV1Writer(influx.url, db)
    if not getattr(influx, "lp_db_ready", False):
        assert writer.create_database().ok
        influx.lp_db_ready = True
    reg = SeriesRegistry()
    sid = reg.register("energy_meter", {"site": "s", "device": device, "building": building}, "active_power")
    ts = time.time_ns()
    lp, n = LineProtocolEncoder(reg).encode(ReadingBatch.from_arrays([sid], ts, [value]))
    result = writer.write(gzip.compress(lp))
    assert result.ok, (result.status, result.body, lp)
    rows = influx.rows(f"SELECT active_power FROM energy_meter WHERE time = {ts} GROUP BY *", db)
    assert len(rows) == 1, lp
    assert rows[0]["device"] == device and rows[0]["building"] == building
    # the query's JSON may print a large float as an integer: compare as floats
    assert float(rows[0]["active_power"]) == value
