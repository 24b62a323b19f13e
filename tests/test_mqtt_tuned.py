"""paho driven by the event loop (drivers/mqtt/client.py) with buffered reads (drivers/mqtt/paho_tuned.py):
a flood of small QoS 1 messages arrives complete and in order, in bursts with one ack each, and what
was acknowledged is not sent again; an ack from an earlier connection is never sent on a later one."""
from __future__ import annotations

import asyncio
import socket
import time

import paho.mqtt.client as paho
import pytest

from drivers.mqtt.client import MqttSettings, MqttSubscriber
from paho.mqtt import _packet as paho_packet

from drivers.mqtt.paho_tuned import InboundMessage, TunedClient
from tests.test_mqtt_transport import wait_until


def test_the_overrides_still_meet_paho():
    # a paho release that renames these would silently bypass the tuning: say so here instead
    for name in ("_sock_recv", "_handle_on_message", "_handle_publish"):
        assert hasattr(paho.Client, name)
        assert getattr(TunedClient, name) is not getattr(paho.Client, name)
    assert hasattr(paho.Client, "_packet_queue")
    assert callable(paho_packet.decode_publish)
    assert set(paho.MQTTMessage.__slots__) >= {"_topic", "dup", "info", "mid", "payload", "properties", "qos",
                                                "retain", "state", "timestamp"}
    with pytest.raises(NotImplementedError):
        TunedClient(paho.CallbackAPIVersion.VERSION2).message_callback_add("a/#", lambda *a: None)


def raw_flood(port: int, n: int) -> None:
    """n QoS 1 PUBLISH packets written in a few large writes, so one read holds many packets and
    packets straddle the reads."""
    def packet(i: int) -> bytes:
        topic, payload = b"flood/d%d" % (i % 7), b'{"i":%d}' % i
        body = len(topic).to_bytes(2, "big") + topic + (i % 65535 + 1).to_bytes(2, "big") + payload
        return bytes([0x32, len(body)]) + body
    s = socket.create_connection(("127.0.0.1", port))
    cid = b"flood-pub"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    s.sendall(b"\x10" + bytes([len(body)]) + body)
    assert s.recv(4)[:1] == b"\x20"
    data = b"".join(packet(i) for i in range(n))
    for k in range(0, len(data), 100_003):
        s.sendall(data[k:k + 100_003])
    time.sleep(0.5)
    s.sendall(b"\xe0\x00")
    s.close()


def test_a_flood_arrives_complete_in_order_and_acknowledged(mosquitto):
    client_id = f"gw-flood-{time.time_ns()}"
    settings = MqttSettings("127.0.0.1", mosquitto.port, client_id=client_id)
    got: list[bytes] = []
    bursts: list[int] = []
    n = 5000

    def on_burst(topics, payloads, ack):
        got.extend(payloads)
        bursts.append(len(payloads))
        ack()

    async def main():
        sub = MqttSubscriber(settings, [("flood/#", 1)], on_burst=on_burst, burst_window_s=0.01)
        sub.start()
        await wait_until(lambda: sub.connected, 10, "connection")
        await asyncio.sleep(0.3)  # SUBACK
        await asyncio.to_thread(raw_flood, mosquitto.port, n)
        await wait_until(lambda: len(got) >= n, 20, "the flood")
        await asyncio.sleep(0.3)  # the PUBACKs go out
        sub.stop()
        again: list[bytes] = []
        sub2 = MqttSubscriber(settings, [("flood/#", 1)], on_burst=lambda t, p, a: (again.extend(p), a()))
        sub2.start()
        await wait_until(lambda: sub2.connected, 10, "reconnection")
        await asyncio.sleep(1.0)
        sub2.stop()
        return again

    again = asyncio.run(main())
    assert got == [b'{"i":%d}' % i for i in range(n)]
    assert max(bursts) > 1  # bursts, not one call per message
    assert again == []  # everything was acknowledged: nothing comes back


