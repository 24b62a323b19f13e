"""Safety and operations rules: a condition that must hold for a while before it raises an alert.

Every rule is the same state machine, vectorised over its instances (one per elevator, bay, gate or
meter): the condition must hold for ``raise_after_s`` before the alert is raised (a minimum
duration: a door switch that chatters for half a second raises nothing), and must be false for
``clear_after_s`` before it clears (hysteresis: an alert does not flap when the condition flickers).
The conditions themselves are plain numpy expressions over the latest values of each instance's
series (``conditions``); NaN (never seen) is never true.

Pure: arrays and state in, changes out; the caller supplies the times (data time, or the gateway's
clock on a periodic tick, so a device that stops reporting while trapped still raises).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.growth import grown_capacity

NEVER = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class HeldRule:
    name: str
    raise_after_s: float
    clear_after_s: float = 0.0

    def __post_init__(self) -> None:
        if self.raise_after_s < 0 or self.clear_after_s < 0:
            raise ValueError(f"rule {self.name}: durations must be >= 0")


class HeldState:
    """Per instance: alert active, since when the condition has been true, and false."""

    __slots__ = ("cap", "active", "true_since", "false_since")

    def __init__(self, n: int = 16) -> None:
        self.cap = 0
        self.active = np.zeros(0, dtype=bool)
        self.true_since = np.zeros(0, dtype=np.int64)
        self.false_since = np.zeros(0, dtype=np.int64)
        self.ensure_capacity(n)

    def ensure_capacity(self, n: int) -> None:
        if n <= self.cap:
            return
        cap = grown_capacity(self.cap, n)
        for name, fill in (("active", False), ("true_since", NEVER), ("false_since", NEVER)):
            old = getattr(self, name)
            new = np.full(cap, fill, dtype=old.dtype)
            new[: self.cap] = old
            setattr(self, name, new)
        self.cap = cap


def step_held(rule: HeldRule, state: HeldState, idx: np.ndarray, cond: np.ndarray,
              ts_ns: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Advance instances ``idx`` (unique) with condition ``cond`` observed at ``ts_ns``.

    Returns ``(change, held_s)``: +1 raised, -1 cleared, 0 otherwise, and for how long the
    condition had held (raise) or been false (clear) at that moment.
    """
    idx = np.asarray(idx, dtype=np.int64)
    n = len(idx)
    change = np.zeros(n, dtype=np.int8)
    held = np.zeros(n, dtype=np.float64)
    if n == 0:
        return change, held
    state.ensure_capacity(int(idx.max()) + 1)
    ts = np.broadcast_to(np.asarray(ts_ns, dtype=np.int64), (n,))
    cond = np.asarray(cond, dtype=bool)
    ts_true = state.true_since[idx]
    ts_false = state.false_since[idx]
    # the condition's run starts at its first observation; a change of value restarts the other run
    ts_true = np.where(cond, np.where(ts_true == NEVER, ts, ts_true), NEVER)
    ts_false = np.where(~cond, np.where(ts_false == NEVER, ts, ts_false), NEVER)
    active = state.active[idx]
    run = np.where(cond, ts - ts_true, ts - ts_false) / 1e9
    up = cond & ~active & (run >= rule.raise_after_s)
    down = ~cond & active & (run >= rule.clear_after_s)
    change[up] = 1
    change[down] = -1
    held[up | down] = run[up | down]
    state.true_since[idx] = ts_true
    state.false_since[idx] = ts_false
    state.active[idx] = (active | up) & ~down
    return change, held


# -- conditions: latest values in, one boolean per instance out (NaN compares false) ----------

def trapped_passenger(occupied: np.ndarray, door_state: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Someone in a car that stands still with the door closed (elevator-iot.md 3.1: > 3 min)."""
    return (occupied == 1) & (door_state == 0) & (moving == 0)


def door_open_while_moving(door_state: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """The car moves while its door is not closed (open, closing or opening)."""
    return (moving == 1) & (door_state >= 1)


def stopped_outside_landing(moving: np.ndarray, in_door_zone: np.ndarray) -> np.ndarray:
    """The car stands still outside the door zone (between floors)."""
    return (moving == 0) & (in_door_zone == 0)


def bay_occupied(occupied: np.ndarray) -> np.ndarray:
    """A vehicle over the sensor (the rule is instantiated for fire-lane bays only)."""
    return occupied == 1


def crowding(in_count: np.ndarray, seconds_since_previous: np.ndarray, per_minute: float) -> np.ndarray:
    """People entering faster than ``per_minute`` over the last report interval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = in_count * 60.0 / seconds_since_previous
    return (seconds_since_previous > 0) & (rate >= per_minute)


def stale(stale_flag: np.ndarray) -> np.ndarray:
    """The device's last poll failed (device_health.stale)."""
    return stale_flag == 1
