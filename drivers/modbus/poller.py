"""Polls Modbus devices (TCP or RTU) through pymodbus' async clients, one task per device.

Scheduling, backoff, health and stale marks are shared with every polled protocol
(``drivers/polling.py``); this module knows how to get the registers of one device off the wire.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import BatchSink
from drivers.modbus.blocks import Block, ProfileDecoder, plan_blocks
from drivers.modbus.profile import DeviceProfile
from drivers.clock import Clock
from drivers.polling import HealthListener, PolledDevice, PollError

log = logging.getLogger("drivers.modbus")

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7)
EXCEPTION_NAMES = {
    1: "illegal_function",
    2: "illegal_data_address",
    3: "illegal_data_value",
    4: "server_device_failure",
    5: "acknowledge",
    6: "server_device_busy",
    8: "memory_parity_error",
    10: "gateway_path_unavailable",
    11: "gateway_target_failed_to_respond",
}


def rtu_frame_silence_s(baudrate: int, bits_per_char: int = 11) -> float:
    """The 3.5-character silence that ends an RTU frame (Modbus over serial line v1.02, 2.5.1.1).

    A character is 11 bits on the wire (start, 8 data, parity or a second stop bit, stop). Above
    19200 baud the specification fixes the silence at 1.75 ms instead of shrinking it further.
    """
    if baudrate > 19200:
        return 0.00175
    return 3.5 * bits_per_char / baudrate


@dataclass(frozen=True, slots=True)
class BusSettings:
    name: str
    kind: str  # "tcp" or "rtu"
    host: str = ""
    port: int = 502
    device: str = ""
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    timeout_s: float = 1.0
    max_parallel: int = 4


class HostLimits:
    """One semaphore per TCP host, shared by every bus (port) on it: a host takes so many requests at once."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._gates: dict[str, asyncio.Semaphore] = {}

    def gate(self, host: str) -> asyncio.Semaphore:
        if host not in self._gates:
            self._gates[host] = asyncio.Semaphore(self.per_host)
        return self._gates[host]


class _Link:
    """One pymodbus client (a TCP connection or the serial port) and what it heard since the last request."""

    def __init__(self) -> None:
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self.rx_bytes = 0
        self.last_io = 0.0  # monotonic time of the last byte sent or received

    def trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.rx_bytes += len(data)
        self.last_io = time.monotonic()
        return data


