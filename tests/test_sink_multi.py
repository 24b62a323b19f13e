"""Two sinks at once, each with its own outbox and sender: InfluxDB 1.x and an /api/v2/write target.

The v2 target (a private VictoriaMetrics) is stopped half-way and started again on the same port
and data directory; InfluxDB keeps receiving meanwhile, and the v2 backlog lands afterwards.
Built through the runtime's Gateway, so the configuration's sink keys are what is exercised.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np

from gateway.config import GatewayConfig
from gateway.devservices import start_victoria_metrics
from gateway.runtime import Gateway
from pipelines.batch import ReadingBatch
from tests.conftest import Victoria
from tests.test_sink_influxdb import wait_until

DEVICES = [f"m{i:02d}" for i in range(8)]
FIELDS = ("voltage", "active_power", "energy_import")


def test_one_sink_down_the_other_keeps_delivering(influx, tmp_path):
    vm = start_victoria_metrics(tmp_path / "vm")
    db = f"multi_{time.time_ns()}"
    site = f"multi{time.time_ns()}"
    cfg = GatewayConfig.model_validate({
        "gateway": {"site": site, "data_dir": str(tmp_path / "data")},
        "analytics": {"enabled": False},  # only the readings themselves, so that contents compare exactly
        "sinks": [
            {"type": "influxdb1", "name": "local", "url": influx.url, "database": db, "batch_max_age_s": 0.2},
            {"type": "influxdb2", "name": "remote", "url": f"http://127.0.0.1:{vm.port}", "org": "home",
             "bucket": "community", "token": "t", "batch_max_age_s": 0.2, "retry_max_s": 1.0, "timeout_s": 2.0},
        ]})
    gw = Gateway(cfg)
    local, remote = gw.sinks
    assert local.outbox.path.name == "outbox-local.sqlite3" and remote.outbox.path.name == "outbox-remote.sqlite3"
    series = np.array([gw.registry.register("energy_meter", {"site": site, "building": "B1", "device": d,
                                                             "model": "sdm630"}, f)
                       for d in DEVICES for f in FIELDS], dtype=np.int32)
    expected: dict[tuple[str, str, int], float] = {}  # (device, field, ms) -> value
    acks = []
    t0 = (time.time_ns() // 10**9 - 900) * 10**9
    tick = 0

    def feed() -> None:
        nonlocal tick
        ts = t0 + tick * 1_000_000_000
        values = np.round(np.random.default_rng(tick).uniform(100, 400, len(series)), 3)
        gw.accept(ReadingBatch.from_arrays(series, ts, values), ack=lambda: acks.append(tick))
        for k, (d, f) in enumerate((d, f) for d in DEVICES for f in FIELDS):
            expected[(d, f, ts // 1_000_000)] = float(values[k])
        tick += 1

    async def main() -> None:
        for s in gw.sinks:
            s.start()
        for _ in range(10):
            feed()
            await asyncio.sleep(0.05)
        n = 10 * len(series)  # "outbox empty" alone is also true before the first commit
        await wait_until(lambda: local.counters.points_delivered == n and remote.counters.points_delivered == n, 15,
                         "both sinks to deliver")
        vm.stop()  # the v2 target goes away
        delivered_before = local.counters.points_delivered
        for _ in range(30):
            feed()
            await asyncio.sleep(0.05)
        await wait_until(lambda: local.outbox.stats().batches == 0, 15, "InfluxDB to keep receiving")
        assert local.counters.points_delivered - delivered_before == 30 * len(series)
        assert remote.outbox.stats().points > 0 and remote.counters.write_failures > 0
        # back on the same port with the same data
        restarted = start_victoria_metrics(tmp_path / "vm", port=vm.port)
        try:
            await wait_until(lambda: remote.outbox.stats().batches == 0, 20, "the v2 backlog to land")
            await asyncio.gather(*(s.close() for s in gw.sinks))
            check_contents(Victoria(restarted))
        finally:
            restarted.stop()

    def check_contents(victoria: Victoria) -> None:
        rows = influx.rows("SELECT * FROM energy_meter GROUP BY *", db)
        stored_v1 = {(r["device"], f, r["time"] // 1_000_000): r[f] for r in rows for f in FIELDS}
        assert stored_v1 == expected
        exported = victoria.export(f'{{__name__=~"energy_meter_.*",site="{site}"}}')
        stored_v2 = {(dict(labels)["device"], name.removeprefix("energy_meter_"), ms): v
                     for (name, labels), samples in exported.items() for ms, v in samples.items()}
        assert stored_v2 == expected

    try:
        asyncio.run(main())
    finally:
        vm.stop()
    assert len(acks) == tick, "each batch is acknowledged once, after both sinks committed it"
    n = tick * len(series)
    for s in gw.sinks:
        assert s.counters.points_accepted == n and s.counters.points_delivered == n
        assert s.counters.points_dropped == 0
