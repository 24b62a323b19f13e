"""DL/T 645-2007 data identifiers as data: one table row per identifier, never an if chain.

Each row: DI (DI3 DI2 DI1 DI0 as one number, sent DI0 first), name, the ENERGY_METER field it
feeds (None when the schema has no such field), value length in bytes, decimals, signed flag,
the unit on the wire, and the factor from the wire unit to the schema unit (kW -> W is 1000).
Formats are from /work/shared/reference/dlt645.md section 5.

Values are packed BCD, least significant byte first. For a signed identifier the most
significant bit of the most significant byte (the last byte on the wire) is the sign, 1 =
negative, and the remaining bits are the BCD magnitude (reference section 4), so a signed
3-byte XX.XXXX ranges over +-79.9999.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from drivers.dlt645.errors import InvalidBcdError, UnknownIdentifierError


@dataclass(frozen=True, slots=True)
class DataIdentifier:
    di: int
    name: str
    field: str | None
    length: int
    decimals: int
    signed: bool
    unit: str
    to_field: float = 1.0  # wire unit -> schema field unit

    @property
    def format(self) -> str:
        """The standard's notation, e.g. XXXXXX.XX."""
        digits = 2 * self.length
        whole = "X" * (digits - self.decimals)
        return whole + ("." + "X" * self.decimals if self.decimals else "")

    @property
    def max_magnitude(self) -> float:
        return max_count(self.length, self.signed) / 10**self.decimals

    def decode(self, raw: bytes) -> float:
        """Value bytes (LSB first) -> value in the wire unit (kWh, V, A, kW, Hz...)."""
        if len(raw) != self.length:
            raise InvalidBcdError(f"DI {self.di:08X} ({self.name}) has {self.length} value bytes, got {len(raw)}")
        return bcd_decode(raw, self.decimals, self.signed)

    def encode(self, value: float) -> bytes:
        """Value in the wire unit -> value bytes (LSB first)."""
        return bcd_encode(value, self.length, self.decimals, self.signed)

    def field_value(self, value: float) -> float:
        """A decoded value in the schema field's unit."""
        return value * self.to_field


# ---------------------------------------------------------------------------------------------
# BCD with the sign-bit convention


def max_count(length: int, signed: bool) -> int:
    """Largest integer (before the decimal point is placed) ``length`` BCD bytes can hold."""
    if signed:
        return 8 * 10 ** (2 * length - 1) - 1  # top digit 0..7: its high bit is the sign
    return 10 ** (2 * length) - 1


def bcd_decode(raw: bytes, decimals: int, signed: bool) -> float:
    """Packed BCD, least significant byte first -> float. Raises InvalidBcdError on a nibble > 9."""
    if not raw:
        raise InvalidBcdError("no value bytes")
    b = bytearray(raw)
    negative = False
    if signed and b[-1] & 0x80:
        negative = True
        b[-1] &= 0x7F
    n = 0
    for byte in reversed(b):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise InvalidBcdError(f"not BCD: byte 0x{byte:02X} in {bytes(raw).hex(' ')}")
        n = n * 100 + hi * 10 + lo
    value = n / 10**decimals if decimals else float(n)
    return -value if negative and n else value


def bcd_encode(value: float, length: int, decimals: int, signed: bool) -> bytes:
    """float -> packed BCD, least significant byte first, rounded to ``decimals``."""
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidBcdError(f"cannot encode {value} as BCD")
    n = round(abs(value) * 10**decimals)
    if n > max_count(length, signed):
        raise InvalidBcdError(
            f"{value} does not fit {length} BCD bytes with {decimals} decimals{' (signed)' if signed else ''}"
        )
    if value < 0 and n and not signed:
        raise InvalidBcdError(f"{value} is negative but the format is unsigned")
    digits = f"{n:0{2 * length}d}"
    out = bytearray(int(digits[i : i + 2], 16) for i in range(2 * length - 2, -2, -2))
    if value < 0 and n:
        out[-1] |= 0x80
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# The table

_PHASE_FIELDS = (("a", "l1"), ("b", "l2"), ("c", "l3"))

