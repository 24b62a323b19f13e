"""The MQTT fast path: a burst of JSON payloads decoded into columns (drivers/mqtt/json_columns.py)
must give exactly what the per-message decoder gives (readings, drops per device and reason), and the
pending batch (drivers/mqtt/batching.py) must keep one reading per series per batch, in arrival order,
with the burst's ack riding on the batch that commits its last reading."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mqtt import json_columns
from drivers.mqtt.batching import PendingBatch, previous_occurrence
from gateway.config import parse_config
from gateway.runtime import Gateway
from pipelines.batch import ReadingBatch

CONFIG = """
[gateway]
site = "burst"
[analytics]
enabled = false
[mqtt]
host = "127.0.0.1"
[[sinks]]
type = "influxdb1"
name = "local"
url = "http://127.0.0.1:9"
database = "x"
[[subscriptions]]
topic = "meters/+/telemetry"
decoder = "json"
[subscriptions.mapping]
measurement = "energy_meter"
device_from_topic = 1
tags = {{ building = "B2" }}
time_path = "ts"
time_format = "{fmt}"
fields.active_power = {{ path = "p", scale = 0.001, min = -100, max = 100 }}
fields.voltage = {{ path = "v" }}
"""


class Captured:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.batches: list[list[tuple[str, str, int, float]]] = []
        self.acks: list = []

    def __call__(self, batch: ReadingBatch, ack=None) -> None:
        keys = self.gw.registry.keys
        self.batches.append([(dict(keys[s].tags)["device"], keys[s].field, int(t), float(v))
                             for s, t, v in zip(batch.series, batch.ts_ns, batch.value)])
        if ack is not None:
            self.acks.append(ack)


def gateway(tmp_path, fmt: str = "epoch_ms", fast: bool = True, monkeypatch=None) -> tuple[Gateway, Captured]:
    gw = Gateway(parse_config(CONFIG.format(fmt=fmt), known_profiles=set()), data_dir=tmp_path)
    if not fast:
        gw._columns_of = lambda decoder: None  # type: ignore[method-assign]
    captured = Captured(gw)
    gw.accept = captured  # type: ignore[method-assign]
    return gw, captured


NOW_MS = time.time_ns() // 1_000_000

# payloads the fast path must leave to the per-message decoder, next to good ones
TRICKY = [
    b'{"ts": %d, "p": 1500, "v": 230.1}' % NOW_MS,
    b'{"ts": %d, "p": true, "v": 231}' % NOW_MS,  # boolean: 1.0
    b'{"ts": %d.5, "p": 1, "v": 1}' % NOW_MS,  # float timestamp
    b'{"p": 1, "v": 1}',  # no timestamp
    b'{"ts": null, "p": 1}',
    b'{"ts": %d, "p": null, "v": 229}' % NOW_MS,  # null field: skipped
    b'{"ts": %d, "p": "fast"}' % NOW_MS,  # wrong type
    b'{"ts": %d, "p": 1e400}' % NOW_MS,
    b'{"ts": %d, "v": %d}' % (NOW_MS, 10 ** 400),  # an integer beyond float
    b'{"ts": %d, "v": %d}' % (NOW_MS, 2 ** 70),  # beyond int64, still a float
    b'{"ts": %d, "p": 100001}' % NOW_MS,  # above max after scaling
    b'{"ts": %d, "p": 1}' % (NOW_MS + 3_600_000),  # an hour ahead
    b'{"ts": %d, "p": 1}' % (NOW_MS - 2 * 86_400_000),  # two days behind
    b'{"ts": 0, "p": 1}',
    b'{"ts": -5, "p": 1}',
    b'{"ts": %d, "p": 1}' % (10 ** 25),
    b'{"ts": %d, "q": 1}' % NOW_MS,  # no mapped field
    b'[1, 2]',
    b'{oops',
    b'',
    b'\xff\xfe',
    b'{"ts": %d, "p": 2, "p": 3, "extra": {"a": [1]}}' % NOW_MS,  # duplicate key: the last wins
    b'{"ts": %d, "NaN": 1, "p": NaN}' % NOW_MS,
    b'{"ts": %d, "p": 7}\n{"ts": %d, "p": 8}' % (NOW_MS, NOW_MS),  # two documents in one payload
]


def run(gw: Gateway, topics: list[str], payloads: list[bytes], now_ns: int) -> list[int]:
    acked: list[int] = []
    gw.clock.now_ns = lambda: now_ns  # type: ignore[method-assign]
    gw._on_mqtt_burst(topics, payloads, lambda: acked.append(1))
    gw._flush_mqtt()
    return acked


@pytest.mark.parametrize("fmt", ["epoch_ms", "epoch_ns", "epoch_s"])
def test_fast_path_gives_what_the_per_message_decoder_gives(tmp_path, fmt):
    unit = {"epoch_s": 1_000, "epoch_ms": 1, "epoch_ns": 1 / 1_000_000}[fmt]
    payloads = [p.replace(b"%d" % NOW_MS, b"%d" % int(NOW_MS / unit)) for p in TRICKY]
    topics = [f"meters/m{i % 5}/telemetry" for i in range(len(payloads))] + ["meters", "meters//telemetry"]
    payloads += [TRICKY[0], TRICKY[0]]  # topics without a device level
    now_ns = NOW_MS * 1_000_000 + 5_000
    fast, fast_rows = gateway(tmp_path / "fast", fmt)
    slow, slow_rows = gateway(tmp_path / "slow", fmt, fast=False)
    run(fast, topics, payloads, now_ns)
    run(slow, topics, payloads, now_ns)
    assert fast_rows.batches == slow_rows.batches
    assert fast.decode_drops == slow.decode_drops
    assert sum(fast.decode_drops.values()) >= 15  # the tricky ones did reach the per-message decoder
    assert fast.mqtt_devices.keys() == slow.mqtt_devices.keys()


def test_the_fast_path_takes_plain_messages(tmp_path, monkeypatch):
    gw, rows = gateway(tmp_path)
    each = []
    inner = gw._decode_each
    monkeypatch.setattr(gw, "_decode_each", lambda positions, *a: (each.extend(positions), inner(positions, *a))[1])
    run(gw, ["meters/m1/telemetry", "meters/m2/telemetry"], [TRICKY[0], TRICKY[2]], NOW_MS * 1_000_000)
    assert each == [1]  # only the float timestamp went the slow way
    assert rows.batches == [[("m1", "active_power", NOW_MS * 1_000_000, 1.5), ("m1", "voltage", NOW_MS * 1_000_000, 230.1),
                             ("m2", "active_power", NOW_MS * 1_000_000 + 500_000, 0.001),
                             ("m2", "voltage", NOW_MS * 1_000_000 + 500_000, 1.0)]]


def test_window_edges_are_decided_by_the_per_message_decoder(tmp_path):
    now_ns = NOW_MS * 1_000_000
    limit_ms = 600_000  # max_ahead_s default
    payloads = [b'{"ts": %d, "p": 1}' % (NOW_MS + limit_ms + d) for d in (-1, 0, 1)]
    topics = ["meters/a/telemetry", "meters/b/telemetry", "meters/c/telemetry"]
    fast, fast_rows = gateway(tmp_path / "fast")
    slow, slow_rows = gateway(tmp_path / "slow", fast=False)
    run(fast, topics, payloads, now_ns)
    run(slow, topics, payloads, now_ns)
    assert fast_rows.batches == slow_rows.batches and len(fast_rows.batches[0]) == 2
    assert fast.decode_drops == slow.decode_drops == {("c", "clock_skew"): 1}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(TRICKY)), min_size=1, max_size=30))
def test_any_mix_of_messages_decodes_alike(tmp_path_factory, messages):
    topics = [f"meters/m{d}/telemetry" for d, _ in messages]
    payloads = [p for _, p in messages]
    fast, fast_rows = gateway(tmp_path_factory.mktemp("fast"))
    slow, slow_rows = gateway(tmp_path_factory.mktemp("slow"), fast=False)
    run(fast, topics, payloads, NOW_MS * 1_000_000)
    run(slow, topics, payloads, NOW_MS * 1_000_000)
    assert fast_rows.batches == slow_rows.batches
    assert fast.decode_drops == slow.decode_drops


def test_a_device_twice_in_a_burst_starts_a_new_batch_in_arrival_order(tmp_path):
    gw, rows = gateway(tmp_path)
    topics = ["meters/a/telemetry", "meters/b/telemetry", "meters/a/telemetry", "meters/c/telemetry"]
    payloads = [b'{"ts": %d, "v": %d}' % (NOW_MS + k, 200 + k) for k in range(4)]
    acked = run(gw, topics, payloads, NOW_MS * 1_000_000)
    assert [[(d, v) for d, _, _, v in b] for b in rows.batches] == [[("a", 200.0), ("b", 201.0)],
                                                                     [("a", 202.0), ("c", 203.0)]]
    # one ack for the burst, on the batch with its last reading; the sinks call it after the commit
    assert acked == [] and len(rows.acks) == 1
    rows.acks[0]()
    assert acked == [1]


def test_a_burst_with_nothing_to_keep_is_acknowledged_at_once(tmp_path):
    gw, rows = gateway(tmp_path)
    acked = run(gw, ["meters/a/telemetry", "other/topic"], [b"{oops", b'{"p": 1}'], NOW_MS * 1_000_000)
    assert acked == [1] and rows.batches == []
    assert gw.decode_drops == {("a", "malformed_json"): 1}


def test_pending_batch_cuts_at_a_series_already_pending():
    out: list[tuple[list[int], int]] = []
    pending = PendingBatch(lambda b, acks: out.append((b.series.tolist(), len(acks))), max_points=100)
    arr = lambda *x: np.array(x)  # noqa: E731
    pending.add(arr(0, 0, 1), arr(1, 2, 3), arr(1, 1, 1), arr(1.0, 1.0, 1.0), ack=lambda: None)
    pending.add(arr(0, 0, 1, 1), arr(4, 5, 2, 6), arr(2, 2, 2, 2), arr(2.0, 2.0, 2.0, 2.0), ack=lambda: None)
    pending.flush()
    # message 1 of the second burst repeats series 2: it starts the next batch, with the burst's ack
    assert out == [([1, 2, 3, 4, 5], 1), ([2, 6], 1)]


def test_pending_batch_splits_a_message_that_repeats_a_series_itself():
    out: list[list[float]] = []
    pending = PendingBatch(lambda b, acks: out.append(b.value.tolist()), max_points=100)
    pending.add(np.array([0, 0, 0]), np.array([7, 8, 7]), np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))
    pending.flush()
    assert out == [[1.0, 2.0], [3.0]]


def test_pending_batch_goes_at_max_points():
    out: list[int] = []
    pending = PendingBatch(lambda b, acks: out.append(len(b)), max_points=3)
    pending.add(np.arange(4), np.arange(4), np.zeros(4, dtype=np.int64), np.zeros(4))
    assert out == [4]


def test_previous_occurrence():
    assert previous_occurrence(np.array([5, 3, 5, 5, 3])).tolist() == [-1, -1, 0, 2, 1]


def test_mappings_outside_the_fast_path_are_recognised():
    from drivers.mqtt.json_mapping import FieldSpec, JsonDecoder, JsonMapping

    def dec(**kw):
        base = dict(measurement="m", fields={"a": FieldSpec("p")}, device_from_topic=1, time_path="ts",
                    time_format="epoch_ms")
        base.update(kw)
        return JsonDecoder(JsonMapping(**base))

    assert json_columns.supports(dec())
    assert not json_columns.supports(dec(time_format="rfc3339"))
    assert not json_columns.supports(dec(fields={"a": FieldSpec("car.p")}))
    assert not json_columns.supports(dec(device_from_topic=None, device_path="id"))
    assert not json_columns.supports(dec(tag_paths={"room": "r"}))
    assert json_columns.supports(dec(time_path=None))


def test_the_startup_heap_is_kept_out_of_the_collector():
    import gc

    from gateway.runtime import GC_YOUNG_THRESHOLD, settle_garbage_collector

    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 10_000  # the imports' objects: never walked again
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_reference_cycles_are_collected_on_a_clock():
    import asyncio
    import gc
    import weakref

    from gateway.runtime import collect_garbage_loop

    class Node:
        pass

    before = gc.get_threshold()
    gc.set_threshold(10**9)  # no collection by allocation count at all
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: reference counting never frees it
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # reference counting alone never frees a cycle

        async def main():
            task = asyncio.create_task(collect_garbage_loop(0.01))
            await asyncio.sleep(0.1)
            task.cancel()

        asyncio.run(main())
        assert gone() is None
    finally:
        gc.set_threshold(*before)


MIXED = CONFIG + """
[[subscriptions]]
topic = "cameras/+"
decoder = "people_counter"
"""


def test_a_burst_mixing_subscriptions_keeps_arrival_order(tmp_path):
    def camera(device: str, enter: int) -> bytes:
        return json.dumps({"deviceID": device, "channelName": "gate", "eventType": "PeopleCounting",
                           "peopleCounting": {"statisticalMethods": "realTime", "enter": enter, "exit": 0}}).encode()

    messages = [("meters/a/telemetry", b'{"ts": %d, "v": 1}' % NOW_MS), ("cameras/c1", camera("cam-1", 10)),
                ("meters/a/telemetry", b'{"ts": %d, "v": 2}' % (NOW_MS + 1)), ("cameras/c1", camera("cam-1", 12)),
                ("meters/b/telemetry", b'{"ts": %d, "v": 3}' % NOW_MS), ("other", b"x")]
    burst_gw = Gateway(parse_config(MIXED.format(fmt="epoch_ms"), known_profiles=set()), data_dir=tmp_path / "a")
    single_gw = Gateway(parse_config(MIXED.format(fmt="epoch_ms"), known_profiles=set()), data_dir=tmp_path / "b")
    rows = []
    for gw in (burst_gw, single_gw):
        captured = Captured(gw)
        gw.accept = captured  # type: ignore[method-assign]
        gw.clock.now_ns = lambda: NOW_MS * 1_000_000  # type: ignore[method-assign]
        rows.append(captured)
    burst_gw._on_mqtt_burst([t for t, _ in messages], [p for _, p in messages], lambda: None)
    burst_gw._flush_mqtt()
    for t, p in messages:  # one at a time, outside the event loop: each goes down on its own
        single_gw._on_mqtt_message(t, p, lambda: None)
    flat = [[r for b in c.batches for r in b] for c in rows]
    assert flat[0] == flat[1] and len(flat[0]) > 5
    # the burst is cut where a series repeats (meter a's second message), and nowhere else
    assert len(rows[0].batches) == 2 and rows[0].batches[1][0][:2] == ("a", "voltage")
