"""Modbus RTU over a socat pty pair: pymodbus' serial server playing firmware-sim meters on one end,
the gateway's poller on the other. Also the line discipline: one request at a time, the 3.5-character
silence, CRC errors reported as such, and a serial adapter that vanishes and comes back.
"""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from drivers.modbus.poller import BusSettings, ModbusBus, ModbusDevicePoller, rtu_frame_silence_s
from drivers.modbus.profile import load_profiles
from drivers.polling import ERROR_KINDS
from firmware_sim.loads import LoadModel
from firmware_sim.modbus_meter import MeterBank, SimMeter, rtu_server
from firmware_sim.register_map import load_register_map
from pipelines.batch import QUALITY_STALE
from tests.ptys import pty_pair

PROFILES = load_profiles()


def make_meter(device: str, unit: int, model: str, frozen_ns: int | None = None) -> SimMeter:
    clock = (lambda: frozen_ns) if frozen_ns is not None else time.time_ns
    return SimMeter(device, unit, load_register_map(model), LoadModel("household", 1, device), start_kwh=100.0,
                    clock_ns=clock)


def poller(bus: ModbusBus, device: str, unit: int, model: str, out: list):
    profile = PROFILES[model]
    ids = np.arange(len(profile.registers), dtype=np.int32)
    return ModbusDevicePoller(device, bus, unit, profile, ids, 1.0, lambda b, ack=None: out.append(b))


async def _serve(server):
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.3)  # the serial server opens the port in serve_forever
    return task


async def _stop(server, task):
    await server.shutdown()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_silence_follows_the_specification():
    assert rtu_frame_silence_s(9600) == pytest.approx(3.5 * 11 / 9600)  # 4.01 ms
    assert rtu_frame_silence_s(2400) == pytest.approx(0.016042, rel=1e-3)
    assert rtu_frame_silence_s(19200) == pytest.approx(3.5 * 11 / 19200)
    assert rtu_frame_silence_s(38400) == 0.00175  # fixed above 19200 baud
    assert rtu_frame_silence_s(115200) == 0.00175


def test_rtu_reads_equal_what_the_meters_served():
    served: list[dict] = []
    meters = [make_meter("rtu-1", 1, "sdm630"), make_meter("rtu-2", 2, "sdm120"), make_meter("rtu-3", 3, "dtsu666")]
    bank = MeterBank(meters, served_log=served.append)

    async def main():
        with pty_pair() as (gateway_end, device_end):
            server = rtu_server(bank, device_end, baudrate=9600)
            task = await _serve(server)
            bus = ModbusBus(BusSettings("line1", "rtu", device=gateway_end, baudrate=9600, timeout_s=1.0))
            out: list = []
            pollers = [poller(bus, m.device, m.unit_id, m.register_map.model, out) for m in meters]
            try:
                for _ in range(2):
                    # all three at once: the bus must put them on the line one after the other
                    ok = await asyncio.gather(*(p.poll_and_emit() for p in pollers))
                    assert ok == [True, True, True], [p.health.last_error_detail for p in pollers]
            finally:
                bus.close()
                await _stop(server, task)
            return bus, pollers, out

    bus, pollers, out = asyncio.run(main())
    assert bus.max_in_flight == 1  # half duplex: never two requests on the line
    assert len(out) == 6 and len(served) >= 6
    # every decoded value equals, bit for bit, what the meter put on the wire for that poll; a poll
    # of a profile may take several block reads, so a device's consecutive records are merged
    fields_of = {p.device_id: [r.field for r in p.profile.registers] for p in pollers}
    remaining: dict[str, list[dict]] = {}
    for rec in served:
        remaining.setdefault(rec["device"], []).append(rec["values"])
    for b in out:
        device = next(d for d, f in fields_of.items() if len(f) == len(b) and remaining.get(d))
        want: dict = {}
        while remaining[device] and not (set(remaining[device][0]) & set(want)):
            want.update(remaining[device].pop(0))
        assert [want[f] for f in fields_of[device]] == b.value.tolist(), device
    assert not any(remaining.values())


