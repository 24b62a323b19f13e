"""Read planning and decoding: a profile's registers become few block reads and one vectorised decode.

Planning happens once per device at start-up; decoding a poll is a handful of numpy operations per
(type, byte order, word order) group, not Python work per value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.modbus.profile import MAX_READ, REGISTER_TYPES, DeviceProfile, RegisterSpec


@dataclass(frozen=True, slots=True)
class Block:
    function: str
    address: int
    count: int


def plan_blocks(registers: tuple[RegisterSpec, ...] | list[RegisterSpec], max_registers: int, max_gap: int) -> list[Block]:
    """Coalesce registers of one function into as few reads as the size limit and max gap allow."""
    blocks: list[Block] = []
    by_function: dict[str, list[RegisterSpec]] = {}
    for r in registers:
        by_function.setdefault(r.function, []).append(r)
    for function in sorted(by_function):
        limit = min(max_registers, MAX_READ[function]) if function in ("holding", "input") else MAX_READ[function]
        regs = sorted(by_function[function], key=lambda r: r.address)
        start = end = None  # end is exclusive
        for r in regs:
            r_end = r.address + r.width
            if start is not None and r.address - end <= max_gap and max(end, r_end) - start <= limit:
                end = max(end, r_end)
                continue
            if start is not None:
                blocks.append(Block(function, start, end - start))
            start, end = r.address, r_end
        if start is not None:
            blocks.append(Block(function, start, end - start))
    return blocks


@dataclass(frozen=True, slots=True)
class _DecodeGroup:
    out_index: np.ndarray  # positions in the output value array
    word_index: np.ndarray  # (k, width) positions in the flat word buffer
    dtype: str
    byte_swap: bool
    word_swap: bool


class ProfileDecoder:
    """Decodes the words of a device's planned blocks into one float64 value per profile register."""

    def __init__(self, profile: DeviceProfile, blocks: list[Block]) -> None:
        self.profile = profile
        self.blocks = blocks
        offsets: dict[str, list[tuple[int, int, int]]] = {}  # function -> (start, count, buffer offset)
        pos = 0
        for b in blocks:
            offsets.setdefault(b.function, []).append((b.address, b.count, pos))
            pos += b.count
        self.buffer_len = pos
        self.fields = [r.field for r in profile.registers]
        self.scale = np.array([r.scale for r in profile.registers], dtype=np.float64)
        self.offset = np.array([r.offset for r in profile.registers], dtype=np.float64)
        groups: dict[tuple[str, bool, bool], tuple[list[int], list[list[int]]]] = {}
        for i, r in enumerate(profile.registers):
            base = next(off + (r.address - start) for start, count, off in offsets[r.function]
                        if start <= r.address and r.address + r.width <= start + count)
            key = (REGISTER_TYPES[r.type][1], r.byte_order == "little", r.word_order == "little")
            outs, words = groups.setdefault(key, ([], []))
            outs.append(i)
            words.append(list(range(base, base + r.width)))
        self.groups = [
            _DecodeGroup(np.array(outs, np.intp), np.array(words, np.intp), dtype, bswap, wswap)
            for (dtype, bswap, wswap), (outs, words) in groups.items()
        ]

    def decode(self, words: np.ndarray) -> np.ndarray:
        """words: uint16 register values of all blocks concatenated in plan order (bits as 0/1)."""
        if len(words) != self.buffer_len:
            raise ValueError(f"expected {self.buffer_len} registers, got {len(words)}")
        out = np.empty(len(self.fields), dtype=np.float64)
        for g in self.groups:
            w = words[g.word_index]  # (k, width)
            if g.dtype == "bit":
                out[g.out_index] = (w[:, 0] != 0)
                continue
            if g.word_swap:
                w = w[:, ::-1]
            be = np.ascontiguousarray(w, dtype=">u2")  # each register as the two bytes on the wire
            if g.byte_swap:
                be = be.byteswap()
            out[g.out_index] = be.view(g.dtype).reshape(len(g.out_index))
        return out * self.scale + self.offset
