"""MQTT readings waiting, for at most the batching window, to go down the pipeline together.

A pending batch holds at most one reading per series: the rules read a batch's last value of each
series, so a second reading of a series (a car's next status) starts a new batch, or a short
condition between the two would never be seen. The check is columnar: a burst of messages is cut
into runs without a repeated series with a few numpy operations per cut, not per reading.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipelines.batch import QUALITY_GOOD, ReadingBatch
from pipelines.growth import grown_capacity

Ack = Callable[[], None]
Emit = Callable[[ReadingBatch, list[Ack]], None]


def previous_occurrence(sids: np.ndarray) -> np.ndarray:
    """For each position, the position of the previous reading of the same series, or -1."""
    n = len(sids)
    prev = np.full(n, -1, dtype=np.int64)
    if n > 1:
        order = np.argsort(sids, kind="stable")
        same = sids[order[1:]] == sids[order[:-1]]
        prev[order[1:][same]] = order[:-1][same]
    return prev


class PendingBatch:
    """Collects readings (in message order) and hands them to ``emit`` with the acks they carry."""

    def __init__(self, emit: Emit, max_points: int) -> None:
        self._emit = emit
        self.max_points = max_points
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.points = 0
        self._acks: list[Ack] = []
        # per series: the generation of the pending batch it is in; a new batch is a new generation
        self._mark = np.zeros(1024, dtype=np.int64)
        self._gen = 1

    def add(self, msg: np.ndarray, sids: np.ndarray, ts_ns: np.ndarray, values: np.ndarray,
            ack: Ack | None = None) -> None:
        """Readings of a burst of messages: ``msg`` is each reading's message position (non-decreasing).

        ``ack`` acknowledges the whole burst; it rides with the batch that takes the burst's last
        reading, which is committed after every earlier batch of the burst.
        """
        n = len(sids)
        if n and int(sids.max()) >= len(self._mark):
            grown = np.zeros(grown_capacity(len(self._mark), int(sids.max()) + 1), dtype=np.int64)
            grown[: len(self._mark)] = self._mark
            self._mark = grown
        prev = previous_occurrence(sids)
        s = 0
        while s < n:
            conflict = (self._mark[sids[s:]] == self._gen) | (prev[s:] >= s)
            if not conflict.any():
                self._take(sids[s:], ts_ns[s:], values[s:])
                break
            i = s + int(np.argmax(conflict))
            # cut before the message of the repeated reading, so a message stays in one batch
            cut = int(np.searchsorted(msg, msg[i], side="left"))
            if cut <= s:
                if self.points:
                    self.flush()  # the repeat is of a reading already pending: start afresh
                    continue
                cut = i  # one message with two readings of a series: split it there
            self._take(sids[s:cut], ts_ns[s:cut], values[s:cut])
            self.flush()
            s = cut
        if ack is not None:
            self._acks.append(ack)
        if self.points >= self.max_points:
            self.flush()

    def _take(self, sids: np.ndarray, ts_ns: np.ndarray, values: np.ndarray) -> None:
        if len(sids):
            self._mark[sids] = self._gen
            self._chunks.append((sids, ts_ns, values))
            self.points += len(sids)

    def flush(self) -> None:
        """Hand what is pending down the pipeline (and its acks along)."""
        chunks, acks = self._chunks, self._acks
        self._chunks, self._acks, self.points = [], [], 0
        self._gen += 1
        if not chunks:
            for ack in acks:  # nothing pending carries readings of these messages
                ack()
            return
        if len(chunks) == 1:
            sids, ts, values = chunks[0]
        else:
            sids, ts, values = (np.concatenate([c[k] for c in chunks]) for k in range(3))
        self._emit(ReadingBatch.from_arrays(sids, ts, values, QUALITY_GOOD), acks)
