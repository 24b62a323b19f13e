"""Polls Modbus devices (TCP or RTU) through pymodbus' async clients, one task per device.

A failed poll is never published as a value: the device's health records why (timeout, connection
refused, Modbus exception with its name, garbled response) and the device backs off exponentially,
capped, without delaying the other devices.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import BatchSink, DeviceHealth
from drivers.modbus.blocks import Block, ProfileDecoder, plan_blocks
from drivers.modbus.profile import DeviceProfile
from pipelines.batch import QUALITY_GOOD, ReadingBatch

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

BACKOFF_MAX_S = 60.0


class PollError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


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


class ModbusBus:
    """One pymodbus client per TCP host or serial line; limits requests in flight on it."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        if settings.kind == "tcp":
            self.client = AsyncModbusTcpClient(
                settings.host, port=settings.port, timeout=settings.timeout_s, retries=0,
                reconnect_delay=0,  # reconnection is ours: on the next poll, with the device's backoff
            )
            self._gate = asyncio.Semaphore(settings.max_parallel)
        else:
            self.client = AsyncModbusSerialClient(
                settings.device, baudrate=settings.baudrate, parity=settings.parity,
                stopbits=settings.stopbits, bytesize=8, timeout=settings.timeout_s, retries=0,
                reconnect_delay=0,
            )
            # RS-485 is half duplex: exactly one request on the line at a time
            self._gate = asyncio.Semaphore(1)
        self._connect_lock = asyncio.Lock()

    async def _ensure_connected(self) -> None:
        if self.client.connected:
            return
        async with self._connect_lock:
            if self.client.connected:
                return
            ok = await self.client.connect()
            if not ok:
                where = f"{self.settings.host}:{self.settings.port}" if self.settings.kind == "tcp" else self.settings.device
                raise PollError("connection_refused" if self.settings.kind == "tcp" else "serial_unavailable",
                                f"cannot connect to {where}")

    async def read_block(self, unit_id: int, block: Block) -> np.ndarray:
        async with self._gate:
            await self._ensure_connected()
            try:
                if block.function == "input":
                    rr = await self.client.read_input_registers(block.address, count=block.count, device_id=unit_id)
                elif block.function == "holding":
                    rr = await self.client.read_holding_registers(block.address, count=block.count, device_id=unit_id)
                elif block.function == "coil":
                    rr = await self.client.read_coils(block.address, count=block.count, device_id=unit_id)
                else:
                    rr = await self.client.read_discrete_inputs(block.address, count=block.count, device_id=unit_id)
            except ModbusIOException as e:
                raise PollError("timeout", str(e)) from None
            except ConnectionException as e:
                raise PollError("connection_lost", str(e)) from None
            except ModbusException as e:
                raise PollError("protocol_error", str(e)) from None
            except asyncio.TimeoutError:
                raise PollError("timeout", f"no answer within {self.settings.timeout_s}s") from None
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise PollError("modbus_exception", f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) "
                            f"reading {block.function} {block.address}+{block.count}")
        if block.function in ("coil", "discrete"):
            bits = rr.bits[: block.count]
            return np.asarray(bits, dtype=np.uint16)
        regs = rr.registers
        if len(regs) != block.count:
            raise PollError("short_response", f"asked {block.count} registers, got {len(regs)}")
        return np.asarray(regs, dtype=np.uint16)

    def close(self) -> None:
        self.client.close()


class ModbusDevicePoller:
    """Polls one device on a schedule aligned to its interval and emits one batch per poll."""

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
    ) -> None:
        self.device_id = device_id
        self.bus = bus
        self.unit_id = unit_id
        self.profile = profile
        self.blocks = plan_blocks(profile.registers, profile.max_block_registers, profile.max_gap)
        self.decoder = ProfileDecoder(profile, self.blocks)
        self.series_ids = np.asarray(series_ids, dtype=np.int32)
        self.interval_s = poll_interval_s
        self.emit = emit
        self.clock_ns = clock_ns
        self.health = DeviceHealth(device_id, "modbus")
        self.failures_in_row = 0
        self.requests = 0

    async def poll_once(self) -> ReadingBatch:
        words = []
        for block in self.blocks:
            self.requests += 1
            words.append(await self.bus.read_block(self.unit_id, block))
        ts = self.clock_ns()  # the moment the last register arrived: when the values were read
        values = self.decoder.decode(np.concatenate(words) if len(words) > 1 else words[0])
        return ReadingBatch.from_arrays(self.series_ids, ts, values, QUALITY_GOOD)

    async def run(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        next_ns = (time.time_ns() // interval_ns + 1) * interval_ns  # aligned: polls land on :00, :05, ...
        while True:
            await asyncio.sleep(max(0.0, (next_ns - time.time_ns()) / 1e9))
            try:
                batch = await self.poll_once()
            except PollError as e:
                self._failed(e.kind, e.detail)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a driver bug must not stop the other devices
                self._failed("internal_error", repr(e))
            else:
                if self.failures_in_row:
                    log.info("", extra={"event": "device_recovered", "device": self.device_id,
                                        "after_failures": self.failures_in_row})
                self.failures_in_row = 0
                self.health.success(len(batch))
                self.emit(batch)
            now = time.time_ns()
            if self.failures_in_row:
                # capped exponential backoff with jitter so a dead device costs almost nothing
                delay = min(BACKOFF_MAX_S, self.interval_s * 2 ** (self.failures_in_row - 1))
                next_ns = now + int(delay * (0.8 + 0.4 * random.random()) * 1e9)
            else:
                next_ns += interval_ns
                if next_ns <= now:  # fell behind: skip missed slots rather than burst
                    next_ns = (now // interval_ns + 1) * interval_ns

    def _failed(self, kind: str, detail: str) -> None:
        self.failures_in_row += 1
        self.health.failure(kind, detail)
        if self.failures_in_row == 1 or self.failures_in_row % 10 == 0:  # once per burst, then a reminder
            log.warning(detail, extra={"event": "poll_failed", "device": self.device_id, "error": kind,
                                       "failures_in_row": self.failures_in_row})