def test_acks_of_an_earlier_connection_are_not_sent():
    sub = MqttSubscriber(MqttSettings("127.0.0.1", 1), [], on_burst=lambda *a: None)
    sent: list[int] = []
    sub.client.ack_many = lambda mids: sent.extend(mids)  # type: ignore[method-assign]
    sub._connection = 1
    stale = lambda: sub._ack_all(1, [(7, 1)])  # noqa: E731
    sub._connection = 2  # reconnected: message id 7 may now name another message
    stale()
    sub._ack_all(2, [(8, 1)])
    assert sent == [8]


def test_ack_many_queues_the_pubacks_paho_would_send():
    one, many = TunedClient(paho.CallbackAPIVersion.VERSION2, manual_ack=True), \
        TunedClient(paho.CallbackAPIVersion.VERSION2, manual_ack=True)
    for c in (one, many):
        c._sock = object()  # queued, not written: there is no connection
        c.on_socket_register_write = lambda *a: None
    for mid in (1, 300, 65535):
        one.ack(mid, 1)
    many.ack_many([1, 300, 65535])
    assert b"".join(p["packet"] for p in one._out_packet) == b"".join(p["packet"] for p in many._out_packet)
    one._sock = many._sock = None  # nothing to close


def _publish_packet(topic: bytes, payload: bytes, qos: int, mid: int, retain: bool, dup: bool,
                    v5: bool) -> tuple[int, bytes]:
    command = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    return command, body + (b"\x00" if v5 else b"") + payload  # MQTT 5: an empty property block


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5])
@pytest.mark.parametrize("manual_ack", [True, False])
def test_a_received_publish_is_what_paho_itself_hands_on(qos, protocol, manual_ack):
    """Same packet into paho's Client and into TunedClient: the same message fields, the same
    packets queued in reply (PUBACK/PUBREC or none), the same result code."""
    seen: dict[str, list] = {"stock": [], "tuned": []}
    replies = {}
    codes = {}
    for name, cls in (("stock", paho.Client), ("tuned", TunedClient)):
        c = cls(paho.CallbackAPIVersion.VERSION2, protocol=protocol, manual_ack=manual_ack)
        c._sock = object()  # replies are queued, not written
        c.on_socket_register_write = lambda *a: None
        c.on_message = lambda client, userdata, m, name=name: seen[name].append(m)
        command, packet = _publish_packet(b"site/m\xc3\xa9ter/1", b'{"kwh": 12.5}', qos, 513, True, qos > 0,
                                          protocol == paho.MQTTv5)
        c._in_packet = {"command": command, "packet": packet}
        codes[name] = c._handle_publish()
        if qos == 2:  # delivered on PUBREL
            c._in_packet = {"command": 0x62, "packet": (513).to_bytes(2, "big") + (b"\x00" if protocol == paho.MQTTv5 else b"")}
            c._handle_pubrel()
        replies[name] = [p["packet"] for p in c._out_packet]
        c._sock = None
    assert codes["stock"] == codes["tuned"]
    assert replies["stock"] == replies["tuned"]
    (a,), (b,) = seen["stock"], seen["tuned"]
    for field in ("topic", "payload", "mid", "qos", "retain", "dup"):
        assert getattr(a, field) == getattr(b, field), field
    assert str(a.properties) == str(b.properties)  # Properties compare by identity
    assert b.topic == "site/m\u00e9ter/1" and b.payload == b'{"kwh": 12.5}' and b.retain
    assert b.mid == b.info.mid == (513 if qos else 0)
    assert isinstance(b, InboundMessage) == (qos < 2 and protocol != paho.MQTTv5)


def test_a_malformed_publish_fails_as_in_paho():
    for cls in (paho.Client, TunedClient):
        c = cls(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        c._in_packet = {"command": 0x32, "packet": b"\x00"}  # topic length cut short
        with pytest.raises(paho_packet.MalformedPacket):
            c._handle_publish()
