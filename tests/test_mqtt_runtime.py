"""The runtime's MQTT path: the decoder per subscription, drops counted per device and reason,
device_health and a status log line for them, and a real broker and InfluxDB behind ``cgw run``."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import paho.mqtt.client as paho
import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway
from pipelines.batch import ReadingBatch
from tests.conftest import REPO, wait_for

CONFIG = """
[gateway]
site = "test-site"
status_interval_s = 1.0

[mqtt]
host = "{host}"
port = {port}
client_id = "{client_id}"

[[sinks]]
type = "influxdb1"
name = "local"
url = "{influx}"
database = "{db}"

[[subscriptions]]
topic = "elevators/+/+/+"
decoder = "elevator"

[[subscriptions]]
topic = "cameras/north/+"
decoder = "people_counter"

[[subscriptions]]
topic = "cameras/south/+"
decoder = "people_counter"

[[subscriptions]]
topic = "vendor/lifts/+/state"
decoder = "json"

[subscriptions.mapping]
measurement = "elevator"
device_from_topic = 2
tags = {{ building = "B3" }}
time_path = "ts"
time_format = "epoch_ms"
fields.floor = {{ path = "car.floor" }}
fields.speed = {{ path = "car.speed_mms", scale = 0.001, unit = "m/s", min = 0, max = 20 }}
"""


def make_config(**kw: object) -> str:
    values = {"host": "127.0.0.1", "port": 1883, "client_id": "cgw-test", "influx": "http://127.0.0.1:9", "db": "x"}
    values.update(kw)
    return CONFIG.format(**values)


class Captured:
    """Stands in for Gateway.accept: keeps every batch as (measurement, tags, field, ts, value) rows."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.rows: list[tuple[str, dict, str, int, float]] = []
        self.acks_with_batches = 0

    def __call__(self, batch: ReadingBatch, ack=None) -> None:
        for sid, ts, value in zip(batch.series, batch.ts_ns, batch.value):
            key = self.gw.registry.keys[sid]
            self.rows.append((key.measurement, dict(key.tags), key.field, int(ts), float(value)))
        if ack is not None:
            self.acks_with_batches += 1
        self.gw.encoder.encode(batch)  # every row the decoders make must also be encodable


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(parse_config(make_config(), known_profiles=set()), data_dir=tmp_path)
    captured = Captured(gw)
    gw.accept = captured  # type: ignore[method-assign]
    yield gw, captured
    for sink in gw.sinks:
        sink.outbox.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def camera(device: str, enter: int, exit_: int) -> bytes:
    return json.dumps({"deviceID": device, "channelName": "gate", "eventType": "PeopleCounting",
                       "peopleCounting": {"statisticalMethods": "realTime", "enter": enter, "exit": exit_}}).encode()


def deliver(gw: Gateway, topic: str, payload: bytes) -> int:
    acked = []
    gw._on_mqtt_message(topic, payload, lambda: acked.append(1))
    return len(acked)


def test_each_subscription_has_its_own_decoder_state(gateway):
    gw, captured = gateway
    # the same camera id on two subscriptions: two baselines, so neither sees a false reset
    deliver(gw, "cameras/north/c", camera("cam-1", 100, 50))
    deliver(gw, "cameras/south/c", camera("cam-1", 5, 5))
    deliver(gw, "cameras/north/c", camera("cam-1", 103, 51))
    counts = [(f, v) for m, _, f, _, v in captured.rows if f in ("in_count", "resets")]
    assert counts == [("in_count", 3.0), ("resets", 0.0)]


def test_good_fields_are_kept_and_bad_ones_counted_per_device_and_reason(gateway):
    gw, captured = gateway
    payload = json.dumps({"ts": now_ms(), "car": {"floor": 4, "speed_mms": "fast"}}).encode()
    deliver(gw, "vendor/lifts/L7/state", payload)
    assert [(m, f, v) for m, _, f, _, v in captured.rows] == [("elevator", "floor", 4.0)]
    assert captured.rows[0][1] == {"site": "test-site", "device": "L7", "building": "B3"}
    deliver(gw, "vendor/lifts/L7/state", b"{oops")
    deliver(gw, "vendor/lifts/L7/state", json.dumps({"ts": now_ms() + 3_600_000, "car": {"floor": 4}}).encode())
    deliver(gw, "elevators/B1/B1-L1/status", json.dumps({"type": "status", "floor": 1}).encode())
    assert gw.decode_drops == {("L7", "wrong_type"): 1, ("L7", "malformed_json"): 1, ("L7", "clock_skew"): 1,
                               ("unknown", "missing_device"): 1}


def test_every_message_is_acknowledged_once(gateway):
    gw, captured = gateway
    assert deliver(gw, "vendor/lifts/L7/state", b"garbage") == 1  # dropped: acknowledged at once
    assert deliver(gw, "not/subscribed", b"{}") == 1
    deliver(gw, "vendor/lifts/L7/state", json.dumps({"ts": now_ms(), "car": {"floor": 4}}).encode())
    assert captured.acks_with_batches == 1  # kept: the ack travels with the batch to the outbox


def test_a_decoder_bug_costs_one_message_not_the_gateway(gateway):
    gw, captured = gateway

    def broken(topic, payload, site, now_ns):
        raise ZeroDivisionError("division by zero")

    gw._decoder_for.insert(0, ("broken/#", broken))
    assert deliver(gw, "broken/x", b"{}") == 1
    assert gw.decode_drops == {("unknown", "decoder_error"): 1}
    deliver(gw, "vendor/lifts/L7/state", json.dumps({"ts": now_ms(), "car": {"floor": 2}}).encode())
    assert captured.rows


