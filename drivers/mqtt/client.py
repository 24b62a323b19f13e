"""paho-mqtt 2.x driven by the asyncio event loop, with manual acknowledgement.

paho runs without its network thread: the event loop watches paho's socket (paho's external-loop
interface: ``loop_read``/``loop_write``/``loop_misc`` and the socket callbacks). A network thread
would take the GIL from the event loop for every message, and every acknowledgement from the event
loop would wake it through a socket pair; at tens of thousands of messages a second that costs more
than paho's own work. Only connecting (DNS, TCP, the TLS handshake, which paho does blocking) runs
in a short-lived thread.

QoS 1 messages are acknowledged (PUBACK) only when the runtime says their readings are committed to
the outbox, so a crash in between makes the broker redeliver them. aiomqtt does not expose manual
acknowledgement, which is why paho is used directly.

Messages are handed on in bursts: ``on_burst`` gets everything that arrived within
``burst_window_s`` as lists plus one ack for all of it (no Python object per message on the
receiving side).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import paho.mqtt.client as paho

from drivers.mqtt.paho_tuned import TunedClient

log = logging.getLogger("drivers.mqtt")

# topics, payloads, and one ack for the whole burst
BurstHandler = Callable[[list[str], list[bytes], Callable[[], None]], None]

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
# packets read per wake-up of the event loop at most, so a flood cannot starve the loop's other work
READ_MAX_PACKETS = 2000


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


def _in_thread(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> asyncio.Future:
    """Run a blocking call in a daemon thread: a connect stuck until its timeout never holds up the
    process' exit (the default executor would be joined at shutdown)."""
    fut = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(result)

    def run() -> None:
        try:
            result, exc = fn(), None
        except BaseException as e:  # handed to the awaiting task
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    threading.Thread(target=run, name="mqtt-connect", daemon=True).start()
    return fut