class ModbusBus:
    """A Modbus TCP endpoint or an RS-485 line, and the rules for talking on it.

    pymodbus' client serialises the requests of one connection, so a TCP bus keeps a small pool of
    connections (``max_parallel``) to poll its devices in parallel, and every bus on the same host
    also shares that host's limit. A serial line is half duplex: one request at a time, and the
    3.5-character silence between the end of one frame and the start of the next.
    """

    def __init__(self, settings: BusSettings, host_limits: HostLimits | None = None) -> None:
        self.settings = settings
        self.silence_s = 0.0
        self._host_gate: asyncio.Semaphore | None = None
        if settings.kind == "tcp":
            n = settings.max_parallel
            self._host_gate = (host_limits or HostLimits(n)).gate(settings.host)
        else:
            n = 1
            self.silence_s = rtu_frame_silence_s(settings.baudrate)
        self._links = [self._new_link() for _ in range(n)]
        self._idle: asyncio.Queue[_Link] = asyncio.Queue()
        for link in self._links:
            self._idle.put_nowait(link)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests this bus ever had on the wire at once

    def _new_link(self) -> _Link:
        s = self.settings
        link = _Link()
        if s.kind == "tcp":
            link.client = AsyncModbusTcpClient(
                s.host, port=s.port, timeout=s.timeout_s, retries=0, trace_packet=link.trace,
                reconnect_delay=0,  # reconnection is ours: on the next poll, with the device's backoff
            )
        else:
            link.client = AsyncModbusSerialClient(
                s.device, baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits, bytesize=8,
                timeout=s.timeout_s, retries=0, trace_packet=link.trace, reconnect_delay=0,
            )
        return link

    def where(self) -> str:
        s = self.settings
        return f"{s.host}:{s.port}" if s.kind == "tcp" else s.device

    async def read_block(self, unit_id: int, block: Block) -> np.ndarray:
        link = await self._idle.get()
        try:
            if self._host_gate is not None:
                async with self._host_gate:
                    rr = await self._request(link, unit_id, block)
            else:
                rr = await self._request(link, unit_id, block)
        finally:
            self._idle.put_nowait(link)
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise PollError("modbus_exception", f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) "
                            f"reading {block.function} {block.address}+{block.count}")
        if block.function in ("coil", "discrete"):
            return np.asarray(rr.bits[: block.count], dtype=np.uint16)
        regs = rr.registers
        if len(regs) != block.count:
            raise PollError("short_response", f"asked {block.count} registers, got {len(regs)}")
        return np.asarray(regs, dtype=np.uint16)

    async def _connect(self, link: _Link) -> None:
        if link.client.connected:
            return
        ok = await link.client.connect()
        if not ok:
            link.client.close()
            raise PollError("connection_refused" if self.settings.kind == "tcp" else "serial_unavailable",
                            f"cannot connect to {self.where()}")

    async def _request(self, link: _Link, unit_id: int, block: Block):
        await self._connect(link)
        if self.silence_s:
            wait = link.last_io + self.silence_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        link.rx_bytes = 0
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        c = link.client
        try:
            if block.function == "input":
                return await c.read_input_registers(block.address, count=block.count, device_id=unit_id)
            if block.function == "holding":
                return await c.read_holding_registers(block.address, count=block.count, device_id=unit_id)
            if block.function == "coil":
                return await c.read_coils(block.address, count=block.count, device_id=unit_id)
            return await c.read_discrete_inputs(block.address, count=block.count, device_id=unit_id)
        except ModbusIOException:
            if link.rx_bytes and self.settings.kind == "rtu":
                # pymodbus drops a frame whose CRC does not match and waits on: bytes came, no frame did
                raise PollError("crc_error", f"{link.rx_bytes} bytes from unit {unit_id} on {self.where()}, "
                                "no frame with a valid CRC") from None
            raise PollError("timeout", f"no answer from unit {unit_id} on {self.where()} within "
                            f"{self.settings.timeout_s:g} s") from None
        except ConnectionException as e:
            raise PollError("connection_lost", str(e)) from None
        except ModbusException as e:
            raise PollError("protocol_error", str(e)) from None
        except asyncio.TimeoutError:
            raise PollError("timeout", f"no answer within {self.settings.timeout_s:g} s") from None
        except OSError as e:  # the serial adapter was unplugged under us
            link.client.close()
            raise PollError("serial_unavailable" if self.settings.kind == "rtu" else "connection_lost",
                            f"{self.where()}: {e}") from None
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        for link in self._links:
            link.client.close()


class ModbusDevicePoller(PolledDevice):
    """One Modbus device: its profile's block reads, decoded into one batch per poll."""

    driver = "modbus"

    def __init__(
        self,
        device_id: str,
        bus: ModbusBus,
        unit_id: int,
        profile: DeviceProfile,
        series_ids: np.ndarray,
        poll_interval_s: float,
        emit: BatchSink,
        clock_ns: Callable[[], int] = time.time_ns,
        on_health: HealthListener | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(device_id, series_ids, poll_interval_s, emit, clock_ns, on_health, clock)
        self.bus = bus
        self.unit_id = unit_id
        self.profile = profile
        self.blocks = plan_blocks(profile.registers, profile.max_block_registers, profile.max_gap)
        self.decoder = ProfileDecoder(profile, self.blocks)
        self.requests = 0

    async def read_values(self) -> np.ndarray:
        words = []
        for block in self.blocks:
            self.requests += 1
            words.append(await self.bus.read_block(self.unit_id, block))
        return self.decoder.decode(np.concatenate(words) if len(words) > 1 else words[0])