def test_status_writes_mqtt_device_health_and_logs_drops_once(gateway, caplog):
    gw, captured = gateway
    deliver(gw, "vendor/lifts/L7/state", json.dumps({"ts": now_ms(), "car": {"floor": 4}}).encode())
    deliver(gw, "vendor/lifts/L8/state", b"[]")
    deliver(gw, "vendor/lifts/L8/state", b"[]")
    deliver(gw, "vendor/lifts/L8/state", json.dumps({"car": {"floor": 1}}).encode())
    captured.rows.clear()
    with caplog.at_level(logging.WARNING, logger="gateway"):
        gw._mqtt_status()
        gw._mqtt_status()  # nothing new: no second log line
    health = {(t["device"], f): v for m, t, f, _, v in captured.rows if m == "device_health"}
    assert health == {("L7", "online"): 1.0, ("L7", "stale"): 0.0, ("L7", "errors"): 0.0,
                      ("L8", "online"): 0.0, ("L8", "stale"): 1.0, ("L8", "errors"): 3.0}
    assert {t["driver"] for m, t, *_ in captured.rows} == {"mqtt"}
    lines = [r for r in caplog.records if getattr(r, "event", "") == "decode_drops"]
    assert [(r.device, r.drops, r.reasons) for r in lines] == [("L8", 3, "bad_timestamp:1,malformed_json:2")]


# --- over a real broker, into a real InfluxDB ------------------------------------------------------

def test_cgw_run_decodes_json_elevator_and_camera_messages_into_influxdb(tmp_path, mosquitto, influx):
    db = f"mqtt_rt_{time.time_ns()}"
    config = tmp_path / "gateway.toml"
    config.write_text(make_config(host=mosquitto.host, port=mosquitto.port, client_id=f"cgw-rt-{time.time_ns()}",
                                  influx=influx.url, db=db))
    log_path = tmp_path / "gateway.log"
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(config), "--data-dir",
                           str(tmp_path / "data")], cwd=REPO, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"rt-pub-{time.time_ns()}")
    try:
        wait_for(lambda: "event=mqtt_connected" in log_path.read_text(), 30, "the gateway's subscription")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        t = now_ms()
        sent = [
            ("vendor/lifts/L7/state", {"ts": t, "car": {"floor": 4, "speed_mms": 1250}}),
            ("vendor/lifts/L7/state", {"ts": t + 500, "car": {"floor": 5, "speed_mms": 99999}}),  # speed out of range
            ("elevators/B1/B1-L1/event", {"type": "event", "elevator_id": "B1-L1", "building": "B1",
                                          "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 1000))
                                          + f".{t % 1000:03d}Z", "code": "ALARM_BUTTON", "state": "raised",
                                          "floor": 3, "occupied": True}),
            ("cameras/north/c", json.loads(camera("cam-9", 10, 4))),
        ]
        for topic, doc in sent:
            client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(5)
        client.publish("vendor/lifts/L7/state", b"not json", qos=1).wait_for_publish(5)
        wait_for(lambda: len(influx.rows("SELECT * FROM elevator GROUP BY *", db)) >= 2, 30, "lift rows")
        wait_for(lambda: "event=decode_drops" in log_path.read_text(), 15, "the status line about drops")
        wait_for(lambda: influx.rows("SELECT errors FROM device_health WHERE device = 'L7' AND errors = 2", db), 15,
                 "device_health errors of L7")
    finally:
        client.loop_stop()
        client.disconnect()
        gw.terminate()
        gw.wait(15)
    assert gw.returncode == 0, log_path.read_text()[-3000:]
    lifts = {r["time"]: r for r in influx.rows("SELECT * FROM elevator GROUP BY *", db)}
    assert lifts[t * 1_000_000]["floor"] == 4 and lifts[t * 1_000_000]["speed"] == 1.25
    assert lifts[(t + 500) * 1_000_000]["floor"] == 5 and lifts[(t + 500) * 1_000_000]["speed"] is None
    assert lifts[t * 1_000_000]["building"] == "B3" and lifts[t * 1_000_000]["device"] == "L7"
    [alarm] = influx.rows("SELECT * FROM elevator_alarm GROUP BY *", db)
    assert (alarm["time"], alarm["code"], alarm["active"], alarm["floor"]) == (t * 1_000_000, "ALARM_BUTTON", 1, 3)
    [people] = influx.rows("SELECT * FROM people_counter GROUP BY *", db)
    assert (people["in_total"], people["out_total"], people["net_total"], people["gate"]) == (10, 4, 6, "gate")
    log = log_path.read_text()
    assert "event=decode_drops" in log and "device=L7 drops=2 reasons=malformed_json:1,out_of_range:1" in log


def test_a_burst_of_messages_goes_down_the_pipeline_as_one_batch(gateway):
    """Messages that arrive within the batching window share one batch: one pass of the core, one
    commit, and every message's acknowledgement still waits for that commit."""
    import asyncio

    gw, captured = gateway
    calls: list[int] = []
    inner = gw.accept

    def counting(batch, ack=None):
        calls.append(len(batch))
        inner(batch, ack)
        if ack is not None:
            ack()  # what the sinks do once the batch is committed

    gw.accept = counting  # type: ignore[method-assign]
    acked: list[int] = []

    async def main():
        for k in range(50):
            gw._on_mqtt_message("cameras/north/c", camera(f"cam-{k}", 10, 5), lambda k=k: acked.append(k))
        assert calls == [] and acked == []  # nothing committed yet, nothing acknowledged
        await asyncio.sleep(0.1)  # the batching window (20 ms)

    asyncio.run(main())
    assert len(calls) == 1 and calls[0] == len(captured.rows) == 50 * 3  # totals of 50 cameras, one batch
    assert sorted(acked) == list(range(50))
