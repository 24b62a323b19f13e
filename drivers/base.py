"""What every driver shares with the runtime: how batches leave a driver, and device health."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol

from pipelines.batch import ReadingBatch

Ack = Callable[[], None]


class BatchSink(Protocol):
    def __call__(self, batch: ReadingBatch, ack: Ack | None = None) -> None:
        """Take a batch; call ``ack`` once it is durably accepted (for MQTT manual acknowledgement)."""


@dataclass
class DeviceHealth:
    """A device's link health as its driver sees it; the status page and device_health read it."""

    device: str
    driver: str
    online: bool = False
    last_success_ns: int = 0
    last_error: str = ""
    last_error_detail: str = ""
    errors: Counter = field(default_factory=Counter)
    readings: int = 0

    def success(self, n_readings: int) -> None:
        self.online = True
        self.last_success_ns = time.time_ns()
        self.readings += n_readings

    def failure(self, kind: str, detail: str) -> None:
        self.online = False
        self.last_error = kind
        self.last_error_detail = detail
        self.errors[kind] += 1
