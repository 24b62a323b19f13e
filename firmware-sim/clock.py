"""The simulator's clock: simulated time that can run faster than the wall clock.

A scenario starts at a simulated instant (its ``start``, default now) and advances ``speed`` times
faster than the wall clock (``--speed 60``: an hour a minute). Every device reads this clock, so
served values and device timestamps are simulated time.

The clock is published in a small JSON file, ``{"wall_ns": ..., "sim_ns": ..., "speed": ...}``
(simulated time ``sim_ns`` at wall time ``wall_ns``), the format ``drivers.clock.SimClock`` reads:
a gateway with ``gateway.sim_clock_file`` follows it. The format is copied here rather than
imported because firmware-sim is the device side and imports nothing of the gateway's.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


class SimClock:
    """Simulated time ``sim_ns + (wall now - wall_ns) x speed``."""

    def __init__(self, sim_start_ns: int, speed: float = 1.0, wall_ns: int | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.wall_ns = time.time_ns() if wall_ns is None else int(wall_ns)
        self.sim_ns = int(sim_start_ns)
        self.speed = float(speed)

    def now_ns(self) -> int:
        return self.sim_ns + int((time.time_ns() - self.wall_ns) * self.speed)

    def now_s(self) -> float:
        return self.now_ns() / 1e9

    def wall_seconds_until(self, sim_s: float) -> float:
        """Wall seconds from now until the clock reads ``sim_s`` (negative when it is past)."""
        return (sim_s - self.now_s()) / self.speed

    def to_json(self) -> str:
        return json.dumps({"wall_ns": self.wall_ns, "sim_ns": self.sim_ns, "speed": self.speed})

    def write(self, path: Path | str) -> None:
        """Publish the clock; atomic, so a gateway polling the file never reads half of it."""
        path = Path(path)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
