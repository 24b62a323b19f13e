"""DL/T 645-2007 meters polled on a schedule: one client per line, one poller per meter.

The line (an RS-485 adapter or a TCP transparent converter) is shared by every meter on it;
``Dlt645Client`` already holds one exchange at a time on it, and the inter-frame gap keeps slow
meters from hearing two frames as one. Scheduling, backoff, health and stale marks come from
``drivers/polling.py``, as for Modbus.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from drivers.base import BatchSink
from drivers.dlt645.client import Dlt645Client
from drivers.dlt645.errors import (
    AbnormalResponseError,
    AddressMismatchError,
    ChecksumError,
    Dlt645Error,
    ResponseTimeoutError,
    TransportError,
)
from drivers.dlt645.identifiers import BY_FIELD, identifiers_for_fields
from drivers.clock import Clock
from drivers.polling import HealthListener, PolledDevice, PollError

# What a three-phase household meter is asked for when the configuration lists no fields.
DEFAULT_FIELDS: tuple[str, ...] = (
    "energy_import", "energy_export", "energy_total", "active_power", "power_factor", "frequency",
    "voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3",
)


def serial_gap_s(baudrate: int, chars: float = 3.5, bits_per_char: int = 11) -> float:
    """Silence between frames on a serial line: 3.5 characters (8E1 is 11 bits per character)."""
    return chars * bits_per_char / baudrate


def line_client(kind: str, *, device: str = "", baudrate: int = 2400, parity: str = "E", stopbits: int = 1,
                host: str = "", port: int = 0, timeout_s: float = 1.0) -> Dlt645Client:
    """The client for one DL/T 645 line: ``kind`` is "serial" or "tcp" (a transparent converter)."""
    if kind == "serial":
        return Dlt645Client.serial(device, baudrate=baudrate, parity=parity, stopbits=stopbits,
                                   timeout=timeout_s, inter_frame_delay=serial_gap_s(baudrate))
    # behind a converter the serial side still needs its gap; its baud rate is not ours to know,
    # so allow for the slowest usual meter setting (2400 baud)
    return Dlt645Client.tcp(host, port, timeout=timeout_s, inter_frame_delay=serial_gap_s(2400))


def poll_error(exc: Dlt645Error, serial: bool) -> PollError:
    """A DL/T 645 failure as the health kind every driver shares."""
    if isinstance(exc, ChecksumError):
        return PollError("crc_error", str(exc))
    if isinstance(exc, ResponseTimeoutError):
        return PollError("timeout", str(exc))
    if isinstance(exc, AbnormalResponseError):
        return PollError("abnormal_response", str(exc))
    if isinstance(exc, AddressMismatchError):
        return PollError("address_mismatch", str(exc))
    if isinstance(exc, TransportError):
        return PollError("serial_unavailable" if serial else "connection_refused", str(exc))
    return PollError("protocol_error", str(exc))


class Dlt645DevicePoller(PolledDevice):
    """One meter (12-digit address) on a shared line; one read per data identifier, as the protocol asks."""

    driver = "dlt645"

    def __init__(
        self,
        device_id: str,
        client: Dlt645Client,
        address: str,
        fields: Sequence[str],
        series_ids: np.ndarray,
        poll_interval_s: float,
        emit: BatchSink,
        clock_ns: Callable[[], int] = time.time_ns,
        on_health: HealthListener | None = None,
        clock: Clock | None = None,
        serial: bool = True,
    ) -> None:
        super().__init__(device_id, series_ids, poll_interval_s, emit, clock_ns, on_health, clock)
        self.client = client
        self.address = address
        self.fields = tuple(fields)
        self.dis = identifiers_for_fields(self.fields)
        self.scale = np.array([BY_FIELD[f].to_field for f in self.fields])
        self.serial = serial
        self.refused: dict[str, int] = {}  # field -> abnormal replies ("no data" on a single-phase meter)

    async def read_values(self) -> np.ndarray:
        try:
            got = await self.client.read_many(self.address, self.dis, skip_abnormal=True)
        except Dlt645Error as e:
            raise poll_error(e, self.serial) from None
        if not got:
            raise PollError("abnormal_response", f"meter {self.address} refused every identifier asked")
        values = np.full(len(self.dis), np.nan)
        for i, di in enumerate(self.dis):
            if di in got:
                values[i] = got[di]
            else:  # counted here, and the NaN is counted and never written by the pipeline
                self.refused[self.fields[i]] = self.refused.get(self.fields[i], 0) + 1
        return values * self.scale
