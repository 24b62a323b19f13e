"""QoS 1 through a broker that holds 20 messages in flight per client (mosquitto's documented default,
set explicitly here): the gateway commits
readings that carry acknowledgements within ack_max_wait_s, so the broker is never left waiting
for a whole batch age (which would pace the gateway at 20 messages a second)."""
from __future__ import annotations

import asyncio
import json
import time

import paho.mqtt.client as paho

from gateway.config import parse_config
from gateway.devservices import start_mosquitto
from gateway.runtime import Gateway

CONFIG = """
[gateway]
site = "pace"
[analytics]
enabled = false
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "cgw-pace-{stamp}"
[[subscriptions]]
topic = "pace/+/m"
decoder = "json"
qos = 1
[subscriptions.mapping]
measurement = "energy_meter"
device_from_topic = 1
fields.active_power = {{ path = "p" }}
[[sinks]]
type = "influxdb1"
name = "local"
url = "{influx}"
database = "pace_{stamp}"
batch_max_age_s = 5.0
"""


def test_qos1_is_not_paced_by_the_batch_age(tmp_path, influx):
    mosquitto = start_mosquitto(tmp_path / "broker", listener_options="max_inflight_messages 20")
    try:
        run_with(tmp_path, mosquitto, influx)
    finally:
        mosquitto.stop()


def run_with(tmp_path, mosquitto, influx) -> None:
    stamp = time.time_ns()
    cfg = parse_config(CONFIG.format(port=mosquitto.port, influx=influx.url, stamp=stamp), known_profiles=set())
    gw = Gateway(cfg, data_dir=tmp_path)
    n = 400

    async def main() -> float:
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        while gw.mqtt is None or not gw.mqtt.connected:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # SUBACK
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pace-pub-{stamp}")
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        t0 = time.monotonic()
        infos = [pub.publish(f"pace/d{k % 50}/m", json.dumps({"p": k}), qos=1) for k in range(n)]
        for i in infos:
            i.wait_for_publish(10)
        while gw.readings_in < n and time.monotonic() - t0 < 15:
            await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        pub.loop_stop()
        pub.disconnect()
        stop.set()
        await run
        return took

    took = asyncio.run(main())
    assert gw.readings_in == n
    # 20 in flight at a time: the broker sends nothing more until the first commit acknowledges them
    assert took < 3.0, took  # with a 5 s wait for the first commit it takes over 5 s