class MqttSubscriber:
    def __init__(self, settings: MqttSettings, topics: list[tuple[str, int]], on_burst: BurstHandler,
                 burst_window_s: float = 0.0) -> None:
        """``burst_window_s``: how long the first message of a burst waits for more before it is
        handed on; one call per window instead of one per message."""
        self.settings = settings
        self.topics = topics
        self.on_burst = on_burst
        self.burst_window_s = burst_window_s
        self.connected = False
        self.messages = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # clean_session=False + fixed client id: the broker keeps our subscriptions and queues QoS 1
        # messages while we are away (a persistent session)
        self.client = TunedClient(
            paho.CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=False,
            protocol=paho.MQTTv311, manual_ack=True,
        )
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            self.client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file,
                                keyfile=settings.key_file, cert_reqs=ssl.CERT_REQUIRED)
            self.client.tls_insecure_set(settings.tls_insecure)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_socket_open = self._socket_open
        self.client.on_socket_close = self._socket_close
        self.client.on_socket_register_write = self._register_write
        self.client.on_socket_unregister_write = self._unregister_write
        self.connect_failures = 0
        self.last_error = ""
        self._inbox: list[paho.MQTTMessage] = []
        self._drain_armed = False
        self._fd: int | None = None  # paho's socket as registered with the event loop
        self._writing = False
        # message ids are per connection: an ack for a message of an earlier connection could
        # acknowledge a different message the broker sent since, so acks carry their connection
        self._connection = 0
        self._task: asyncio.Task | None = None
        self._loop_thread: int | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._keep_connected(), name="mqtt")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish on the same connection (northbound alerts); paho queues it while disconnected."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self) -> None:
        """Disconnect cleanly: what is queued (acks, alerts) and the DISCONNECT go out now."""
        if self._task is not None:
            self._task.cancel()
        if self.client.socket() is not None:
            self.client.disconnect()
            self.client.loop_write()  # writes the DISCONNECT, after which paho closes the socket
        self._forget_socket()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT and stop, as a crash would (for tests)."""
        if self._task is not None:
            self._task.cancel()
        sock = self.client.socket()
        self._forget_socket()
        if sock is not None:
            sock.close()

    # connection ----------------------------------------------------------------------------
    async def _keep_connected(self) -> None:
        assert self._loop is not None
        delay = RECONNECT_MIN_S
        s = self.settings
        while True:
            if self.client.socket() is None:
                try:
                    await _in_thread(self._loop, partial(self.client.connect, s.host, s.port, s.keepalive_s))
                except Exception as e:  # noqa: BLE001 - refused, unreachable, TLS: named and retried
                    self._connect_failed(e)
                    await asyncio.sleep(delay)
                    delay = min(RECONNECT_MAX_S, delay * 2)
                    continue
            await asyncio.sleep(1.0)
            if self.connected:
                delay = RECONNECT_MIN_S
            elif self.client.socket() is None:  # refused at CONNACK or dropped: back off before trying again
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)
            try:
                self.client.loop_misc()  # keepalive pings, and noticing a broker that stopped answering
            except Exception as e:  # noqa: BLE001 - this task must outlive any surprise, or MQTT stops for good
                log.exception(str(e), extra={"event": "mqtt_loop_error", "broker": self._where()})

    def _connect_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ssl.SSLError):
            self._failed("tls_error", str(exc))
        else:
            self._failed("unreachable", str(exc) or type(exc).__name__)

    def _failed(self, error: str, detail: str) -> None:
        self.connect_failures += 1
        self.last_error = error
        if self.connect_failures == 1 or self.connect_failures % 10 == 0:  # retried with backoff; say it once a burst
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
        self._connection += 1
        log.info("", extra={"event": "mqtt_connected", "broker": self._where(),
                            "session_present": bool(flags.session_present)})
        if self.topics:
            client.subscribe([(t, q) for t, q in self.topics])

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        # what arrived on this connection goes on with this connection's acks (stale ones are skipped)
        if self._inbox:
            self._call_in_loop(self._drain)
        if was:
            log.warning(str(reason_code), extra={"event": "mqtt_disconnected", "broker": self._where(),
                                                 "error": "disconnected"})

    # paho's socket in the event loop -------------------------------------------------------
    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """paho calls the socket callbacks from the connecting thread too."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client, userdata, sock) -> None:
        self.client.reset_buffer()  # here, in the connecting thread: before the first byte is read
        self._call_in_loop(self._watch, sock.fileno())

    def _watch(self, fd: int) -> None:
        assert self._loop is not None
        self._forget_socket()
        self._fd = fd
        self._loop.add_reader(fd, self._readable)
        if self._writing:
            self._loop.add_writer(fd, self._writable)

    def _socket_close(self, client, userdata, sock) -> None:
        self._call_in_loop(self._forget_socket)

    def _forget_socket(self) -> None:
        if self._fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None

    def _register_write(self, client, userdata, sock) -> None:
        self._call_in_loop(self._want_write, True)

    def _unregister_write(self, client, userdata, sock) -> None:
        self._call_in_loop(self._want_write, False)

    def _want_write(self, on: bool) -> None:
        assert self._loop is not None
        self._writing = on
        if self._fd is None:
            return
        if on:
            self._loop.add_writer(self._fd, self._writable)
        else:
            self._loop.remove_writer(self._fd)

    def _writable(self) -> None:
        self.client.loop_write()  # everything queued (a burst of PUBACKs) in one go

    def _readable(self) -> None:
        client = self.client
        for _ in range(READ_MAX_PACKETS):
            before = self.messages
            if client.loop_read() or client.socket() is None:
                return  # the connection is gone: paho reported it (on_disconnect)
            if self.messages == before and not client.buffered():
                sock = client.socket()
                # TLS: bytes already decrypted inside the SSL object make no socket readable
                if not (hasattr(sock, "pending") and sock.pending()):
                    break
        else:
            # bytes already read make no socket readable either: go on after the loop's other work
            assert self._loop is not None
            self._loop.call_soon(self._readable)
        if self._inbox and not self._drain_armed:
            self._drain_armed = True
            assert self._loop is not None
            if self.burst_window_s > 0:
                self._loop.call_later(self.burst_window_s, self._drain)
            else:
                self._loop.call_soon(self._drain)

    def _on_message(self, client, userdata, msg: paho.MQTTMessage) -> None:
        self.messages += 1
        self._inbox.append(msg)

    def _drain(self) -> None:
        inbox, self._inbox = self._inbox, []
        self._drain_armed = False
        if not inbox:
            return
        acks = [(m.mid, m.qos) for m in inbox if m.qos]
        self.on_burst([m.topic for m in inbox], [m.payload for m in inbox],
                      partial(self._ack_all, self._connection, acks))

    def _ack_all(self, connection: int, acks: list[tuple[int, int]]) -> None:
        if connection != self._connection:
            return  # received on an earlier connection: the broker sends those messages again
        self.client.ack_many([mid for mid, qos in acks if qos == 1])
        for mid, qos in acks:
            if qos == 2:
                self.client.ack(mid, qos)

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"
