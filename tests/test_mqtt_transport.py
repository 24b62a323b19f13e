"""The MQTT side of the wire against real mosquitto brokers: TLS with a client certificate and a
password, clear errors for bad credentials and untrusted certificates, a persistent session that
redelivers what was never acknowledged, and reconnection after the broker restarts.
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from drivers.mqtt.client import MqttSettings, MqttSubscriber
from gateway.devservices import MissingBinary, free_port, require_binary, start_mosquitto


def openssl(*args: str, cwd: Path) -> None:
    try:
        binary = require_binary("openssl")
    except MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (EC keys: fast)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=cgw-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    openssl("req", "-x509", *ec, "-keyout", "other-ca.key", "-out", "other-ca.crt", "-days", "2", "-subj", "/CN=other",
            cwd=d)
    return d


@pytest.fixture(scope="module")
def tls_broker(pki, tmp_path_factory):
    """mosquitto with TLS, a required client certificate and a password file."""
    work = tmp_path_factory.mktemp("mosquitto-tls")
    passwd = work / "passwd"
    try:
        tool = require_binary("mosquitto_passwd")
    except MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    subprocess.run([tool, "-b", "-c", str(passwd), "gateway", "s3cret pass"], check=True, capture_output=True)
    passwd.chmod(0o600)
    options = (f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
               f"require_certificate true\npassword_file {passwd}")
    try:
        svc = start_mosquitto(work, listener_options=options, allow_anonymous=False)
    except MissingBinary as e:
        pytest.fail(str(e), pytrace=False)
    yield svc
    svc.stop()


def publisher(port: int, pki: Path | None = None, password: str = "s3cret pass") -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.time_ns()}", protocol=paho.MQTTv311)
    if pki is not None:
        c.username_pw_set("gateway", password)
        c.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / "client.crt"), keyfile=str(pki / "client.key"))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(c: paho.Client, topic: str, payloads: list[bytes]) -> None:
    infos = [c.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(5)


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def settings(port: int, pki: Path | None = None, client_id: str | None = None, **kw) -> MqttSettings:
    base = dict(host="127.0.0.1", port=port, client_id=client_id or f"gw-{time.time_ns()}")
    if pki is not None:
        base.update(username="gateway", password="s3cret pass", ca_file=str(pki / "ca.crt"),
                    cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key"), tls=True)
    base.update(kw)
    return MqttSettings(**base)


def test_tls_with_client_certificate_and_password(tls_broker, pki):
    got: list = []

    async def main():
        sub = MqttSubscriber(settings(tls_broker.port, pki), [("meters/#", 1)],
                             lambda ts, ps, ack: (got.extend(zip(ts, ps)), ack()))
        sub.start()
        await wait_until(lambda: sub.connected, 10, "a TLS connection")
        await asyncio.sleep(0.3)  # SUBACK
        pub = publisher(tls_broker.port, pki)
        publish(pub, "meters/m1", [b'{"p": 1}', b'{"p": 2}'])
        await wait_until(lambda: len(got) == 2, 10, "two messages over TLS")
        pub.loop_stop()
        pub.disconnect()
        sub.stop()

    asyncio.run(main())
    assert got == [("meters/m1", b'{"p": 1}'), ("meters/m1", b'{"p": 2}')]


@pytest.mark.parametrize(("change", "error"), [
    ({"password": "wrong"}, "bad_credentials"),
    ({"ca_file": "other-ca.crt"}, "tls_error"),
])
def test_connection_problems_are_named_and_never_crash(tls_broker, pki, change, error, caplog):
    import dataclasses

    if "ca_file" in change:
        change = {"ca_file": str(pki / change["ca_file"])}
    s = dataclasses.replace(settings(tls_broker.port, pki), **change)

    async def main():
        sub = MqttSubscriber(s, [("meters/#", 1)], lambda ts, ps, ack: ack())
        with caplog.at_level(logging.ERROR, logger="drivers.mqtt"):
            sub.start()
            await wait_until(lambda: sub.connect_failures >= 1, 10, "the failure to be reported")
            await asyncio.sleep(0.2)
            sub.stop()
        return sub

    sub = asyncio.run(main())
    assert not sub.connected and sub.last_error == error
    events = [r for r in caplog.records if getattr(r, "event", "") == "mqtt_connect_failed"]
    assert events and events[0].error == error


def test_unacknowledged_messages_come_back_after_a_crash(mosquitto):
    """Manual ack: a message whose readings never reached the outbox is redelivered to the same session."""
    client_id = f"gw-crash-{time.time_ns()}"
    first: list = []
    second: list = []

    async def main():
        sub = MqttSubscriber(settings(mosquitto.port, client_id=client_id), [("crash/#", 1)],
                             lambda ts, ps, ack: first.extend(ps))  # never acknowledges: "crashes" before commit
        sub.start()
        await wait_until(lambda: sub.connected, 10, "connection")
        await asyncio.sleep(0.3)
        pub = publisher(mosquitto.port)
        publish(pub, "crash/m1", [b"a", b"b", b"c"])
        await wait_until(lambda: len(first) == 3, 10, "three messages")
        # the process dies without acknowledging: drop the socket, no DISCONNECT handshake
        sub.abort()
        await asyncio.sleep(0.5)
        publish(pub, "crash/m1", [b"d"])  # published while the gateway is down: queued by the broker
        again = MqttSubscriber(settings(mosquitto.port, client_id=client_id), [("crash/#", 1)],
                               lambda ts, ps, ack: (second.extend(ps), ack()))
        again.start()
        await wait_until(lambda: len(second) >= 4, 15, "redelivery of the unacknowledged messages")
        await asyncio.sleep(0.3)
        again.stop()
        pub.loop_stop()
        pub.disconnect()

    asyncio.run(main())
    assert first == [b"a", b"b", b"c"]
    assert sorted(set(second)) == [b"a", b"b", b"c", b"d"]  # nothing lost; duplicates are harmless (same timestamps)


def test_reconnects_by_itself_after_the_broker_restarts(tmp_path, caplog):
    port = free_port()
    broker = start_mosquitto(tmp_path / "m", port=port)
    got: list = []

    async def main():
        nonlocal broker
        sub = MqttSubscriber(settings(port, client_id=f"gw-restart-{time.time_ns()}"), [("r/#", 1)],
                             lambda ts, ps, ack: (got.extend(ps), ack()))
        with caplog.at_level(logging.INFO, logger="drivers.mqtt"):
            sub.start()
            await wait_until(lambda: sub.connected, 10, "connection")
            broker.stop()
            await wait_until(lambda: not sub.connected, 10, "the disconnect to be noticed")
            await asyncio.sleep(1.0)
            broker = start_mosquitto(tmp_path / "m", port=port)
            await wait_until(lambda: sub.connected, 40, "reconnection with backoff")
            await asyncio.sleep(0.3)
            pub = publisher(port)
            publish(pub, "r/m1", [b"after restart"])
            await wait_until(lambda: got == [b"after restart"], 10, "a message after the restart")
            pub.loop_stop()
            pub.disconnect()
            sub.stop()

    try:
        asyncio.run(main())
    finally:
        broker.stop()
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.count("mqtt_connected") == 2 and "mqtt_disconnected" in events
