"""What every polled device shares, whatever its protocol: the schedule, backoff, health and stale marks.

A protocol driver (Modbus, DL/T 645) supplies ``read_values()``: one poll, returning the device's
values in the order of its series ids, or raising ``PollError`` with a kind from ``ERROR_KINDS``.
Everything else is here, once:

- polls are aligned to the interval (a 5 s device is read at :00, :05, ...), so readings of many
  devices line up in time and the interval energy has clean boundaries;
- a failed poll is never published as a value: the device's series get a *stale* mark (the value is
  NaN with ``QUALITY_STALE``; the pipeline counts it and never writes it), and the device's health
  records why;
- a failing device backs off exponentially, capped, with jitter; its own task sleeps, so it never
  delays the other devices, and it comes back by itself when the device answers again.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

import numpy as np

from drivers.base import BatchSink, DeviceHealth
from drivers.clock import Clock
from pipelines.batch import QUALITY_GOOD, QUALITY_STALE, ReadingBatch

log = logging.getLogger("drivers")

BACKOFF_MAX_S = 60.0

# Why a poll failed. The code is what device_health.error_code carries (dashboards map it back).
ERROR_KINDS: dict[str, int] = {
    "timeout": 1,
    "connection_refused": 2,
    "connection_lost": 3,
    "serial_unavailable": 4,
    "crc_error": 5,
    "modbus_exception": 6,
    "abnormal_response": 7,
    "short_response": 8,
    "protocol_error": 9,
    "address_mismatch": 10,
    "internal_error": 11,
}


class PollError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown poll error kind {kind!r}")
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


HealthListener = Callable[[DeviceHealth], None]


class PolledDevice:
    """Runs one device's polls on its schedule and emits one batch per poll (values or stale marks)."""

    driver = "polled"

    def __init__(
        self,
        device_id: str,
        series_ids: np.ndarray,
        poll_interval_s: float,
        emit: BatchSink,
        clock_ns: Callable[[], int] = time.time_ns,
        on_health: HealthListener | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.device_id = device_id
        # the schedule follows ``clock`` (simulated time in accelerated tests and demos); the
        # readings are stamped with ``clock_ns``, which is that clock's now unless a test pins it
        self.clock = clock or Clock()
        if clock is not None and clock_ns is time.time_ns:
            clock_ns = clock.now_ns
        self.series_ids = np.asarray(series_ids, dtype=np.int32)
        self.interval_s = poll_interval_s
        self.emit = emit
        self.clock_ns = clock_ns
        self.on_health = on_health
        self.health = DeviceHealth(device_id, self.driver)
        self.failures_in_row = 0
        self.polls = 0

    async def read_values(self) -> np.ndarray:
        """One poll: float64 values aligned with ``series_ids``; raises PollError."""
        raise NotImplementedError

    async def poll_once(self) -> ReadingBatch:
        self.polls += 1
        values = await self.read_values()
        ts = self.clock_ns()  # the moment the last answer arrived: when the values were read
        return ReadingBatch.from_arrays(self.series_ids, ts, values, QUALITY_GOOD)

    def next_delay_s(self) -> float:
        """Capped exponential backoff with jitter, so a dead device costs almost nothing."""
        delay = min(BACKOFF_MAX_S, self.interval_s * 2 ** (self.failures_in_row - 1))
        return delay * (0.8 + 0.4 * random.random())

    async def run(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        next_ns = (self.clock.now_ns() // interval_ns + 1) * interval_ns
        while True:
            await self.clock.sleep_until(next_ns)
            await self.poll_and_emit()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # a client library (pymodbus on 3.11) may swallow the CancelledError inside a
                # request: the cancellation is still pending on the task, so honour it here
                raise asyncio.CancelledError
            now = self.clock.now_ns()
            if self.failures_in_row:
                next_ns = now + int(self.next_delay_s() * 1e9)
            else:
                next_ns += interval_ns
                if next_ns <= now:  # fell behind (or back from a backoff): skip missed slots, never burst
                    next_ns = (now // interval_ns + 1) * interval_ns

    async def poll_and_emit(self) -> bool:
        """One scheduled poll with all its consequences; True when the device answered."""
        try:
            batch = await self.poll_once()
        except PollError as e:
            self._failed(e.kind, e.detail)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a driver bug must not stop the other devices
            self._failed("internal_error", repr(e))
            return False
        recovered = self.failures_in_row > 0 or not self.health.online
        if self.failures_in_row:
            log.info("", extra={"event": "device_recovered", "device": self.device_id,
                                "after_failures": self.failures_in_row})
        self.failures_in_row = 0
        self.health.success(len(batch))
        self.emit(batch)
        if recovered and self.on_health is not None:
            self.on_health(self.health)
        return True

    def _failed(self, kind: str, detail: str) -> None:
        self.failures_in_row += 1
        self.health.failure(kind, detail)
        # a timeout is never a value: the series are marked stale at the time of the failed poll
        n = len(self.series_ids)
        self.emit(ReadingBatch.from_arrays(self.series_ids, self.clock_ns(), np.full(n, np.nan), QUALITY_STALE))
        if self.on_health is not None:
            self.on_health(self.health)
        if self.failures_in_row == 1 or self.failures_in_row % 10 == 0:  # once per burst, then a reminder
            log.warning(detail, extra={"event": "poll_failed", "device": self.device_id, "error": kind,
                                       "failures_in_row": self.failures_in_row})
