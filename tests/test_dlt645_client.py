"""The asyncio DL/T 645 client against the firmware-sim meter, over a socat pty pair and over TCP."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from gateway.devservices import stop_process
from tests.ptys import pty_pair

from drivers.dlt645 import identifiers as ids
from drivers.dlt645.client import Dlt645Client
from drivers.dlt645.errors import (
    AbnormalResponseError,
    AddressMismatchError,
    ChecksumError,
    Dlt645Error,
    ResponseTimeoutError,
    TransportError,
    UnknownIdentifierError,
)
from firmware_sim.dlt645_meter import MeterLine, SimMeter, serve_serial, start_tcp

pytestmark = pytest.mark.timeout(60)

ADDR = "123456789012"
VALUES = {
    0x00000000: 1300.25,
    0x00010000: 1234.56,
    0x00020000: 65.69,
    0x02010100: 229.7,
    0x02010200: 231.2,
    0x02010300: 0.0,
    0x02020100: 5.123,
    0x02020200: -0.456,
    0x02020300: 0.0,
    0x02030000: -1.2345,
    0x02030100: 1.1,
    0x02030200: -2.3345,
    0x02030300: 0.0,
    0x02040000: 0.25,
    0x02050000: 2.5,
    0x02060000: -0.987,
    0x02800002: 49.98,
}


def run(coro, timeout: float = 20.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@asynccontextmanager
async def serial_client(line: MeterLine, **kwargs):
    with pty_pair() as (gateway_end, device_end):
        ready = asyncio.Event()
        sim = asyncio.create_task(serve_serial(device_end, line, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 5)
            async with Dlt645Client.serial(gateway_end, **{"timeout": 3.0, **kwargs}) as client:
                yield client
        finally:
            sim.cancel()
            await asyncio.gather(sim, return_exceptions=True)


@asynccontextmanager
async def tcp_client(line: MeterLine, **kwargs):
    server = await start_tcp("127.0.0.1", 0, line)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Dlt645Client.tcp("127.0.0.1", port, **{"timeout": 3.0, **kwargs}) as client:
            yield client
    finally:
        server.close()
        await server.wait_closed()


CONNECT = {"serial": serial_client, "tcp": tcp_client}
transports = pytest.mark.parametrize("transport", ["serial", "tcp"])


@transports
def test_read_address_and_every_field(transport):
    meter = SimMeter(ADDR, VALUES)

    async def scenario():
        async with CONNECT[transport](MeterLine(meter)) as client:
            assert await client.read_address() == ADDR
            assert await client.read(ADDR, 0x00010000) == 1234.56
            assert await client.read(ADDR, "active_power_total") == -1.2345
            values = await client.read_many(ADDR, ids.DEFAULT_POLL)
            assert values == {di: VALUES[di] for di in ids.DEFAULT_POLL}
            fields = ids.to_fields(values)
            assert fields["active_power"] == pytest.approx(-1234.5)
            assert fields["current_l2"] == -0.456
            assert fields["energy_import"] == 1234.56
            assert client.stats.successes == client.stats.requests == 3 + len(ids.DEFAULT_POLL)
            assert client.stats.errors == {} and client.stats.last_success is not None
        # the meter saw one request per read, in order, one at a time
        assert [di for _, di in meter.requests[3:]] == list(ids.DEFAULT_POLL)

    run(scenario())


@transports
def test_unknown_identifier_gives_abnormal_reply_with_names(transport):
    meter = SimMeter(ADDR, {0x00010000: 1.0, 0x02010100: 230.0})

    async def scenario():
        async with CONNECT[transport](MeterLine(meter)) as client:
            with pytest.raises(AbnormalResponseError) as info:
                await client.read(ADDR, 0x02010200)  # in the table, but this meter has no phase B
            err = info.value
            assert err.names == ("no_data_requested",) and err.error_byte == 0x02 and err.control == 0xD1
            assert err.address == ADDR and err.di == 0x02010200
            with pytest.raises(AbnormalResponseError):
                await client.read_many(ADDR, [0x00010000, 0x02010200])
            got = await client.read_many(ADDR, [0x00010000, 0x02010200, 0x02010100], skip_abnormal=True)
            assert got == {0x00010000: 1.0, 0x02010100: 230.0}
            with pytest.raises(AbnormalResponseError) as info:
                await client.read_raw(ADDR, 0x04000101)  # a DI the meter does not know at all
            assert info.value.names == ("no_data_requested",)
            with pytest.raises(UnknownIdentifierError):
                await client.read(ADDR, 0x04000101)  # not in our table: refused before sending
            assert client.stats.errors["abnormal"] == 4

    run(scenario())


@transports
def test_faults_map_to_specific_errors_and_the_line_recovers(transport):
    meter = SimMeter(ADDR, VALUES)
    faults = meter.faults

    async def scenario():
        # Generous default timeout: only the requests meant to fail are given short ones.
        async with CONNECT[transport](MeterLine(meter)) as client:
            loop = asyncio.get_running_loop()

            async def expect(exc_type, timeout, **fault):
                for k, v in fault.items():
                    setattr(faults, k, v)
                t0 = loop.time()
                with pytest.raises(exc_type):
                    await client.read(ADDR, 0x00010000, timeout=timeout)
                assert await client.read(ADDR, 0x02010100) == 229.7  # next request is fine
                return loop.time() - t0

            # A corrupted reply ends the wait after checksum_grace, not after the 3 s timeout.
            assert await expect(ChecksumError, None, bad_checksum=1) < 2.0
            assert await expect(ChecksumError, None, garble=1) < 2.0
            await expect(ResponseTimeoutError, 0.2, silent=1)
            await expect(ResponseTimeoutError, 0.2, truncate=1)
            await expect(AddressMismatchError, 0.5, wrong_address=1)
            faults.noise_before = 2  # noise with a fake start byte before the reply: resynchronised
            assert await client.read(ADDR, 0x00010000) == 1234.56
            assert await client.read_address() == ADDR
            assert faults.log == ["bad_checksum", "garble", "silent", "truncate", "wrong_address",
                                  "noise_before", "noise_before"]
            assert client.stats.errors == {"checksum": 2, "timeout": 2, "address_mismatch": 1}
            assert client.reader.checksum_errors >= 2 and client.reader.discarded_bytes > 0


def test_timeout_error_is_a_timeout_and_names_the_meter():
    meter = SimMeter(ADDR, VALUES)

    async def scenario():
        async with tcp_client(MeterLine(meter), timeout=0.1) as client:
            meter.faults.silent = 1
            with pytest.raises(TimeoutError, match=f"no reply from {ADDR}"):
                await client.read(ADDR, 0x00010000)
            with pytest.raises(ResponseTimeoutError):
                await client.read("000000000099", 0x00010000)  # nobody has that address

    run(scenario())


@transports
def test_late_reply_to_a_timed_out_request_is_not_taken_for_the_next(transport):
    meter = SimMeter(ADDR, VALUES)

    async def scenario():
        async with CONNECT[transport](MeterLine(meter)) as client:
            meter.faults.delay = 0.3
            with pytest.raises(ResponseTimeoutError):
                await client.read(ADDR, 0x00010000, timeout=0.1)
            meter.faults.delay = 0.0
            # The energy reply arrives while we wait for the voltage: skipped by its DI echo.
            assert await client.read(ADDR, 0x02010100) == 229.7
            assert client.stats.stray_frames >= 1

    run(scenario())


@transports
def test_several_meters_on_one_line(transport):
    a = SimMeter("000000000001", {0x00010000: 1.11, 0x02010100: 220.1})
    b = SimMeter("000000000002", {0x00010000: 2.22})

    async def scenario():
        async with CONNECT[transport](MeterLine([a, b])) as client:
            assert await client.read("000000000001", 0x00010000) == 1.11
            assert await client.read("000000000002", 0x00010000) == 2.22
            with pytest.raises(AbnormalResponseError):
                await client.read("000000000002", 0x02010100)
            # The wildcard makes both answer at once: the collision never parses as a reply.
            with pytest.raises((ChecksumError, ResponseTimeoutError)):
                await client.read_address(timeout=0.5)
            assert await client.read("000000000001", 0x02010100) == 220.1  # and the bus recovers

    run(scenario())


def test_adapter_echo_is_ignored():
    meter = SimMeter(ADDR, VALUES)

    async def scenario():
        async with serial_client(MeterLine(meter, echo=True)) as client:
            assert await client.read(ADDR, 0x02800002) == 49.98
            assert await client.read_address() == ADDR
            assert client.stats.stray_frames == 2  # our two requests, heard back

    run(scenario())


def test_one_request_at_a_time_per_line():
    meter = SimMeter(ADDR, VALUES)
    meter.faults.delay = 0.02

    async def scenario():
        async with tcp_client(MeterLine(meter)) as client:
            dis = list(ids.DEFAULT_POLL)
            results = await asyncio.gather(*(client.read(ADDR, di) for di in dis))
            assert results == [VALUES[di] for di in dis]
            assert client.stats.stray_frames == 0

    run(scenario())


def test_inter_frame_delay_is_honoured():
    meter = SimMeter(ADDR, VALUES)

    async def scenario():
        async with tcp_client(MeterLine(meter), inter_frame_delay=0.05) as client:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for _ in range(4):
                await client.read(ADDR, 0x00010000)
            assert loop.time() - t0 >= 0.15

    run(scenario())


def test_tcp_reconnects_after_the_converter_drops_the_connection():
    line = MeterLine(SimMeter(ADDR, VALUES))
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        try:
            data = await reader.read(4096)
            if connections == 1:
                return  # drop the first connection without answering
            while data:
                for _, reply in line.feed(data):
                    writer.write(reply)
                await writer.drain()
                data = await reader.read(4096)
        finally:
            writer.close()

    async def scenario():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with Dlt645Client.tcp("127.0.0.1", port, timeout=3.0) as client:
                with pytest.raises(TransportError):
                    await client.read(ADDR, 0x00010000)
                assert await client.read(ADDR, 0x00010000) == 1234.56
                assert client.stats.errors == {"transport": 1}
                assert connections == 2
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_transport_errors_are_specific():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = Dlt645Client.tcp("127.0.0.1", port, timeout=0.2, connect_timeout=1.0)
        with pytest.raises(TransportError, match="cannot connect"):
            await client.read(ADDR, 0x00010000)
        assert client.stats.errors == {"transport": 1}
        serial = Dlt645Client.serial("/nonexistent/ttyUSB9")
        with pytest.raises(TransportError, match="cannot open"):
            await serial.read_address()

    run(scenario())


def test_every_error_is_a_dlt645_error_with_a_kind():
    for cls in (AbnormalResponseError, AddressMismatchError, ChecksumError, ResponseTimeoutError,
                TransportError, UnknownIdentifierError):
        assert issubclass(cls, Dlt645Error) and cls.kind != Dlt645Error.kind


def test_firmware_sim_imports_nothing_from_the_gateway_side():
    import ast

    import firmware_sim.dlt645_meter as sim

    tree = ast.parse(open(sim.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"gateway", "pipelines", "drivers"}, imported


def test_simulator_cli_serves_tcp_as_a_subprocess():
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim.dlt645_meter", "--tcp", f"127.0.0.1:{port}", "--address", ADDR],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:

        async def scenario():
            client = Dlt645Client.tcp("127.0.0.1", port, timeout=3.0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:  # wait for the listener
                try:
                    await client.connect()
                    break
                except TransportError:
                    assert proc.poll() is None, proc.stderr.read().decode()
                    assert loop.time() < deadline, "simulator did not listen within 10 s"
                    await asyncio.sleep(0.05)
            try:
                assert await client.read_address() == ADDR
                values = ids.to_fields(await client.read_many(ADDR, ids.DEFAULT_POLL, skip_abnormal=True))
            finally:
                await client.close()
            assert 12345.0 < values["energy_import"] < 12346.0
            assert 225.0 < values["voltage_l1"] < 235.0
            assert 49.9 < values["frequency"] < 50.1
            assert 1000.0 < values["active_power"] < 4000.0

        run(scenario())
    finally:
        stop_process(proc, 5)


def test_missing_socat_fails_with_the_install_command(monkeypatch):
    import tests.ptys as ptys

    import firmware_sim.serial_link as serial_link

    monkeypatch.setattr(serial_link.shutil, "which", lambda name: None)
    with pytest.raises(ptys.SocatError, match="apt-get install socat"):
        with ptys.pty_pair():
            pass
