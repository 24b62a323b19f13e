#!/usr/bin/env python
"""Throughput of the MQTT payload decoders, in messages per second.

    .venv/bin/python benchmarks/bench_decoders.py [--messages N] [--broker-messages M] [--no-broker]

Payloads are what firmware-sim's devices publish (ChirpStack v4 parking uplinks, elevator monitor
status and events, people-counting camera reports) plus a vendor JSON decoded by a field mapping.
Three figures per decoder:

1. decode: the decoder alone, in-process, over N distinct payloads;
2. gateway path: ``Gateway._on_mqtt_message`` (topic match, decode, series ids, pipeline,
   analytics, line protocol, hand-over to the sink's buffer), one message per batch, no broker;
3. via mosquitto: a private broker on loopback, one publisher, and the Gateway itself subscribed
   (paho thread into asyncio, decode, pipeline, outbox commits acknowledging QoS 1); QoS 0 and 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from firmware_sim.cameras import CameraSpec, PeopleCountingCamera  # noqa: E402
from firmware_sim.elevators import ElevatorMonitor, ElevatorSpec  # noqa: E402
from firmware_sim.parking import ParkingSensor  # noqa: E402
from gateway.config import GatewayConfig, parse_config  # noqa: E402
from gateway.devservices import start_mosquitto  # noqa: E402
from gateway.runtime import DECODERS, Gateway  # noqa: E402

CONFIG = """
[gateway]
site = "bench"
[mqtt]
host = "127.0.0.1"
[[sinks]]
type = "influxdb1"
name = "local"
url = "http://127.0.0.1:9"
database = "bench"
[[subscriptions]]
topic = "application/+/device/+/event/up"
decoder = "chirpstack_parking"
[[subscriptions]]
topic = "elevators/+/+/+"
decoder = "elevator"
[[subscriptions]]
topic = "cameras/+/peopleCounting"
decoder = "people_counter"
[[subscriptions]]
topic = "vendor/meters/+/state"
decoder = "json"
[subscriptions.mapping]
measurement = "energy_meter"
device_from_topic = 2
tag_paths = { building = "site.building" }
time_path = "ts"
time_format = "epoch_ms"
fields.voltage = { path = "ac.v", unit = "V" }
fields.current = { path = "ac.i", unit = "A" }
fields.active_power = { path = "ac.p_kw", scale = 1000.0, unit = "W" }
fields.energy_import = { path = "energy.import_kwh", unit = "kWh" }
"""

Messages = list[tuple[str, bytes]]


def chirpstack_uplinks(n: int, t0_s: float) -> Messages:
    sensors = [ParkingSensor(f"a8404100018{i:05x}", f"P-{i:03d}", seed=1) for i in range(200)]
    out = []
    for i in range(n):
        s = sensors[i % len(sensors)]
        t = t0_s - n + i
        out.append(s.uplink(int(t * 1e9), 2, {"type": "heartbeat", "occupied": i % 3 == 0, "temperature": 20}))
    return out


def elevator_messages(n: int, t0_s: float) -> Messages:
    lifts = [ElevatorMonitor(ElevatorSpec(f"B{i // 4}-L{i % 4}", f"B{i // 4}", calls_per_hour=600,
                                          fault_probability=0.05, status_moving_s=1, status_idle_s=5), 1, t0_s - 3600)
             for i in range(16)]
    out: Messages = []
    t = t0_s - 3600
    while len(out) < n:
        for lift in lifts:
            out += [(m.topic, m.payload()) for m in lift.poll(t)]
        t += 0.5
    return out[:n]


def camera_reports(n: int, t0_s: float) -> Messages:
    cams = [PeopleCountingCamera(CameraSpec(f"cam-{i}", f"gate-{i}", report_s=1, slot_s=1, peak_per_min=30), 1)
            for i in range(20)]
    out: Messages = []
    t = t0_s - 3600
    while len(out) < n:
        for cam in cams:
            out += [(m.topic, m.payload()) for m in cam.poll(t)]
        t += 1.0
    return out[:n]


def vendor_json(n: int, t0_s: float) -> Messages:
    out = []
    for i in range(n):
        doc = {"ts": int((t0_s - n + i) * 1000), "site": {"building": f"B{i % 5}"},
               "ac": {"v": 229.5 + i % 7, "i": 4.25, "p_kw": 0.975}, "energy": {"import_kwh": 1520.25 + i / 100},
               "fw": "2.1.7", "rssi": -61}
        out.append((f"vendor/meters/m{i % 300}/state", json.dumps(doc).encode()))
    return out


def decode_rate(decode: Callable, messages: Messages, now_ns: int) -> float:
    t = time.perf_counter()
    for topic, payload in messages:
        decode(topic, payload, "bench", now_ns)
    return len(messages) / (time.perf_counter() - t)


def gateway_rate(gw: Gateway, messages: Messages) -> float:
    noop = lambda: None  # noqa: E731
    t = time.perf_counter()
    for topic, payload in messages:
        gw._on_mqtt_message(topic, payload, noop)
    rate = len(messages) / (time.perf_counter() - t)
    for sink in gw.sinks:  # what the sinks buffered is not the point here
        sink._pending.clear()
    return rate


def broker_rate(cfg: GatewayConfig, host: str, port: int, messages: Messages, qos: int, workdir: Path) -> float:
    """The gateway itself subscribed to a private broker: rate from the first publish to the last delivery.

    Sinks run (their outbox commits acknowledge QoS 1 messages) but write to a closed port, so the
    figure is the MQTT side: broker, paho thread, decode, pipeline and outbox, not InfluxDB.
    """
    mqtt = cfg.mqtt.model_copy(update={"host": host, "port": port, "client_id": f"bench-gw-{time.time_ns()}"})
    subs = [s.model_copy(update={"qos": qos}) for s in cfg.subscriptions]
    cfg = cfg.model_copy(update={"mqtt": mqtt, "subscriptions": subs})

    async def run() -> float:
        gw = Gateway(cfg, data_dir=workdir / f"gw-{time.time_ns()}")
        noop = lambda: None  # noqa: E731
        for topic, payload in messages:  # warm: every series registered, as in a gateway that has run a while
            gw._on_mqtt_message(topic, payload, noop)
        for sink in gw.sinks:
            sink._pending.clear()
        for sink in gw.sinks:
            sink.start()
        assert gw.mqtt is not None
        gw.mqtt.start()
        while not gw.mqtt.connected:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the SUBACK
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time_ns()}")
        pub.max_queued_messages_set(0)
        pub.max_inflight_messages_set(1000)
        pub.connect(host, port)
        pub.loop_start()
        t = time.perf_counter()

        def publish_all() -> None:
            for topic, payload in messages:
                pub.publish(topic, payload, qos=qos)

        threading.Thread(target=publish_all, daemon=True).start()
        try:
            deadline = time.monotonic() + 120
            while gw.mqtt.messages < len(messages):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{gw.mqtt.messages} of {len(messages)} messages arrived in 120 s")
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - t
        finally:
            pub.loop_stop()
            pub.disconnect()
            gw.mqtt.stop()
            await asyncio.gather(*(sink.close(drain_timeout_s=0.1) for sink in gw.sinks))
        return len(messages) / elapsed

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000, help="payloads per decoder in-process")
    ap.add_argument("--broker-messages", type=int, default=5_000, help="payloads per decoder through mosquitto")
    ap.add_argument("--no-broker", action="store_true", help="skip the mosquitto figures")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the gateway's per-burst warnings are not the point here

    t0_s = time.time()
    now_ns = int(t0_s * 1e9)
    sets = {
        "chirpstack_parking": chirpstack_uplinks(args.messages, t0_s),
        "elevator": elevator_messages(args.messages, t0_s),
        "people_counter": camera_reports(args.messages, t0_s),
        "json (4-field mapping)": vendor_json(args.messages, t0_s),
    }
    cfg = parse_config(CONFIG, known_profiles=set())
    decoder_names = {"json (4-field mapping)": "json"}
    mosquitto = None
    workdir = tempfile.TemporaryDirectory(prefix="bench-decoders-")
    if not args.no_broker:
        mosquitto = start_mosquitto(Path(workdir.name) / "mosquitto")
    rows = []
    try:
        for label, messages in sets.items():
            name = decoder_names.get(label, label)
            sub = next(s for s in cfg.subscriptions if s.decoder == name)
            size = sum(len(p) for _, p in messages) / len(messages)
            decode_rate(DECODERS[name](sub), messages[:500], now_ns)  # warm-up
            rate = decode_rate(DECODERS[name](sub), messages, now_ns)
            gw = Gateway(cfg, data_dir=Path(workdir.name) / "gw")
            gateway_rate(gw, messages[:500])
            gw_rate = gateway_rate(gw, messages)
            for sink in gw.sinks:
                sink.outbox.close()
            via = ["-", "-"]
            if mosquitto is not None:
                part = messages[: args.broker_messages]
                via = [f"{broker_rate(cfg, mosquitto.host, mosquitto.port, part, q, Path(workdir.name)):,.0f}"
                       for q in (0, 1)]
            rows.append((label, f"{size:,.0f}", f"{rate:,.0f}", f"{gw_rate:,.0f}", *via))
    finally:
        if mosquitto is not None:
            mosquitto.stop()
        workdir.cleanup()

    head = ("decoder", "payload B", "decode msg/s", "gateway path msg/s", "mosquitto QoS0 msg/s",
            "mosquitto QoS1 msg/s")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print(f"MQTT decoders: {args.messages:,} payloads in-process, "
          f"{'no broker' if args.no_broker else f'{args.broker_messages:,} through a private mosquitto'}")
    for r in [head, *rows]:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
