"""Device profiles as data: one TOML file per device model, checked when it loads.

A register-map mistake (a float32 on one register, a coil with a word order, a scale of 0, two
fields claiming the same registers) fails at start-up naming the file, the register and the reason,
instead of turning into silently wrong numbers.

Addresses are 0-based protocol addresses (what goes into the Modbus PDU) unless the profile says
``addressing = "one-based"`` (manual register numbers starting at 1) or ``addressing = "modicon"``
(30001/40001-style numbers, whose leading digit also names the function).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pipelines.schema import measurement as lookup_measurement

Function = Literal["holding", "input", "coil", "discrete"]
ByteOrder = Literal["big", "little"]

# type -> (registers spanned, numpy big-endian dtype code); bit is a coil/discrete input
REGISTER_TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, ">i2"),
    "uint16": (1, ">u2"),
    "int32": (2, ">i4"),
    "uint32": (2, ">u4"),
    "int64": (4, ">i8"),
    "uint64": (4, ">u8"),
    "float32": (2, ">f4"),
    "float64": (4, ">f8"),
    "bit": (1, "bit"),
}
BIT_FUNCTIONS = ("coil", "discrete")
WORD_FUNCTIONS = ("holding", "input")
MODICON_PREFIX = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}
MAX_READ = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}  # Modbus spec limits per request

_PROFILE_KEYS = {
    "model", "manufacturer", "description", "measurement", "function", "byte_order", "word_order",
    "addressing", "max_block_registers", "max_gap", "source", "registers",
}
_REGISTER_KEYS = {
    "field", "address", "function", "type", "byte_order", "word_order", "scale", "offset", "unit",
    "allow_overlap", "description",
}


class ProfileError(ValueError):
    """A profile that cannot be trusted; the message names file, register and reason."""


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    field: str
    address: int  # 0-based protocol address
    function: Function
    type: str
    byte_order: ByteOrder
    word_order: ByteOrder
    scale: float
    offset: float
    unit: str

    @property
    def width(self) -> int:
        return REGISTER_TYPES[self.type][0]


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    model: str
    manufacturer: str
    description: str
    measurement: str
    registers: tuple[RegisterSpec, ...]
    max_block_registers: int
    max_gap: int
    source: str
    path: str

    def register(self, field: str) -> RegisterSpec:
        for r in self.registers:
            if r.field == field:
                return r
        raise KeyError(f"profile {self.model!r} has no field {field!r}")


def _fail(path: str, where: str, reason: str) -> ProfileError:
    return ProfileError(f"{path}: {where}: {reason}")


def parse_profile(data: dict, path: str) -> DeviceProfile:
    """Check a profile document against the per-type rules and return it; raise ProfileError."""
    unknown = set(data) - _PROFILE_KEYS
    if unknown:
        raise _fail(path, "profile", f"unknown key(s) {sorted(unknown)}")
    for key in ("model", "measurement", "registers"):
        if key not in data:
            raise _fail(path, "profile", f"missing required key {key!r}")
    try:
        meas = lookup_measurement(data["measurement"])
    except KeyError as e:
        raise _fail(path, "measurement", str(e.args[0])) from None
    addressing = data.get("addressing", "protocol")
    if addressing not in ("protocol", "one-based", "modicon"):
        raise _fail(path, "addressing", f"{addressing!r} is not one of protocol, one-based, modicon")
    max_block = int(data.get("max_block_registers", 125))
    if not 1 <= max_block <= 125:
        raise _fail(path, "max_block_registers", f"{max_block} is outside 1..125 (the Modbus limit)")
    max_gap = int(data.get("max_gap", 0))
    if max_gap < 0:
        raise _fail(path, "max_gap", "must be >= 0")

    regs: list[RegisterSpec] = []
    for i, raw in enumerate(data["registers"]):
        where = f"registers[{i}]" + (f" ({raw.get('field')})" if isinstance(raw, dict) and "field" in raw else "")
        if not isinstance(raw, dict):
            raise _fail(path, where, "each register must be a table")
        unknown = set(raw) - _REGISTER_KEYS
        if unknown:
            raise _fail(path, where, f"unknown key(s) {sorted(unknown)}")
        for key in ("field", "address", "type"):
            if key not in raw:
                raise _fail(path, where, f"missing required key {key!r}")
        field = raw["field"]
        if field not in meas.fields:
            raise _fail(path, where, f"field {field!r} is not in measurement {meas.name!r}")
        rtype = raw["type"]
        if rtype not in REGISTER_TYPES:
            raise _fail(path, where, f"type {rtype!r} is not one of {', '.join(REGISTER_TYPES)}")
        address = raw["address"]
        if not isinstance(address, int) or isinstance(address, bool):
            raise _fail(path, where, f"address {address!r} must be an integer")
        function = raw.get("function", data.get("function"))
        if addressing == "modicon":
            function = raw.get("function")  # the number's leading digit names it; a profile default does not
            prefix, number = divmod(address, 10000) if address < 100000 else divmod(address, 100000)
            implied = MODICON_PREFIX.get(prefix)
            if implied is None or number < 1:
                raise _fail(path, where, f"address {address} is not a valid 0xxxx/1xxxx/3xxxx/4xxxx number")
            if function is not None and function != implied:
                raise _fail(path, where, f"function {function!r} contradicts modicon number {address} ({implied})")
            function, address = implied, number - 1
        elif addressing == "one-based":
            if address < 1:
                raise _fail(path, where, f"one-based address {address} must be >= 1")
            address -= 1
        if function not in (*WORD_FUNCTIONS, *BIT_FUNCTIONS):
            raise _fail(path, where, f"function {function!r} is not one of holding, input, coil, discrete")
        if not 0 <= address <= 0xFFFF:
            raise _fail(path, where, f"address {address} is outside 0..65535")
        width = REGISTER_TYPES[rtype][0]
        if address + width - 1 > 0xFFFF:
            raise _fail(path, where, f"{rtype} at {address} runs past register 65535")
        is_bit = rtype == "bit"
        if is_bit != (function in BIT_FUNCTIONS):
            raise _fail(path, where, f"type {rtype!r} cannot be read with function {function!r}"
                        + (" (bits come from coils or discrete inputs)" if is_bit else " (coils and discrete inputs are single bits)"))
        for order_key in ("byte_order", "word_order"):
            if order_key in raw:
                if is_bit:
                    raise _fail(path, where, f"a bit has no {order_key.replace('_', ' ')}")
                if order_key == "word_order" and width == 1:
                    raise _fail(path, where, f"{rtype} spans one register and has no word order")
        byte_order = raw.get("byte_order", data.get("byte_order", "big"))
        word_order = raw.get("word_order", data.get("word_order", "big"))
        for name, val in (("byte_order", byte_order), ("word_order", word_order)):
            if val not in ("big", "little"):
                raise _fail(path, where, f"{name} {val!r} is not big or little")
        scale = float(raw.get("scale", 1.0))
        if scale == 0.0:
            raise _fail(path, where, "scale of 0 would erase every reading")
        if is_bit and (scale != 1.0 or raw.get("offset", 0) != 0):
            raise _fail(path, where, "a bit takes no scale or offset")
        unit = raw.get("unit", meas.fields[field].unit)
        if unit != meas.fields[field].unit:
            raise _fail(path, where, f"unit {unit!r} differs from the schema's {meas.fields[field].unit!r} "
                        f"for {meas.name}.{field}; use scale to convert")
        regs.append(RegisterSpec(field, address, function, rtype, byte_order, word_order, scale,
                                 float(raw.get("offset", 0.0)), unit))
        regs_overlap_ok = bool(raw.get("allow_overlap", False))
        for j, other in enumerate(regs[:-1]):
            if other.field == field:
                raise _fail(path, where, f"field {field!r} already read by registers[{j}]")
            if other.function == function and other.address < address + width and address < other.address + other.width:
                if not (regs_overlap_ok and data["registers"][j].get("allow_overlap", False)):
                    raise _fail(path, where, f"registers {address}..{address + width - 1} overlap registers[{j}] "
                                f"({other.field} at {other.address}); set allow_overlap = true on both if intended")
    if not regs:
        raise _fail(path, "registers", "a profile needs at least one register")
    return DeviceProfile(
        model=str(data["model"]), manufacturer=str(data.get("manufacturer", "")),
        description=str(data.get("description", "")), measurement=meas.name, registers=tuple(regs),
        max_block_registers=max_block, max_gap=max_gap, source=str(data.get("source", "")), path=path,
    )


def load_profile_file(path: Path | str) -> DeviceProfile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror}") from None
    return parse_profile(data, str(path))


def builtin_profile_dir() -> Path:
    return Path(str(resources.files("drivers.profiles")))


def load_profiles(extra_dirs: list[Path] | None = None) -> dict[str, DeviceProfile]:
    """All shipped profiles plus those in extra_dirs (later ones override by model name)."""
    profiles: dict[str, DeviceProfile] = {}
    for d in [builtin_profile_dir(), *(extra_dirs or [])]:
        for f in sorted(Path(d).glob("*.toml")):
            p = load_profile_file(f)
            profiles[p.model] = p
    return profiles
