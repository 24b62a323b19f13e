"""Wires drivers, the pipeline and the sinks together under asyncio and owns the process lifecycle."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from drivers.base import Ack
from drivers.modbus.poller import BusSettings, ModbusBus, ModbusDevicePoller
from drivers.modbus.profile import DeviceProfile, load_profiles
from drivers.mqtt.chirpstack import decode_parking_uplink
from drivers.mqtt.client import MqttSettings, MqttSubscriber
from gateway.config import GatewayConfig, InfluxDB1Sink, ModbusTcpBus
from gateway.logs import BurstLogger, log_event
from gateway.pipeline import Pipeline
from gateway.sinks.influxdb import AckGroup, InfluxV1Writer, OutboxSink
from gateway.sinks.line_protocol import LineProtocolEncoder
from gateway.sinks.outbox import Outbox
from pipelines.batch import QUALITY_GOOD, ReadingBatch
from pipelines.series import SeriesRegistry

log = logging.getLogger("gateway")

DECODERS = {"chirpstack_parking": decode_parking_uplink}


class Gateway:
    def __init__(self, cfg: GatewayConfig, data_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.site = cfg.gateway.site
        self.data_dir = Path(data_dir or cfg.gateway.data_dir)
        self.profiles: dict[str, DeviceProfile] = load_profiles(list(cfg.gateway.profile_dirs))
        self.registry = SeriesRegistry()
        self.encoder = LineProtocolEncoder(self.registry)
        self.pipeline = Pipeline()
        self.readings_in = 0
        self.decode_drops: Counter[tuple[str, str]] = Counter()
        self._burst = BurstLogger(log)
        self.sinks = [self._make_sink(s) for s in cfg.sinks]
        self.buses = {b.name: self._make_bus(b) for b in cfg.buses}
        self.pollers = [self._make_poller(d) for d in cfg.devices]
        self.mqtt: MqttSubscriber | None = None
        self.mqtt_devices: dict[str, float] = {}  # device -> monotonic time of last good message
        if cfg.mqtt is not None and cfg.subscriptions:
            m = cfg.mqtt
            tls = m.tls
            self.mqtt = MqttSubscriber(
                MqttSettings(m.host, m.port, m.client_id, m.username, m.password, m.keepalive_s,
                             str(tls.ca_file) if tls and tls.ca_file else None,
                             str(tls.cert_file) if tls and tls.cert_file else None,
                             str(tls.key_file) if tls and tls.key_file else None,
                             tls is not None, bool(tls and tls.insecure)),
                [(s.topic, s.qos) for s in cfg.subscriptions],
                self._on_mqtt_message,
            )
        self._decoder_for = [(s.topic, DECODERS[s.decoder]) for s in cfg.subscriptions]

    # construction ----------------------------------------------------------------------------
    def _make_sink(self, s: InfluxDB1Sink) -> OutboxSink:
        writer = InfluxV1Writer(s.url, s.database, s.retention_policy, s.username, s.password, s.timeout_s)
        outbox = Outbox(self.data_dir / f"outbox-{s.name}.sqlite3")
        sink = OutboxSink(s.name, writer, outbox, s.batch_max_points, s.batch_max_age_s)
        sink.create_database = s.create_database  # type: ignore[attr-defined]
        return sink

    def _make_bus(self, b) -> ModbusBus:
        if isinstance(b, ModbusTcpBus):
            return ModbusBus(BusSettings(b.name, "tcp", host=b.host, port=b.port, timeout_s=b.timeout_s,
                                         max_parallel=b.max_parallel))
        return ModbusBus(BusSettings(b.name, "rtu", device=b.device, baudrate=b.baudrate, parity=b.parity,
                                     stopbits=b.stopbits, timeout_s=b.timeout_s))

    def _make_poller(self, d) -> ModbusDevicePoller:
        profile = self.profiles[d.profile]
        tags = {"site": self.site, "building": d.building, "device": d.id, "model": profile.model}
        ids = np.array([self.registry.register(profile.measurement, tags, r.field) for r in profile.registers],
                       dtype=np.int32)
        return ModbusDevicePoller(d.id, self.buses[d.bus], d.unit_id, profile, ids, d.poll_interval_s, self.accept)

    # data path -------------------------------------------------------------------------------
    def accept(self, batch: ReadingBatch, ack: Ack | None = None) -> None:
        """Every driver's batches come through here: pipeline, encode once, hand to each sink."""
        self.readings_in += len(batch)
        batch = self.pipeline.process(batch)
        lp, n = self.encoder.encode(batch)
        group = AckGroup([ack], len(self.sinks)) if ack is not None else None
        for sink in self.sinks:
            sink.add(lp, n, group)

    def _decoder(self, topic: str):
        from paho.mqtt.client import topic_matches_sub

        for pattern, decoder in self._decoder_for:
            if topic_matches_sub(pattern, topic):
                return decoder
        return None

    def _on_mqtt_message(self, topic: str, payload: bytes, ack: Ack) -> None:
        decoder = self._decoder(topic)
        if decoder is None:
            ack()
            return
        result = decoder(topic, payload, self.site, time.time_ns())
        for reason, detail in result.problems:
            self.decode_drops[(result.device or "unknown", reason)] += 1
            self._burst.log(logging.WARNING, "payload_dropped", (result.device, reason), detail,
                            device=result.device or "unknown", error=reason, topic=topic)
        if not result.readings:
            ack()  # nothing to keep: acknowledging loses nothing
            return
        series, ts, values = [], [], []
        for r in result.readings:
            for field, value in r.fields.items():
                series.append(self.registry.register(r.measurement, r.tags, field))
                ts.append(r.ts_ns)
                values.append(value)
        self.mqtt_devices[result.device] = time.monotonic()
        self.accept(ReadingBatch.from_arrays(series, ts, values, QUALITY_GOOD), ack)

    # lifecycle -------------------------------------------------------------------------------
    def devices_online(self) -> tuple[int, int]:
        online = sum(p.health.online for p in self.pollers)
        horizon = time.monotonic() - 15 * 60
        online_mqtt = sum(1 for t in self.mqtt_devices.values() if t >= horizon)
        return online + online_mqtt, len(self.pollers) + len(self.mqtt_devices)

    def _write_health(self) -> None:
        now = time.time_ns()
        series, values = [], []
        for p in self.pollers:
            tags = {"site": self.site, "device": p.device_id, "driver": "modbus"}
            series += [self.registry.register("device_health", tags, "online"),
                       self.registry.register("device_health", tags, "errors")]
            values += [float(p.health.online), float(sum(p.health.errors.values()))]
        if series:
            self.accept(ReadingBatch.from_arrays(series, now, values))

    async def _status_loop(self, interval_s: float) -> None:
        last_n, last_t = self.readings_in, time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            rate = (self.readings_in - last_n) / (now - last_t)
            last_n, last_t = self.readings_in, now
            online, total = self.devices_online()
            self._write_health()
            for sink in self.sinks:
                st = sink.outbox.stats()
                log_event(log, logging.INFO, "status", "", points_per_s=round(rate, 1),
                          devices_online=online, devices=total, readings_total=self.readings_in,
                          sink=sink.name, delivered=sink.counters.points_delivered,
                          queued_points=st.points, write_failures=sink.counters.write_failures,
                          query=sink.writer.describe().replace("/write?", "/query?"))

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> None:
        for sink in self.sinks:
            if getattr(sink, "create_database", False):
                result = await asyncio.to_thread(sink.writer.create_database)
                if not result.ok:
                    log_event(log, logging.WARNING, "create_database_failed", result.body[:300],
                              sink=sink.name, error=f"http_{result.status}" if result.status else "unreachable")
            sink.start()
        tasks = [asyncio.create_task(p.run(), name=f"poll-{p.device_id}") for p in self.pollers]
        tasks.append(asyncio.create_task(self._status_loop(self.cfg.gateway.status_interval_s), name="status"))
        if self.mqtt is not None:
            self.mqtt.start()
        log_event(log, logging.INFO, "started", "", site=self.site, modbus_devices=len(self.pollers),
                  subscriptions=len(self._decoder_for), sinks=",".join(s.name for s in self.sinks))
        try:
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({stopped}, timeout=duration_s or None)
            finally:
                stopped.cancel()
        finally:
            await self.shutdown(tasks)

    async def shutdown(self, tasks: list[asyncio.Task]) -> None:
        log_event(log, logging.INFO, "stopping", "")
        for t in tasks:
            t.cancel()
        # a task stuck inside a client library's connect must not hold the shutdown hostage
        _, stuck = await asyncio.wait(tasks, timeout=2.0)
        if stuck:
            log_event(log, logging.WARNING, "tasks_not_stopping", "", tasks=",".join(t.get_name() for t in stuck))
        for sink in self.sinks:
            sink.commit()  # everything read so far is on disk now; this also acknowledges MQTT messages
        if self.mqtt is not None:
            await asyncio.sleep(0.2)  # let paho's thread send the PUBACKs before disconnecting
            self.mqtt.stop()
        for bus in self.buses.values():
            bus.close()
        await asyncio.gather(*(sink.close(drain_timeout_s=3.0) for sink in self.sinks))
        delivered = sum(s.counters.points_delivered for s in self.sinks)
        log_event(log, logging.INFO, "stopped", "", readings_total=self.readings_in, delivered=delivered)
