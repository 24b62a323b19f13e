"""The influxdb2 sink (/api/v2/write through influxdb-client) and how any sink treats servers that
refuse, throttle or stall: against a private VictoriaMetrics and the misbehaving test server."""
from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import time

import pytest

from gateway.config import GatewayConfig
from gateway.sinks.influxdb import InfluxV1Writer, InfluxV2Writer, OutboxSink
from gateway.sinks.outbox import Outbox
from tests.misbehaving_http import MisbehavingInflux
from tests.test_sink_influxdb import wait_until


def lines(measurement: str, t0: int, n: int, device: str = "d1") -> tuple[bytes, int]:
    body = b"".join(b"%s,device=%s power=%d.5,energy=%di %d\n" % (measurement.encode(), device.encode(), i, 1000 + i,
                                                                    t0 + i * 1_000_000_000) for i in range(n))
    return body, 2 * n


@pytest.fixture
def server():
    s = MisbehavingInflux()
    yield s
    s.close()


def v2_sink(url: str, path, **kw) -> OutboxSink:
    return OutboxSink("v2", InfluxV2Writer(url, "home", "community", token="s3cret", timeout_s=kw.pop("timeout_s", 5.0)),
                      Outbox(path), 100_000, 0.2, **kw)


def test_influxdb2_sink_delivers_to_victoria_metrics(victoria, tmp_path):
    meas = f"v2m{time.time_ns()}"
    t0 = (time.time_ns() // 10**9 - 600) * 10**9
    sink = v2_sink(victoria.url, tmp_path / "o.sqlite3")

    async def main() -> None:
        sink.start()
        for k in range(3):
            body, n = lines(meas, t0 + k * 100 * 10**9, 40, device=f"d{k}")
            sink.add(body, n)
            sink.commit()
        await wait_until(lambda: sink.outbox.stats().batches == 0, 20, "delivery to VictoriaMetrics")
        await sink.close()

    asyncio.run(main())
    assert sink.counters.points_delivered == 240 and sink.counters.write_failures == 0

    def exported():
        return victoria.export(f'{{__name__=~"{meas}_.*"}}')

    deadline = time.monotonic() + 20
    while sum(len(v) for v in exported().values()) < 240 and time.monotonic() < deadline:
        time.sleep(0.3)
    got = exported()
    for k in range(3):
        power = got[(f"{meas}_power", (("device", f"d{k}"),))]
        energy = got[(f"{meas}_energy", (("device", f"d{k}"),))]
        base_ms = (t0 + k * 100 * 10**9) // 1_000_000
        assert power == {base_ms + i * 1000: i + 0.5 for i in range(40)}
        assert energy == {base_ms + i * 1000: 1000.0 + i for i in range(40)}


def test_influxdb2_request_shape(server, tmp_path):
    sink = v2_sink(server.url, tmp_path / "o.sqlite3")
    body, n = lines("m", time.time_ns(), 5)

    async def main() -> None:
        sink.start()
        sink.add(body, n)
        sink.commit()
        await wait_until(lambda: sink.outbox.stats().batches == 0, 10, "delivery")
        await sink.close()

    asyncio.run(main())
    [req] = server.writes()
    assert req.path == "/api/v2/write"
    assert req.query == {"org": ["home"], "bucket": ["community"], "precision": ["ns"]}
    assert req.headers["Authorization"] == "Token s3cret"
    assert req.headers["Content-Encoding"] == "gzip"
    assert req.lines == 5 and req.status == 204
    assert len(server.stored.points) == 10


@pytest.mark.parametrize("make", ["v1", "v2"])
def test_unauthorized_is_loud_slow_and_drops_nothing(server, tmp_path, caplog, make):
    caplog.set_level(logging.INFO, logger="gateway.sinks")
    if make == "v1":
        sink = OutboxSink("auth", InfluxV1Writer(server.url, "db", timeout_s=5), Outbox(tmp_path / "o.sqlite3"),
                          100_000, 0.2, auth_retry_s=0.6)
    else:
        sink = v2_sink(server.url, tmp_path / "o.sqlite3", auth_retry_s=0.6)
    server.set(mode="unauthorized")
    body, n = lines("m", time.time_ns(), 10)

    async def main() -> None:
        sink.start()
        sink.add(body, n)
        sink.commit()
        await wait_until(lambda: len(server.writes()) >= 3, 10, "three attempts")
        assert sink.outbox.stats().points == n  # nothing dropped while unauthorized
        server.set(mode="ok")
        await wait_until(lambda: sink.outbox.stats().batches == 0, 10, "delivery once authorized")
        await sink.close()

    asyncio.run(main())
    attempts = [r for r in server.writes() if r.status == 401]
    gaps = [b.t - a.t for a, b in zip(attempts, attempts[1:])]
    assert gaps and min(gaps) >= 0.55, f"401s must be retried slowly, not hammered: {gaps}"
    errors = [r for r in caplog.records if getattr(r, "event", None) == "write_unauthorized"]
    assert len(errors) >= len(attempts) and all(r.levelno == logging.ERROR for r in errors)
    assert sink.counters.points_delivered == n and sink.counters.points_dropped == 0
    assert len(server.stored.points) == n


@pytest.mark.parametrize("retry_after", ["2", "http-date"])
def test_throttled_requests_wait_for_retry_after(server, tmp_path, retry_after):
    sink = v2_sink(server.url, tmp_path / "o.sqlite3")
    if retry_after == "http-date":
        # an HTTP date has whole seconds: 3 s from now is at least 2 s
        retry_after = email.utils.formatdate(time.time() + 3, usegmt=True)
    server.set(mode="throttle", retry_after=retry_after)
    body, n = lines("m", time.time_ns(), 10)

    async def main() -> None:
        sink.start()
        sink.add(body, n)
        sink.commit()
        await wait_until(lambda: len(server.writes()) >= 1, 5, "the first attempt")
        server.set(mode="ok")
        await wait_until(lambda: sink.outbox.stats().batches == 0, 10, "delivery after Retry-After")
        await sink.close()

    asyncio.run(main())
    first, second = server.writes()[:2]
    assert first.status == 429 and second.status == 204
    assert second.t - first.t >= 1.9, "the second attempt came before Retry-After"
    assert second.t - first.t < 4.5


def test_errors_and_timeouts_back_off_and_keep_everything(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.sinks")
    sink = OutboxSink("flaky", InfluxV1Writer(server.url, "db", timeout_s=0.5), Outbox(tmp_path / "o.sqlite3"),
                      100_000, 0.2, retry_max_s=1.0)
    t0 = time.time_ns()

    async def main() -> None:
        sink.start()
        server.set(mode="error500")
        for k in range(3):
            body, n = lines("m", t0 + k * 10**12, 10)
            sink.add(body, n)
            sink.commit()
        await wait_until(lambda: len(server.writes()) >= 4, 10, "retries of the 500s")
        server.set(mode="slow", slow_s=1.5)  # answers after the client's 0.5 s timeout
        await wait_until(lambda: sum(r.status == 204 for r in server.writes()) >= 2, 15, "slow answers")
        assert sink.outbox.stats().points == 60, "a timed-out request is not a delivery"
        server.set(mode="ok")
        await wait_until(lambda: sink.outbox.stats().batches == 0, 10, "delivery")
        await sink.close()

    asyncio.run(main())
    writes = server.writes()
    failures = [r for r in writes if r.status == 500]
    gaps = [b.t - a.t for a, b in zip(failures, failures[1:])]
    assert gaps[0] < 0.6 and max(gaps) > gaps[0], f"backoff should grow: {gaps}"
    assert sink.counters.points_delivered == 60 and not server.stored.conflicts
    assert len(server.stored.points) == 60
    recovered = [r for r in caplog.records if getattr(r, "event", None) == "write_recovered"]
    assert recovered


def test_config_accepts_influxdb2_sink_with_defaults():
    cfg = GatewayConfig.model_validate({"sinks": [
        {"type": "influxdb2", "name": "cloud", "url": "https://eu.example.com", "org": "home", "bucket": "b",
         "token": "t"},
        {"type": "influxdb1", "name": "local", "url": "http://127.0.0.1:8086", "database": "community",
         "fsync": "batch", "max_outbox_bytes": 1 << 20}]})
    cloud, local = cfg.sinks
    assert cloud.max_outbox_bytes == 512 << 20 and cloud.fsync == "normal" and cloud.max_in_flight == 1
    assert local.fsync == "batch" and local.max_outbox_bytes == 1 << 20
    assert cloud.target() == "https://eu.example.com org=home bucket=b"


def test_gzip_members_concatenate_into_one_stream():
    """The property the sender relies on to send stored batches without recompressing."""
    a, b = gzip.compress(b"x v=1 1\n"), gzip.compress(b"y v=2 2\n")
    assert gzip.decompress(a + b) == b"x v=1 1\ny v=2 2\n"
