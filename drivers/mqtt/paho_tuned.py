"""paho's Client with four per-message costs taken out, its protocol handling untouched.

paho reads every packet with three ``recv`` calls (command byte, length bytes, the rest) and, for
every message, walks its topic matcher for per-topic callbacks even when there are none. At tens of
thousands of messages a second those two were about a quarter of paho's CPU (measured: 17.8 -> 13.1 us
per message, bare client under asyncio, 200,000 QoS 1 messages). This subclass

* reads up to 64 KiB per ``recv`` and hands paho the bytes it asks for from that buffer (what a
  buffered reader does; ``buffered()`` tells the event loop that bytes are waiting without the
  socket being readable), and
* calls ``on_message`` directly; per-topic callbacks (``message_callback_add``) are refused,
* hands incoming QoS 0 and 1 messages of MQTT 3.1/3.1.1 on as ``InboundMessage``: paho's
  ``MQTTMessage`` builds an ``MQTTMessageInfo`` for every message, with a ``threading.Condition``
  and its lock, which only outgoing messages use (measured: 15 % of the gateway's CPU at 40,000
  messages/s); the packet is still decoded by paho's ``decode_publish``; QoS 2 and MQTT 5 go
  through paho's own ``_handle_publish``, and
* acknowledges a burst of QoS 1 messages as one queued write (``ack_many``): paho queues every
  PUBACK as a packet of its own and writes each with its own ``send``. The 4-byte PUBACKs are the
  ones paho's ``_send_command_with_mid`` packs, queued through paho's own ``_packet_queue``.

The overrides replace private methods of paho 2.x (``_sock_recv``, ``_handle_on_message``,
``_handle_publish``, using ``paho.mqtt._packet.decode_publish``); if a paho release renames them, the
overrides are simply not called and paho works as shipped, slower.
``ack_many`` calls ``_packet_queue`` and falls back to ``ack`` per message when it is missing.
tests/test_mqtt_tuned.py checks that they all still meet paho.
"""
from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import _packet

READ_SIZE = 65536
_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id


class InboundMessage(paho.MQTTMessage):
    """A received message: paho's MQTTMessage without the per-message MQTTMessageInfo (built on
    demand, for code that asks for it)."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool,
                 timestamp: float) -> None:
        self.timestamp = timestamp
        self.state = paho.mqtt_ms_invalid
        self.dup = dup
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = None

    @property  # type: ignore[override]
    def info(self) -> paho.MQTTMessageInfo:
        return paho.MQTTMessageInfo(self.mid)


class TunedClient(paho.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0

    def reset_buffer(self) -> None:
        """A new connection: bytes left from the previous one must never be parsed as its data."""
        self._rbuf = b""
        self._rpos = 0

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not consumed yet."""
        return len(self._rbuf) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        if pos >= len(self._rbuf):
            data = super()._sock_recv(READ_SIZE)  # raises BlockingIOError etc. as paho expects
            if not data:
                return data  # the peer closed the connection
            self._rbuf, self._rpos, pos = data, 0, 0
        self._rpos = pos + bufsize
        return self._rbuf[pos:pos + bufsize]

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def _handle_publish(self) -> paho.MQTTErrorCode:
        command = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if qos == 2 or self._protocol == paho.MQTTv5:
            return super()._handle_publish()
        p = _packet.decode_publish(command, self._in_packet["packet"], self._protocol)
        message = InboundMessage(p.mid, p.topic, p.payload, qos, p.retain, p.dup, paho.time_func())
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(p.mid)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK for many QoS 1 messages (manual ack), written together."""
        if not mids:
            return
        queue = getattr(self, "_packet_queue", None)
        if queue is None:
            for mid in mids:
                self.ack(mid, 1)
            return
        pack = _PUBACK.pack
        queue(paho.PUBACK, b"".join([pack(paho.PUBACK, 2, mid) for mid in mids]), 0, 0)

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("TunedClient calls on_message for every message; filter there")
