"""paho-mqtt 2.x under asyncio, with manual acknowledgement.

paho's network loop runs in its own thread; messages cross into the event loop with
call_soon_threadsafe. QoS 1 messages are acknowledged (PUBACK) only when the runtime says their
readings are committed to the outbox, so a crash in between makes the broker redeliver them.
aiomqtt does not expose manual acknowledgement, which is why paho is used directly.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as paho

log = logging.getLogger("drivers.mqtt")

MessageHandler = Callable[[str, bytes, Callable[[], None]], None]


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int = 1883
    client_id: str = "community-gateway"
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls: bool = False
    tls_insecure: bool = False


class MqttSubscriber:
    def __init__(self, settings: MqttSettings, topics: list[tuple[str, int]], on_message: MessageHandler) -> None:
        self.settings = settings
        self.topics = topics
        self.on_message = on_message
        self.connected = False
        self.messages = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # clean_session=False + fixed client id: the broker keeps our subscriptions and queues QoS 1
        # messages while we are away (a persistent session)
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=False,
            protocol=paho.MQTTv311, manual_ack=True,
        )
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            self.client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file,
                                keyfile=settings.key_file, cert_reqs=ssl.CERT_REQUIRED)
            self.client.tls_insecure_set(settings.tls_insecure)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.connect_failures = 0
        self.last_error = ""
        self._inbox: list[tuple[str, bytes, Callable[[], None]]] = []
        self._inbox_lock = threading.Lock()
        self._wake_pending = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish on the same connection (northbound alerts); paho queues it while disconnected."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # paho's thread -----------------------------------------------------------------------
    def _failed(self, error: str, detail: str) -> None:
        self.connect_failures += 1
        self.last_error = error
        if self.connect_failures == 1 or self.connect_failures % 10 == 0:  # paho retries with backoff; say it once a burst
            log.error(detail, extra={"event": "mqtt_connect_failed", "broker": self._where(), "error": error,
                                     "attempts": self.connect_failures})

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            # MQTT 3.1.1 CONNACK 4/5 arrive as "Bad user name or password" / "Not authorized"
            auth = reason_code.value in (134, 135, 4, 5)
            self._failed("bad_credentials" if auth else "connack_refused", str(reason_code))
            return
        self.connect_failures = 0
        self.connected = True
        log.info("", extra={"event": "mqtt_connected", "broker": self._where(),
                            "session_present": bool(flags.session_present)})
        if self.topics:
            client.subscribe([(t, q) for t, q in self.topics])

    def _on_connect_fail(self, client, userdata) -> None:
        # paho swallows the exception; the socket error (refused, TLS handshake) is what users need
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError):
            self._failed("tls_error", str(exc))
        else:
            self._failed("unreachable", str(exc) if exc else "connection failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        if was:
            log.warning(str(reason_code), extra={"event": "mqtt_disconnected", "broker": self._where(),
                                                 "error": "disconnected"})

    def _on_message(self, client, userdata, msg: paho.MQTTMessage) -> None:
        mid, qos, topic, payload = msg.mid, msg.qos, msg.topic, msg.payload

        def ack() -> None:
            if qos > 0:
                client.ack(mid, qos)

        assert self._loop is not None
        # one wake-up of the event loop per burst, not per message: the inbox is drained in one go
        with self._inbox_lock:
            self._inbox.append((topic, payload, ack))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._loop.call_soon_threadsafe(self._drain)

    # event loop ----------------------------------------------------------------------------
    def _drain(self) -> None:
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
            self._wake_pending = False
        for topic, payload, ack in inbox:
            self.messages += 1
            self.on_message(topic, payload, ack)

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"
