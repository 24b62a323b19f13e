"""Per-series state arrays grow by doubling, so adding series costs amortised O(1)."""
from __future__ import annotations


def grown_capacity(current: int, needed: int, minimum: int = 16) -> int:
    cap = max(current, minimum)
    while cap < needed:
        cap *= 2
    return cap

