"""Wires drivers, the pipeline and the sinks together under asyncio and owns the process lifecycle."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from paho.mqtt.client import topic_matches_sub

from drivers.base import Ack, DeviceHealth
from drivers.clock import Clock, SimClock
from drivers.modbus.profile import DeviceProfile, load_profiles
from drivers.mqtt.chirpstack import decode_parking_uplink
from drivers.mqtt.client import MqttSettings, MqttSubscriber
from drivers.mqtt.decoded import ClockWindow, Decoder, DecodeResult
from drivers.mqtt.elevator import ElevatorDecoder
from drivers.mqtt import json_columns
from drivers.mqtt.batching import PendingBatch
from drivers.mqtt.json_columns import Columns, JsonColumns
from drivers.mqtt.json_mapping import FieldSpec, JsonDecoder, JsonMapping
from drivers.mqtt.people_counter import PeopleCounterDecoder
from drivers.polling import ERROR_KINDS, PolledDevice
from gateway.config import Dlt645SerialBus, Dlt645TcpBus, GatewayConfig, InfluxDB1Sink, InfluxDB2Sink, ModbusTcpBus, Subscription
from gateway.analytics import DEFAULT_DETECTORS, AlertEvent, Analytics, AnalyticsSettings, RuleTimes
from gateway.logs import BurstLogger, log_event
from gateway.memory import release_file_pages, return_large_buffers
from gateway.pipeline import Pipeline
from gateway.sinks.influxdb import AckGroup, InfluxV1Writer, InfluxV2Writer, OutboxSink, Writer
from gateway.sinks.line_protocol import LineProtocolEncoder
from gateway.sinks.outbox import Outbox
from pipelines.batch import ReadingBatch
from pipelines.growth import grown_capacity
from pipelines.rollup import EmissionFactor
from pipelines.series import SeriesRegistry
from pipelines.validate import VeeParams
from pipelines.warmup import warm_up

if TYPE_CHECKING:
    from drivers.dlt645.client import Dlt645Client
    from drivers.modbus.poller import HostLimits, ModbusBus

log = logging.getLogger("gateway")

MQTT_BATCH_WINDOW_S = 0.02  # MQTT readings wait at most this long to share a batch
MQTT_BATCH_MAX_POINTS = 20_000  # a pending MQTT batch goes down the pipeline at this size at the latest
MQTT_DECODE_MAX_MESSAGES = 10_000  # undecoded messages are decoded at this count at the latest
GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (Python's default: 700)
GC_FULL_EVERY_S = 2.0  # a full collection of what is not frozen, this often
MQTT_SILENT_AFTER_S = 15 * 60  # an MQTT device counts as online while it sent a good message this recently


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the startup heap and out of the message path.

    After the imports and the numba warm-up the heap holds some 150,000 objects that live as long as
    the process; a full collection walks all of them (~40 ms), and at tens of thousands of MQTT
    messages a second paho's per-message objects (MQTTMessage, MQTTMessageInfo with its Condition)
    trigger one every second or so: measured as a quarter of the gateway's CPU at 20,000 messages/s,
    and the stalls show up in the latency. Freezing moves the startup heap out of the collector's
    reach; the larger first threshold makes young collections rare. Nothing on the data path relies
    on cycles being freed promptly (its objects are freed by reference counting).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def collect_garbage_loop(every_s: float = GC_FULL_EVERY_S) -> None:
    """Full collections on a clock, not on allocation counts.

    With the young threshold raised, a full collection comes only after millions of allocations, and
    the reference cycles made meanwhile (urllib3 makes a few per HTTP response) sit in memory until
    then: measured +7 MiB a minute at 20,000 messages/s, garbage that one gc.collect() freed. With the
    startup heap frozen, a full collection walks only the objects made since, a few milliseconds.
    """
    while True:
        await asyncio.sleep(every_s)
        gc.collect()


def _call_all(acks: list[Ack]) -> None:
    for ack in acks:
        ack()


def _clock(s: Subscription) -> ClockWindow:
    return ClockWindow(s.max_ahead_s, s.max_behind_s)


def _json_decoder(s: Subscription) -> JsonDecoder:
    m = s.mapping
    assert m is not None, "gateway.config.check_subscriptions requires a mapping for the json decoder"
    fields = {name: FieldSpec(f.path, f.scale, f.min, f.max) for name, f in m.fields.items()}
    return JsonDecoder(JsonMapping(m.measurement, fields, m.device_from_topic, m.device_path, dict(m.tags),
                                   dict(m.tag_paths), m.time_path, m.time_format or "rfc3339"), _clock(s))


# A factory per decoder name: every subscription gets its own instance, so the stateful decoders
# (counter baselines, active alarms) keep their state per subscription.
DECODERS: dict[str, Callable[[Subscription], Decoder]] = {
    "chirpstack_parking": lambda s: partial(decode_parking_uplink, clock=_clock(s)),
    "json": _json_decoder,
    "people_counter": lambda s: PeopleCounterDecoder(_clock(s)),
    "elevator": lambda s: ElevatorDecoder(_clock(s)),
}


class Gateway:
    def __init__(self, cfg: GatewayConfig, data_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.site = cfg.gateway.site
        self.data_dir = Path(data_dir or cfg.gateway.data_dir)
        self.profiles: dict[str, DeviceProfile] = load_profiles(list(cfg.gateway.profile_dirs))
        self.clock = SimClock.from_file(cfg.gateway.sim_clock_file) if cfg.gateway.sim_clock_file else Clock()
        self.registry = SeriesRegistry()
        self.encoder = LineProtocolEncoder(self.registry)
        self.pipeline = Pipeline()
        self.analytics = self._make_analytics() if cfg.analytics.enabled else None
        self.alerts_open: dict[tuple[str, str], AlertEvent] = {}  # (device, rule) -> the raise
        self.readings_in = 0
        self.decode_drops: Counter[tuple[str, str]] = Counter()
        self._burst = BurstLogger(log)
        self.sinks = [self._make_sink(s) for s in cfg.sinks]
        self.host_limits: HostLimits | None = None  # shared by the Modbus TCP buses, made with the first one
        self.buses: dict[str, ModbusBus | Dlt645Client] = {b.name: self._make_bus(b) for b in cfg.buses}
        self.pollers: list[PolledDevice] = [self._make_poller(d) for d in cfg.devices]
        self.mqtt: MqttSubscriber | None = None
        self._mqtt_pending = PendingBatch(self._accept_mqtt, MQTT_BATCH_MAX_POINTS)
        # messages received and not decoded yet (the batching window), with one ack per delivery
        self._inbox_topics: list[str] = []
        self._inbox_payloads: list[bytes] = []
        self._inbox_acks: list[Ack] = []
        self._mqtt_flush_scheduled = False
        self.mqtt_devices: dict[str, float] = {}  # device -> monotonic time of last good message
        self._mqtt_health_sids: dict[str, list[int]] = {}  # device -> its device_health series
        if cfg.mqtt is not None and (cfg.subscriptions or cfg.northbound is not None):
            m = cfg.mqtt
            tls = m.tls
            self.mqtt = MqttSubscriber(
                MqttSettings(m.host, m.port, m.client_id, m.username, m.password, m.keepalive_s,
                             str(tls.ca_file) if tls and tls.ca_file else None,
                             str(tls.cert_file) if tls and tls.cert_file else None,
                             str(tls.key_file) if tls and tls.key_file else None,
                             tls is not None, bool(tls and tls.insecure)),
                [(s.topic, s.qos) for s in cfg.subscriptions],
                on_burst=self._on_mqtt_burst, burst_window_s=MQTT_BATCH_WINDOW_S,
            )
        self._decoder_for = [(s.topic, DECODERS[s.decoder](s)) for s in cfg.subscriptions]
        self._drops_logged: Counter[str] = Counter()  # per device: decode problems already in a status log
        # per message, matching the topic filters and registering series cost more than decoding: both are
        # remembered (topics bounded, since a broker can send arbitrarily many distinct topics)
        self._decoder_of_topic: dict[str, Decoder | None] = {}
        self._series_of: dict[tuple, int] = {}
        # the columnar fast path of each json decoder whose mapping fits it (by id of the decoder), and
        # per decoder a table device index -> series of its fields
        self._columns: dict[int, JsonColumns] = {
            id(d): JsonColumns(d) for _, d in self._decoder_for
            if isinstance(d, JsonDecoder) and json_columns.supports(d)}
        self._sid_tables: dict[int, np.ndarray] = {}

    # construction ----------------------------------------------------------------------------
    def _make_sink(self, s: InfluxDB1Sink | InfluxDB2Sink) -> OutboxSink:
        """One outbox file, queue and sender per sink: a sink that is down never holds up another."""
        writer: Writer
        if isinstance(s, InfluxDB2Sink):
            writer = InfluxV2Writer(s.url, s.org, s.bucket, s.token, s.timeout_s)
        else:
            writer = InfluxV1Writer(s.url, s.database, s.retention_policy, s.username, s.password, s.timeout_s)
        outbox = Outbox.open(self.data_dir / f"outbox-{s.name}.sqlite3", fsync=s.fsync, max_bytes=s.max_outbox_bytes)
        return OutboxSink(s.name, writer, outbox, s.batch_max_points, s.batch_max_age_s,
                          max_request_bytes=s.max_request_bytes, retry_max_s=s.retry_max_s,
                          create_database=isinstance(s, InfluxDB1Sink) and s.create_database,
                          ack_max_wait_s=s.ack_max_wait_s)

    # The Modbus and DL/T 645 drivers (pymodbus among them, ~7 MiB once imported) are imported when a
    # configuration has such a bus, not by every gateway: many read MQTT only.
    def _make_bus(self, b) -> ModbusBus | Dlt645Client:
        from drivers.dlt645.poller import line_client
        from drivers.modbus.poller import BusSettings, HostLimits, ModbusBus

        if isinstance(b, ModbusTcpBus):
            if self.host_limits is None:
                self.host_limits = HostLimits(self.cfg.gateway.modbus_tcp_per_host)
            return ModbusBus(BusSettings(b.name, "tcp", host=b.host, port=b.port, timeout_s=b.timeout_s,
                                         max_parallel=b.max_parallel), self.host_limits)
        if isinstance(b, Dlt645SerialBus):
            return line_client("serial", device=b.device, baudrate=b.baudrate, parity=b.parity,
                               stopbits=b.stopbits, timeout_s=b.timeout_s)
        if isinstance(b, Dlt645TcpBus):
            return line_client("tcp", host=b.host, port=b.port, timeout_s=b.timeout_s)
        return ModbusBus(BusSettings(b.name, "rtu", device=b.device, baudrate=b.baudrate, parity=b.parity,
                                     stopbits=b.stopbits, timeout_s=b.timeout_s))

    def _make_poller(self, d) -> PolledDevice:
        from drivers.dlt645.client import Dlt645Client, SerialTransport
        from drivers.dlt645.poller import DEFAULT_FIELDS, Dlt645DevicePoller
        from drivers.modbus.poller import ModbusDevicePoller

        bus = self.buses[d.bus]
        if isinstance(bus, Dlt645Client):
            fields = tuple(d.fields or DEFAULT_FIELDS)
            tags = {"site": self.site, "building": d.building, "device": d.id, "model": "dlt645"}
            ids = np.array([self.registry.register("energy_meter", tags, f) for f in fields], dtype=np.int32)
            return Dlt645DevicePoller(d.id, bus, d.address, fields, ids, d.poll_interval_s, self.accept,
                                      on_health=self._health_changed, clock=self.clock,
                                      serial=isinstance(bus.transport, SerialTransport))
        profile = self.profiles[d.profile]
        tags = {"site": self.site, "building": d.building, "device": d.id, "model": profile.model}
        ids = np.array([self.registry.register(profile.measurement, tags, r.field) for r in profile.registers],
                       dtype=np.int32)
        return ModbusDevicePoller(d.id, bus, d.unit_id, profile, ids, d.poll_interval_s, self.accept,
                                  on_health=self._health_changed, clock=self.clock)

    def _make_analytics(self) -> Analytics:
        a = self.cfg.analytics
        r = a.rules
        params = dict(DEFAULT_DETECTORS)
        for kind, overrides in a.detectors.items():
            params[kind] = dataclasses.replace(params[kind], **overrides)
        settings = AnalyticsSettings(
            site=self.site, interval_minutes=tuple(sorted(set(a.interval_minutes))), lateness_s=a.lateness_s,
            max_gap_s=a.max_gap_s, detectors=params, alert_raise=a.alert_raise, alert_clear=a.alert_clear,
            write_scores=a.write_scores, vee=VeeParams(max_gap_s=a.max_gap_s),
            factor=EmissionFactor(a.emission_factor_kg_per_kwh, a.emission_factor_year, a.emission_factor_region,
                                  "average", "configuration [analytics]"),
            rules=RuleTimes(r.trapped_passenger_s, r.door_open_while_moving_s, r.stopped_outside_landing_s,
                            r.fire_lane_minutes * 60.0, r.crowding_per_minute, r.crowding_s, r.device_offline_s,
                            r.clear_after_s))
        return Analytics(self.registry, settings, [b.id for b in self.cfg.buildings],
                         {d.id for d in self.cfg.devices if d.pv})

    # data path -------------------------------------------------------------------------------
    def accept(self, batch: ReadingBatch, ack: Ack | None = None) -> None:
        """Every driver's batches come through here: pipeline, encode once, hand to each sink."""
        batch = self.pipeline.process(batch)
        self.readings_in += len(batch)  # values kept: stale marks and dropped values are counted apart
        if self.analytics is not None and len(batch):
            derived, events = self.analytics.process(batch)
            if events:
                derived = ReadingBatch.concat([derived, self._alerts(events)])
            if len(derived):
                batch = ReadingBatch.concat([batch, derived])
        self._write(batch, ack)

    def _write(self, batch: ReadingBatch, ack: Ack | None = None) -> None:
        """Encode once and hand to every sink (derived points come here directly: no pipeline, no count)."""
        lp, n = self.encoder.encode(batch)
        group = AckGroup([ack], len(self.sinks)) if ack is not None else None
        for sink in self.sinks:
            sink.add(lp, n, group)

    def _alerts(self, events: list[AlertEvent]) -> ReadingBatch:
        """Log, publish northbound and turn into ``alert`` points; a clear without its raise is ignored."""
        kept = []
        for e in events:
            key = (e.device, e.rule)
            if e.raised:
                self.alerts_open[key] = e
            elif self.alerts_open.pop(key, None) is None:
                continue
            kept.append(e)
            log_event(log, logging.WARNING if e.raised else logging.INFO,
                      "alert_raised" if e.raised else "alert_cleared", "", device=e.device, rule=e.rule,
                      building=e.building or "-", value=round(e.value, 3))
            self._publish_alert(e)
        assert self.analytics is not None
        return self.analytics.alert_batch(kept)

    def _publish_alert(self, e: AlertEvent) -> None:
        nb = self.cfg.northbound
        if nb is None or self.mqtt is None:
            return
        topic = f"{nb.topic_prefix}/{self.site}/alerts/{e.device}/{e.rule}"
        doc = {"site": self.site, "device": e.device, "building": e.building or None, "rule": e.rule,
               "state": "raised" if e.raised else "cleared", "time_ns": e.ts_ns, "value": e.value}
        # retained: an operator's app connecting later sees what is open; a clear replaces the raise
        self.mqtt.publish(topic, json.dumps(doc).encode(), qos=nb.qos, retain=nb.retain)

    async def _rules_loop(self) -> None:
        """Conditions that keep holding without new messages (a trapped car reports nothing new)."""
        assert self.analytics is not None
        while True:
            await asyncio.sleep(1.0)
            events = self.analytics.tick(self.clock.now_ns())
            if events:
                self._write(self._alerts(events))

    def _decoder(self, topic: str) -> Decoder | None:
        """The decoder of the first subscription whose topic filter matches."""
        try:
            return self._decoder_of_topic[topic]
        except KeyError:
            pass
        found = next((d for pattern, d in self._decoder_for if topic_matches_sub(pattern, topic)), None)
        if len(self._decoder_of_topic) >= 10_000:
            self._decoder_of_topic.clear()
        self._decoder_of_topic[topic] = found
        return found

    def _on_mqtt_message(self, topic: str, payload: bytes, ack: Ack) -> None:
        """One message (tests, and callers that deliver one at a time): it waits for the batching
        window (20 ms, or MQTT_DECODE_MAX_MESSAGES) to be decoded with the messages after it."""
        self._inbox_topics.append(topic)
        self._inbox_payloads.append(payload)
        self._inbox_acks.append(ack)
        if len(self._inbox_topics) >= MQTT_DECODE_MAX_MESSAGES:
            self._flush_mqtt()
        elif not self._mqtt_flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the event loop (a direct call): nothing to batch with
                self._flush_mqtt()
                return
            self._mqtt_flush_scheduled = True
            # a few milliseconds of latency buy one pass of the core for a whole burst of messages
            loop.call_later(MQTT_BATCH_WINDOW_S, self._flush_mqtt)

    def _on_mqtt_burst(self, topics: list[str], payloads: list[bytes], ack: Ack) -> None:
        """What the subscriber collected over the batching window: decoded in one go and sent down the
        pipeline now, so a burst costs a few numpy calls and one pass of the core however many
        messages it holds.

        ``ack`` acknowledges these messages once every reading of them is committed (right away
        when nothing in them is kept: acknowledging loses nothing then)."""
        self._inbox_topics += topics
        self._inbox_payloads += payloads
        self._inbox_acks.append(ack)
        self._flush_mqtt()

    def _flush_mqtt(self) -> None:
        """Decode what waits and send the pending batch down the pipeline."""
        self._mqtt_flush_scheduled = False
        topics, payloads, acks = self._inbox_topics, self._inbox_payloads, self._inbox_acks
        self._inbox_topics, self._inbox_payloads, self._inbox_acks = [], [], []
        if topics:
            self._decode_burst(topics, payloads, acks[0] if len(acks) == 1 else partial(_call_all, acks))
        self._mqtt_pending.flush()

    def _decode_burst(self, topics: list[str], payloads: list[bytes], ack: Ack) -> None:
        """Decode messages into the pending batch: columns where the decoder has them, else one by one."""
        now_ns = self.clock.now_ns()
        decoders = [self._decoder(t) for t in topics]
        first = decoders[0]
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # msg, series, ts, value
        slow: list[int] = []
        groups = [first] if all(d is first for d in decoders) else list(dict.fromkeys(decoders))
        for decoder in groups:
            if decoder is None:
                continue
            idx = None if len(groups) == 1 else [i for i, d in enumerate(decoders) if d is decoder]
            columns = self._columns.get(id(decoder))
            if columns is None:
                slow += range(len(topics)) if idx is None else idx
                continue
            t = topics if idx is None else [topics[i] for i in idx]
            p = payloads if idx is None else [payloads[i] for i in idx]
            try:
                cols = columns.decode(t, p, now_ns)
            except Exception as e:  # noqa: BLE001 - a bug here must cost speed (per-message path), not data
                log_event(log, logging.ERROR, "burst_decode_failed", f"{type(e).__name__}: {e}"[:300])
                slow += range(len(topics)) if idx is None else idx
                continue
            pos = np.arange(len(topics)) if idx is None else np.asarray(idx)
            slow += pos[cols.rest].tolist()
            if len(cols.taken):
                parts.append(self._readings_of(decoder, columns, cols, pos[cols.taken]))
        if slow:
            slow.sort()
            parts += self._decode_each(slow, topics, payloads, decoders, now_ns)
        parts = [x for x in parts if len(x[0])]
        if not parts:
            ack()  # nothing to keep: acknowledging loses nothing
            return
        if len(parts) == 1:
            msg, sids, ts, values = parts[0]
        else:
            msg, sids, ts, values = (np.concatenate([x[k] for x in parts]) for k in range(4))
            order = np.argsort(msg, kind="stable")  # arrival order: the last reading of a series wins
            msg, sids, ts, values = msg[order], sids[order], ts[order], values[order]
        self._mqtt_pending.add(msg, sids, ts, values, ack)

    def _readings_of(self, decoder: Decoder, columns: JsonColumns, cols: Columns,
                     msg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Columns -> readings (message position, series, ts, value), series looked up per device, once."""
        table = self._sid_tables.get(id(decoder))
        n_fields = len(columns.field_names)
        if table is None or len(table) < len(columns.devices):
            grown = np.full((grown_capacity(len(table) if table is not None else 0, len(columns.devices), 64),
                             n_fields), -1, dtype=np.int32)
            if table is not None:
                grown[: len(table)] = table
            table = self._sid_tables[id(decoder)] = grown
        devices = np.unique(cols.device)
        m = columns.mapping
        for d in devices[table[devices, 0] < 0]:
            tags = {"site": self.site, "device": columns.devices[d], **m.tags}  # as JsonDecoder builds them
            table[d] = [self.registry.register(m.measurement, tags, f) for f in columns.field_names]
        seen = time.monotonic()
        for d in devices.tolist():
            self.mqtt_devices[columns.devices[d]] = seen
        present = ~np.isnan(cols.values)
        rows, fields = np.nonzero(present)  # row-major: a message's fields stay together, in order
        return (msg[rows], table[cols.device[rows], fields], cols.ts_ns[rows], cols.values[rows, fields])

    def _decode_each(self, positions: list[int], topics: list[str], payloads: list[bytes],
                     decoders: list[Decoder | None], now_ns: int) -> list[tuple[np.ndarray, ...]]:
        """The per-message path: decoders without a columnar form, and what the fast path left over."""
        msg: list[int] = []
        sids: list[int] = []
        ts: list[int] = []
        values: list[float] = []
        for i in positions:
            decoder = decoders[i]
            assert decoder is not None
            kept = False
            try:
                result = decoder(topics[i], payloads[i], self.site, now_ns)
                for r in result.readings:
                    line = (r.measurement, tuple(r.tags.items()))
                    for field, value in r.fields.items():
                        sid = self._series_of.get((line, field))
                        if sid is None:
                            sid = self._series_of[(line, field)] = self.registry.register(r.measurement, r.tags,
                                                                                          field)
                        msg.append(i)
                        sids.append(sid)
                        ts.append(r.ts_ns)
                        values.append(value)
                        kept = True
            except Exception as e:  # a decoder bug costs this message, never the subscription or the loop
                result = DecodeResult(problems=[("decoder_error", f"{type(e).__name__}: {e}"[:300])])
            for reason, detail in result.problems:
                self.decode_drops[(result.device or "unknown", reason)] += 1
                self._burst.log(logging.WARNING, "payload_dropped", (result.device, reason), detail,
                                device=result.device or "unknown", error=reason, topic=topics[i])
            if kept:
                self.mqtt_devices[result.device] = time.monotonic()
        if not msg:
            return []
        return [(np.asarray(msg, dtype=np.int64), np.asarray(sids, dtype=np.int32), np.asarray(ts, dtype=np.int64),
                 np.asarray(values, dtype=np.float64))]

    def _accept_mqtt(self, batch: ReadingBatch, acks: list[Ack]) -> None:
        self.accept(batch, partial(_call_all, acks) if acks else None)

    def _mqtt_status(self) -> None:
        """device_health (driver mqtt) of every device heard from, and one log line per device with new drops.

        ``online`` is a good message within MQTT_SILENT_AFTER_S; ``errors`` is the device's cumulative
        count of decode problems; the log line lists them by reason, so a device sending garbage shows
        up in the status output without a log line per message.
        """
        per_device: dict[str, Counter[str]] = {}
        for (device, reason), n in self.decode_drops.items():
            per_device.setdefault(device, Counter())[reason] = n
        for device, reasons in sorted(per_device.items()):
            total = sum(reasons.values())
            if total != self._drops_logged[device]:
                self._drops_logged[device] = total
                log_event(log, logging.WARNING, "decode_drops", "", device=device, drops=total,
                          reasons=",".join(f"{r}:{n}" for r, n in sorted(reasons.items())))
        horizon = time.monotonic() - MQTT_SILENT_AFTER_S
        series, values = [], []
        for device in sorted((set(self.mqtt_devices) | set(per_device)) - {"unknown"}):
            sids = self._mqtt_health_sids.get(device)
            if sids is None:  # thousands of devices every status interval: registered once each
                tags = {"site": self.site, "device": device, "driver": "mqtt"}
                sids = self._mqtt_health_sids[device] = [self.registry.register("device_health", tags, f)
                                                         for f in ("online", "stale", "errors")]
            online = float(self.mqtt_devices.get(device, -1e18) >= horizon)
            # stale as for polled devices, so the device_offline rule also covers devices that went silent
            series += sids
            values += [online, 1.0 - online, float(sum(per_device.get(device, {}).values()))]
        if series:
            self.accept(ReadingBatch.from_arrays(series, self.clock.now_ns(), values))

    # lifecycle -------------------------------------------------------------------------------
    def devices_online(self) -> tuple[int, int]:
        online = sum(p.health.online for p in self.pollers)
        horizon = time.monotonic() - MQTT_SILENT_AFTER_S
        online_mqtt = sum(1 for t in self.mqtt_devices.values() if t >= horizon)
        return online + online_mqtt, len(self.pollers) + len(self.mqtt_devices)

    def _health_rows(self, health: DeviceHealth) -> tuple[list[int], list[float]]:
        tags = {"site": self.site, "device": health.device, "driver": health.driver}
        fields = ("online", "stale", "errors", "error_code")
        values = (float(health.online), float(not health.online), float(sum(health.errors.values())),
                  float(0 if health.online else ERROR_KINDS.get(health.last_error, 0)))
        return [self.registry.register("device_health", tags, f) for f in fields], list(values)

    def _health_changed(self, health: DeviceHealth) -> None:
        """A poll failed or a device came back: say so now, not at the next status tick."""
        series, values = self._health_rows(health)
        self.accept(ReadingBatch.from_arrays(series, self.clock.now_ns(), values))

    def _write_health(self) -> None:
        now = self.clock.now_ns()
        series, values = [], []
        for p in self.pollers:
            if not p.health.readings and not p.health.errors:
                continue  # not polled yet: nothing is known, so nothing is claimed
            s, v = self._health_rows(p.health)
            series += s
            values += v
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
            self._mqtt_status()
            for sink in self.sinks:
                st = sink.outbox.stats()
                log_event(log, logging.INFO, "status", "", points_per_s=round(rate, 1),
                          devices_online=online, devices=total, readings_total=self.readings_in,
                          sink=sink.name, delivered=sink.counters.points_delivered,
                          queued_points=st.points, queued_bytes=st.bytes, write_failures=sink.counters.write_failures,
                          dropped=sink.counters.points_dropped, dead_lettered=sink.counters.points_dead_lettered,
                          query=sink.writer.describe().replace("/write?", "/query?"))

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> None:
        return_large_buffers()
        if self.analytics is not None:
            # compile (or load from numba's cache) every kernel now, never on the first poll; the file
            # pages each compile touched are unmapped before the next (gateway/memory.py)
            took = await asyncio.to_thread(warm_up, before_each=partial(release_file_pages, evict=False))
            log_event(log, logging.INFO, "core_ready", "", seconds=round(took, 2))
            # nothing runs LLVM from here on, nor much of what the start-up ran: those pages go back
            release_file_pages()
        settle_garbage_collector()
        for sink in self.sinks:
            sink.start()  # each sink creates its database itself, so a server that is down delays nothing
        tasks = [asyncio.create_task(p.run(), name=f"poll-{p.device_id}") for p in self.pollers]
        tasks.append(asyncio.create_task(self._status_loop(self.cfg.gateway.status_interval_s), name="status"))
        tasks.append(asyncio.create_task(collect_garbage_loop(), name="gc"))
        if self.analytics is not None:
            tasks.append(asyncio.create_task(self._rules_loop(), name="rules"))
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
        self._flush_mqtt()  # messages decoded but not yet down the pipeline
        if self.analytics is not None:
            tail = self.analytics.flush()  # intervals still open: written as they stand (coverage < 1)
            if len(tail):
                self._write(tail)
        for sink in self.sinks:
            sink.commit()  # everything read so far is on disk now; this also acknowledges MQTT messages
        if self.mqtt is not None:
            await asyncio.sleep(0.2)  # let paho's thread send the PUBACKs before disconnecting
            self.mqtt.stop()
        for bus in self.buses.values():
            closing = bus.close()  # a coroutine for DL/T 645 lines
            if asyncio.iscoroutine(closing):
                await closing
        await asyncio.gather(*(sink.close(drain_timeout_s=3.0) for sink in self.sinks))
        delivered = sum(s.counters.points_delivered for s in self.sinks)
        log_event(log, logging.INFO, "stopped", "", readings_total=self.readings_in, delivered=delivered)
