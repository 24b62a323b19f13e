"""The device side of a profile: engineering values into the register words the meter serves.

Reads the same TOML profile files the gateway reads (the data a real device's manual gives), but
not the gateway's code: a simulated meter must not share the gateway's bugs.
"""
from __future__ import annotations

import struct
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
           "float32": "f", "float64": "d"}
_MODICON = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}


@dataclass(frozen=True, slots=True)
class MappedRegister:
    field: str
    function: str
    address: int
    type: str
    byte_order: str
    word_order: str
    scale: float
    offset: float

    @property
    def width(self) -> int:
        return 1 if self.type in ("bit", "int16", "uint16") else 2 if self.type in ("int32", "uint32", "float32") else 4

    def encode(self, value: float) -> list[int]:
        """Engineering value -> register words as they go on the wire."""
        if self.type == "bit":
            return [1 if value else 0]
        raw = (value - self.offset) / self.scale
        code = _STRUCT[self.type]
        if code in "fd":
            data = struct.pack(">" + code, raw)
        else:
            data = struct.pack(">" + code, int(round(raw)))
        words = [data[i:i + 2] for i in range(0, len(data), 2)]
        if self.word_order == "little":
            words.reverse()
        if self.byte_order == "little":
            words = [w[::-1] for w in words]
        return [int.from_bytes(w, "big") for w in words]

    def served_value(self, value: float) -> float:
        """What a reader decodes from encode(value): the precision the register really carries."""
        if self.type == "bit":
            return 1.0 if value else 0.0
        words = self.encode(value)
        if self.byte_order == "little":
            words = [int.from_bytes(w.to_bytes(2, "big")[::-1], "big") for w in words]
        if self.word_order == "little":
            words = list(reversed(words))
        raw = struct.unpack(">" + _STRUCT[self.type], b"".join(w.to_bytes(2, "big") for w in words))[0]
        return raw * self.scale + self.offset


@dataclass(frozen=True, slots=True)
class RegisterMap:
    model: str
    registers: tuple[MappedRegister, ...]

    def by_function(self, function: str) -> list[MappedRegister]:
        return [r for r in self.registers if r.function == function]


def profile_dir() -> Path:
    return Path(str(resources.files("drivers.profiles")))  # data only: the profile files ship there


def load_register_map(model: str, extra_dirs: list[Path] | None = None) -> RegisterMap:
    for d in [*(extra_dirs or []), profile_dir()]:
        path = Path(d) / f"{model}.toml"
        if path.exists():
            break
    else:
        raise FileNotFoundError(f"no profile file for model {model!r}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    addressing = data.get("addressing", "protocol")
    regs = []
    for r in data["registers"]:
        function = r.get("function", data.get("function"))
        address = r["address"]
        if addressing == "modicon":
            prefix, number = divmod(address, 10000 if address < 100000 else 100000)
            function, address = _MODICON[prefix], number - 1
        elif addressing == "one-based":
            address -= 1
        regs.append(MappedRegister(
            r["field"], function, address, r["type"], r.get("byte_order", data.get("byte_order", "big")),
            r.get("word_order", data.get("word_order", "big")), float(r.get("scale", 1.0)), float(r.get("offset", 0.0)),
        ))
    return RegisterMap(data["model"], tuple(regs))