#   DI           name                               field              bytes dec signed unit   to_field
_ROWS: tuple[tuple, ...] = (
    # Energy, XXXXXX.XX kWh. Combined active energy is the configured combination of import and
    # export (import + export by default, hence energy_total); [P1] treats it as signed.
    (0x00000000, "combined_active_energy_total", "energy_total", 4, 2, True, "kWh", 1.0),
    *((0x00000000 | t << 8, f"combined_active_energy_tariff{t}", None, 4, 2, True, "kWh", 1.0) for t in range(1, 5)),
    (0x00010000, "forward_active_energy_total", "energy_import", 4, 2, False, "kWh", 1.0),
    *((0x00010000 | t << 8, f"forward_active_energy_tariff{t}", None, 4, 2, False, "kWh", 1.0) for t in range(1, 5)),
    (0x00020000, "reverse_active_energy_total", "energy_export", 4, 2, False, "kWh", 1.0),
    *((0x00020000 | t << 8, f"reverse_active_energy_tariff{t}", None, 4, 2, False, "kWh", 1.0) for t in range(1, 5)),
    (0x00030000, "combined_reactive_energy_1_total", None, 4, 2, True, "kvarh", 1.0),
    (0x00040000, "combined_reactive_energy_2_total", None, 4, 2, True, "kvarh", 1.0),
    # Instantaneous values.
    *((0x02010000 | i << 8, f"voltage_{p}", f"voltage_{f}", 2, 1, False, "V", 1.0)
      for i, (p, f) in enumerate(_PHASE_FIELDS, 1)),
    *((0x02020000 | i << 8, f"current_{p}", f"current_{f}", 3, 3, True, "A", 1.0)
      for i, (p, f) in enumerate(_PHASE_FIELDS, 1)),
    (0x02030000, "active_power_total", "active_power", 3, 4, True, "kW", 1000.0),
    *((0x02030000 | i << 8, f"active_power_{p}", f"active_power_{f}", 3, 4, True, "kW", 1000.0)
      for i, (p, f) in enumerate(_PHASE_FIELDS, 1)),
    # Reactive power changes sign with the quadrant; signed as in [P1].
    (0x02040000, "reactive_power_total", "reactive_power", 3, 4, True, "kvar", 1000.0),
    *((0x02040000 | i << 8, f"reactive_power_{p}", None, 3, 4, True, "kvar", 1000.0)
      for i, (p, _) in enumerate(_PHASE_FIELDS, 1)),
    # Apparent power and neutral current are magnitudes: unsigned, as the reference lists them.
    (0x02050000, "apparent_power_total", "apparent_power", 3, 4, False, "kVA", 1000.0),
    *((0x02050000 | i << 8, f"apparent_power_{p}", None, 3, 4, False, "kVA", 1000.0)
      for i, (p, _) in enumerate(_PHASE_FIELDS, 1)),
    (0x02060000, "power_factor_total", "power_factor", 2, 3, True, "", 1.0),
    *((0x02060000 | i << 8, f"power_factor_{p}", None, 2, 3, True, "", 1.0)
      for i, (p, _) in enumerate(_PHASE_FIELDS, 1)),
    *((0x020C0000 | i << 8, f"line_voltage_{pair}", None, 2, 1, False, "V", 1.0)
      for i, pair in enumerate(("ab", "bc", "ca"), 1)),
    (0x02800001, "neutral_current", None, 3, 3, False, "A", 1.0),
    (0x02800002, "frequency", "frequency", 2, 2, False, "Hz", 1.0),
    # Signed as in [P1] (the reference does not say): a meter box in a northern winter goes below 0.
    (0x02800007, "meter_temperature", None, 2, 1, True, "°C", 1.0),
)

TABLE: tuple[DataIdentifier, ...] = tuple(DataIdentifier(*row) for row in _ROWS)
BY_DI: dict[int, DataIdentifier] = {d.di: d for d in TABLE}
BY_NAME: dict[str, DataIdentifier] = {d.name: d for d in TABLE}
BY_FIELD: dict[str, DataIdentifier] = {d.field: d for d in TABLE if d.field is not None}
assert len(BY_DI) == len(TABLE) and len(BY_NAME) == len(TABLE), "duplicate DI or name in the DL/T 645 table"

# Handy names for the common ones.
COMBINED_ACTIVE_ENERGY = 0x00000000
FORWARD_ACTIVE_ENERGY = 0x00010000
REVERSE_ACTIVE_ENERGY = 0x00020000
VOLTAGE_A, VOLTAGE_B, VOLTAGE_C = 0x02010100, 0x02010200, 0x02010300
CURRENT_A, CURRENT_B, CURRENT_C = 0x02020100, 0x02020200, 0x02020300
ACTIVE_POWER_TOTAL = 0x02030000
ACTIVE_POWER_A, ACTIVE_POWER_B, ACTIVE_POWER_C = 0x02030100, 0x02030200, 0x02030300
FREQUENCY = 0x02800002

# What a three-phase residential poll asks for by default (every identifier that feeds a field).
DEFAULT_POLL: tuple[int, ...] = tuple(d.di for d in TABLE if d.field is not None)


def lookup(di: int | str | DataIdentifier) -> DataIdentifier:
    """A table row by DI number, by name, by hex string ("00010000"), or a row passed through."""
    if isinstance(di, DataIdentifier):
        return di
    if isinstance(di, str):
        row = BY_NAME.get(di)
        if row is not None:
            return row
        try:
            di = int(di.replace(" ", ""), 16)
        except ValueError:
            raise UnknownIdentifierError(f"no DL/T 645 identifier named {di!r}") from None
    row = BY_DI.get(di)
    if row is None:
        raise UnknownIdentifierError(f"DL/T 645 identifier {di:08X} is not in the table (drivers/dlt645/identifiers.py)")
    return row


def to_fields(readings: Mapping[int, float]) -> dict[str, float]:
    """{DI: value in wire unit} -> {ENERGY_METER field: value in field unit}; DIs without a field are left out."""
    out: dict[str, float] = {}
    for di, value in readings.items():
        row = BY_DI.get(di)
        if row is not None and row.field is not None:
            out[row.field] = row.field_value(value)
    return out


def identifiers_for_fields(fields: Iterable[str]) -> tuple[int, ...]:
    """The DIs to poll for the given ENERGY_METER fields."""
    out = []
    for f in fields:
        row = BY_FIELD.get(f)
        if row is None:
            raise UnknownIdentifierError(f"no DL/T 645 identifier feeds field {f!r}; known: {sorted(BY_FIELD)}")
        out.append(row.di)
    return tuple(out)
