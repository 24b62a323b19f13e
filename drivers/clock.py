"""The gateway's clock: the system clock, or (tests and demos only) firmware-sim's accelerated one.

firmware-sim can run a community at ``--speed 60`` (an hour a minute). It writes where its clock
stands to a small JSON file (``{"wall_ns": ..., "sim_ns": ..., "speed": ...}``: simulated time
``sim_ns`` at wall time ``wall_ns``, advancing ``speed`` times faster). A gateway told to follow
that file (``gateway.sim_clock_file``) stamps polled readings with simulated time and schedules
its polls in simulated seconds, so a day of 5-second polls takes 24 minutes and lines up with what
the devices served.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path


class Clock:
    """The system clock."""

    speed = 1.0

    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep_until(self, t_ns: int) -> None:
        await asyncio.sleep(max(0.0, (t_ns - self.now_ns()) / 1e9 / self.speed))

    def describe(self) -> str:
        return "system"


class SimClock(Clock):
    """Simulated time: ``sim_ns + (wall now - wall_ns) x speed``."""

    def __init__(self, wall_ns: int, sim_ns: int, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.wall_ns = int(wall_ns)
        self.sim_ns = int(sim_ns)
        self.speed = float(speed)

    def now_ns(self) -> int:
        return self.sim_ns + int((time.time_ns() - self.wall_ns) * self.speed)

    def describe(self) -> str:
        return f"simulated x{self.speed:g}"

    @classmethod
    def from_file(cls, path: Path | str, wait_s: float = 30.0) -> "SimClock":
        """Read the simulator's clock file, waiting for the simulator to write it."""
        path = Path(path)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                doc = json.loads(path.read_text())
                return cls(int(doc["wall_ns"]), int(doc["sim_ns"]), float(doc["speed"]))
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: no simulator clock after {wait_s:g} s (is firmware-sim running?)") from None
                time.sleep(0.1)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: not a simulator clock file: {e}") from None

    def write(self, path: Path | str) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps({"wall_ns": self.wall_ns, "sim_ns": self.sim_ns, "speed": self.speed}))
        tmp.replace(path)  # atomic: a reader never sees half a file