def test_line_waits_three_and_a_half_characters_between_frames():
    """A raw responder on the device end timestamps each request; gaps must respect 1200 baud's silence."""
    from pymodbus.framer.rtu import FramerRTU

    arrivals: list[float] = []

    async def responder(path: str, stop: asyncio.Event):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        loop = asyncio.get_running_loop()
        buf = bytearray()
        try:
            while not stop.is_set():
                try:
                    chunk = os.read(fd, 256)
                except BlockingIOError:
                    await asyncio.sleep(0.0005)
                    continue
                buf += chunk
                while len(buf) >= 8:  # read-holding request: unit, 3, addr(2), count(2), crc(2)
                    frame, buf[:] = bytes(buf[:8]), buf[8:]
                    arrivals.append(loop.time())
                    pdu = bytes([frame[0], 3, 2, 0x00, 0x2A])
                    os.write(fd, pdu + FramerRTU.compute_CRC(pdu).to_bytes(2, "big"))
        finally:
            os.close(fd)

    profile_regs = [{"field": "frequency", "address": 0, "type": "uint16", "function": "holding"}]
    from drivers.modbus.profile import parse_profile

    profile = parse_profile({"model": "one-reg", "measurement": "energy_meter", "registers": profile_regs}, "test")

    async def main():
        with pty_pair() as (gateway_end, device_end):
            stop = asyncio.Event()
            task = asyncio.create_task(responder(device_end, stop))
            bus = ModbusBus(BusSettings("slow", "rtu", device=gateway_end, baudrate=1200, timeout_s=1.0))
            out: list = []
            p = ModbusDevicePoller("d", bus, 1, profile, np.array([0], np.int32), 1.0,
                                   lambda b, ack=None: out.append(b))
            for _ in range(6):
                assert await p.poll_and_emit(), p.health.last_error_detail
            stop.set()
            await task
            bus.close()
            return out

    out = asyncio.run(main())
    assert [b.value[0] for b in out] == [42.0] * 6
    gaps = np.diff(arrivals)
    silence = rtu_frame_silence_s(1200)  # 32 ms
    assert silence == pytest.approx(0.0321, rel=1e-2)
    assert gaps.min() >= silence * 0.95, gaps  # measured from the reply's last byte; pty adds no delay


def test_crc_error_is_named_and_never_a_value():
    """A device whose replies carry a wrong CRC: health says crc_error, the series get a stale mark."""
    from pymodbus.framer.rtu import FramerRTU
    from drivers.modbus.profile import parse_profile

    async def responder(path: str, stop: asyncio.Event):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        buf = bytearray()
        try:
            while not stop.is_set():
                try:
                    buf += os.read(fd, 256)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                while len(buf) >= 8:
                    frame, buf[:] = bytes(buf[:8]), buf[8:]
                    pdu = bytes([frame[0], 3, 2, 0x00, 0x2A])
                    crc = FramerRTU.compute_CRC(pdu) ^ 0x0101  # corrupted on the line
                    os.write(fd, pdu + crc.to_bytes(2, "big"))
        finally:
            os.close(fd)

    profile = parse_profile({"model": "one-reg", "measurement": "energy_meter", "registers": [
        {"field": "frequency", "address": 0, "type": "uint16", "function": "holding"}]}, "test")
    health_reports: list = []

    async def main():
        with pty_pair() as (gateway_end, device_end):
            stop = asyncio.Event()
            task = asyncio.create_task(responder(device_end, stop))
            bus = ModbusBus(BusSettings("noisy", "rtu", device=gateway_end, baudrate=9600, timeout_s=0.3))
            out: list = []
            p = ModbusDevicePoller("noisy-meter", bus, 1, profile, np.array([5], np.int32), 1.0,
                                   lambda b, ack=None: out.append(b),
                                   on_health=lambda h: health_reports.append((h.online, h.last_error)))
            ok = await p.poll_and_emit()
            stop.set()
            await task
            bus.close()
            return ok, p, out

    ok, p, out = asyncio.run(main())
    assert not ok
    assert p.health.last_error == "crc_error" and p.health.errors["crc_error"] == 1
    assert "no frame with a valid CRC" in p.health.last_error_detail
    assert health_reports == [(False, "crc_error")]
    assert len(out) == 1 and out[0].series.tolist() == [5]
    assert np.isnan(out[0].value[0]) and out[0].quality[0] == QUALITY_STALE
    assert ERROR_KINDS["crc_error"] == 5


def test_serial_adapter_unplugged_and_back(tmp_path):
    """socat (the 'adapter') goes away: serial_unavailable, stale marks; it comes back: readings resume."""
    meter = make_meter("usb-1", 1, "sdm120")
    bank = MeterBank([meter])

    async def main():
        out: list = []
        with pty_pair(names=("gw", "dev"), directory=str(tmp_path)) as (gateway_end, device_end):
            server = rtu_server(bank, device_end)
            task = await _serve(server)
            bus = ModbusBus(BusSettings("usb", "rtu", device=gateway_end, timeout_s=0.5))
            p = poller(bus, "usb-1", 1, "sdm120", out)
            assert await p.poll_and_emit()
            await _stop(server, task)
        assert not os.path.exists(gateway_end)  # the adapter is gone
        assert not await p.poll_and_emit()
        assert not await p.poll_and_emit()
        assert p.health.last_error == "serial_unavailable", p.health.last_error_detail
        # plugged in again, under the same name: the next poll finds it by itself
        with pty_pair(names=("gw", "dev"), directory=str(tmp_path)) as (gateway_end2, device_end2):
            assert gateway_end2 == gateway_end
            server = rtu_server(bank, device_end2)
            task = await _serve(server)
            try:
                assert await p.poll_and_emit(), p.health.last_error_detail
            finally:
                bus.close()
                await _stop(server, task)
        return p, out

    p, out = asyncio.run(main())
    assert p.health.online
    stale = [b for b in out if (b.quality & QUALITY_STALE).all()]
    good = [b for b in out if not (b.quality & QUALITY_STALE).any()]
    assert len(stale) == 2 and len(good) == 2
    assert all(np.isnan(b.value).all() for b in stale)
