"""DL/T 645 data identifier table and BCD with the sign-bit convention."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dlt645 import identifiers as ids
from drivers.dlt645.errors import InvalidBcdError, UnknownIdentifierError
from drivers.dlt645.identifiers import BY_DI, TABLE, bcd_decode, bcd_encode, lookup, max_count, to_fields
from pipelines.schema import ENERGY_METER

H = bytes.fromhex

WIRE_TO_SCHEMA_UNIT = {"kWh": ("kWh", 1.0), "V": ("V", 1.0), "A": ("A", 1.0), "kW": ("W", 1000.0),
                       "kvar": ("var", 1000.0), "kVA": ("VA", 1000.0), "": ("", 1.0), "Hz": ("Hz", 1.0)}


def test_every_field_exists_in_the_schema_with_a_consistent_unit():
    for row in TABLE:
        if row.field is None:
            continue
        field = ENERGY_METER.field(row.field)
        unit, factor = WIRE_TO_SCHEMA_UNIT[row.unit]
        assert field.unit == unit, row
        assert row.to_field == factor, row


def test_the_fields_the_brief_asks_for_are_covered():
    required = {"energy_import", "energy_export", "energy_total", "active_power", "frequency",
                *(f"{q}_{p}" for q in ("voltage", "current", "active_power") for p in ("l1", "l2", "l3"))}
    assert required <= set(ids.BY_FIELD)
    assert set(ids.DEFAULT_POLL) == {row.di for row in ids.BY_FIELD.values()}
    # counters in the schema are the energy registers
    for f, row in ids.BY_FIELD.items():
        assert (ENERGY_METER.field(f).kind == "counter") == (row.unit == "kWh")


@pytest.mark.parametrize(
    "di, name, length, decimals, signed, unit, fmt",
    [
        (0x00000000, "combined_active_energy_total", 4, 2, True, "kWh", "XXXXXX.XX"),
        (0x00010000, "forward_active_energy_total", 4, 2, False, "kWh", "XXXXXX.XX"),
        (0x00020000, "reverse_active_energy_total", 4, 2, False, "kWh", "XXXXXX.XX"),
        (0x02010100, "voltage_a", 2, 1, False, "V", "XXX.X"),
        (0x02010300, "voltage_c", 2, 1, False, "V", "XXX.X"),
        (0x02020200, "current_b", 3, 3, True, "A", "XXX.XXX"),
        (0x02030000, "active_power_total", 3, 4, True, "kW", "XX.XXXX"),
        (0x02030100, "active_power_a", 3, 4, True, "kW", "XX.XXXX"),
        (0x02060000, "power_factor_total", 2, 3, True, "", "X.XXX"),
        (0x02800002, "frequency", 2, 2, False, "Hz", "XX.XX"),
    ],
)
def test_table_rows_match_the_reference(di, name, length, decimals, signed, unit, fmt):
    row = BY_DI[di]
    assert (row.name, row.length, row.decimals, row.signed, row.unit, row.format) == (
        name, length, decimals, signed, unit, fmt)


@pytest.mark.parametrize(
    "di, value, wire",
    [
        (0x00010000, 0.04, "04 00 00 00"),  # reference example 3
        (0x00010000, 123456.78, "78 56 34 12"),
        (0x02030000, -1.2345, "45 23 81"),  # sign in the top bit of the last byte
        (0x02030000, 1.2345, "45 23 01"),
        (0x02010100, 229.7, "97 22"),
        (0x02020100, -5.123, "23 51 80"),
        (0x02020100, 512.3, "00 23 51"),
        (0x02800002, 50.0, "00 50"),
        (0x02060000, -0.5, "00 85"),
        (0x00000000, -12.5, "50 12 00 80"),
    ],
)
def test_bcd_golden(di, value, wire):
    row = BY_DI[di]
    assert row.encode(value) == H(wire)
    assert row.decode(H(wire)) == value


def test_bcd_rejects_invalid_input():
    with pytest.raises(InvalidBcdError, match="not BCD"):
        bcd_decode(H("0A 00"), 1, False)
    with pytest.raises(InvalidBcdError, match="not BCD"):
        BY_DI[0x02010100].decode(H("FF FF"))  # the "not available" filler some meters send
    with pytest.raises(InvalidBcdError, match="value bytes"):
        BY_DI[0x02010100].decode(H("00 00 00"))
    with pytest.raises(InvalidBcdError, match="does not fit"):
        bcd_encode(80.0, 3, 4, True)  # signed XX.XXXX stops at 79.9999
    assert bcd_encode(99.9999, 3, 4, False) == H("99 99 99")
    with pytest.raises(InvalidBcdError, match="negative"):
        bcd_encode(-1.0, 2, 1, False)
    with pytest.raises(InvalidBcdError):
        bcd_encode(float("nan"), 2, 1, False)
    # "negative zero" on the wire decodes to 0
    assert bcd_decode(H("00 80"), 1, True) == 0.0


def test_lookup_and_field_mapping():
    assert lookup(0x00010000) is lookup("forward_active_energy_total") is lookup("00010000") is lookup("0001 0000")
    with pytest.raises(UnknownIdentifierError, match="not in the table"):
        lookup(0x02990000)
    with pytest.raises(UnknownIdentifierError):
        lookup("no_such_name")
    fields = to_fields({0x02030000: -1.2345, 0x00010000: 10.5, 0x020C0100: 400.0})
    assert fields == {"active_power": pytest.approx(-1234.5), "energy_import": 10.5}
    assert ids.identifiers_for_fields(["energy_import", "frequency"]) == (0x00010000, 0x02800002)


@st.composite
def row_and_count(draw):
    row = draw(st.sampled_from(TABLE))
    top = max_count(row.length, row.signed)
    n = draw(st.integers(-top if row.signed else 0, top))
    return row, n


@given(row_and_count())
def test_every_identifier_round_trips_values(case):
    row, n = case
    value = n / 10**row.decimals
    raw = row.encode(value)
    assert len(raw) == row.length
    assert row.decode(raw) == value
    assert abs(value) <= row.max_magnitude


@st.composite
def row_and_raw(draw):
    row = draw(st.sampled_from(TABLE))
    digits = draw(st.lists(st.integers(0, 9), min_size=2 * row.length, max_size=2 * row.length))
    raw = bytearray(digits[i] << 4 | digits[i + 1] for i in range(0, len(digits), 2))
    if row.signed:
        raw[-1] &= 0x7F  # keep the top digit 0..7
        if draw(st.booleans()) and any(raw):
            raw[-1] |= 0x80
    return row, bytes(raw)


@given(row_and_raw())
def test_every_identifier_round_trips_wire_bytes(case):
    row, raw = case
    assert row.encode(row.decode(raw)) == raw
