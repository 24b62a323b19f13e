"""Device profiles: load-time checks name file, register and reason; golden decodes; block planning."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from drivers.modbus.blocks import ProfileDecoder, plan_blocks
from drivers.modbus.profile import ProfileError, load_profiles, parse_profile
from firmware_sim.register_map import load_register_map


def words(fmt: str, value, byte_swap=False, word_swap=False) -> list[int]:
    data = struct.pack(">" + fmt, value)
    ws = [data[i:i + 2] for i in range(0, len(data), 2)]
    if word_swap:
        ws.reverse()
    if byte_swap:
        ws = [w[::-1] for w in ws]
    return [int.from_bytes(w, "big") for w in ws]


def profile(*registers, **top):
    doc = {"model": "t", "measurement": "energy_meter", "function": "holding", "registers": list(registers)}
    doc.update(top)
    return parse_profile(doc, "t.toml")


TYPES = [("int16", "h", -1234), ("uint16", "H", 54321), ("int32", "i", -7654321), ("uint32", "I", 4_000_000_000),
         ("int64", "q", -(2**40) - 3), ("uint64", "Q", 2**63 + 5), ("float32", "f", 230.5),
         ("float64", "d", 12345.678901)]
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
# single-register types have no word order (test_profile_errors checks that one is refused)
CASES = [(t, f, v, b, w) for t, f, v in TYPES for b, w in ORDERS if struct.calcsize(f) > 2 or w == "big"]


@pytest.mark.parametrize(("rtype", "fmt", "value", "byte_order", "word_order"), CASES)
def test_golden_decode_every_type_and_order(rtype, fmt, value, byte_order, word_order):
    reg = {"field": "active_power", "address": 10, "type": rtype, "byte_order": byte_order}
    if struct.calcsize(fmt) > 2:
        reg["word_order"] = word_order
    p = profile(reg)
    blocks = plan_blocks(p.registers, 125, 0)
    raw = words(fmt, value, byte_swap=byte_order == "little", word_swap=word_order == "little")
    out = ProfileDecoder(p, blocks).decode(np.array(raw, dtype=np.uint16))
    expected = struct.unpack(">" + fmt, struct.pack(">" + fmt, value))[0]
    assert out[0] == float(expected)


@pytest.mark.parametrize("model", ["sdm630", "sdm120", "dtsu666"])
def test_shipped_profiles_decode_what_the_simulated_meter_encodes(model):
    p = load_profiles()[model]
    reg_map = load_register_map(model)
    values = {r.field: 1000.0 + 17.25 * i for i, r in enumerate(reg_map.registers)}
    blocks = plan_blocks(p.registers, p.max_block_registers, p.max_gap)
    buf = []
    for b in blocks:
        block = [0] * b.count
        for r in reg_map.registers:
            if r.function == b.function and b.address <= r.address < b.address + b.count:
                block[r.address - b.address:r.address - b.address + r.width] = r.encode(values[r.field])
        buf += block
    out = ProfileDecoder(p, blocks).decode(np.array(buf, dtype=np.uint16))
    for field, got in zip([r.field for r in p.registers], out):
        assert got == pytest.approx(values[field], rel=1e-6), field


def test_sdm630_golden_words():
    """0x4366 0x8000 is 230.5 as float32 ABCD at input register 0 (L1 voltage)."""
    p = load_profiles()["sdm630"]
    blocks = plan_blocks(p.registers, p.max_block_registers, p.max_gap)
    dec = ProfileDecoder(p, blocks)
    buf = np.zeros(dec.buffer_len, dtype=np.uint16)
    buf[0:2] = [0x4366, 0x8000]
    assert dec.decode(buf)[0] == 230.5


def test_dtsu666_scale_from_bus_capture():
    """The reference's capture: `45 00 00 00` at 0x2012 is 2048.0 raw = 204.8 W."""
    p = load_profiles()["dtsu666"]
    reg = p.register("active_power")
    sub = parse_profile({"model": "x", "measurement": "energy_meter", "registers": [
        {"field": "active_power", "address": reg.address, "type": "float32", "function": "holding", "scale": reg.scale}]}, "x")
    out = ProfileDecoder(sub, plan_blocks(sub.registers, 125, 0)).decode(np.array([0x4500, 0x0000], dtype=np.uint16))
    assert out[0] == pytest.approx(204.8)


@pytest.mark.parametrize(("reg", "top", "reason"), [
    ({"field": "active_power", "address": 0, "type": "float32", "scale": 0}, {}, "registers[0] (active_power): scale of 0"),
    ({"field": "active_power", "address": 0, "type": "int16", "word_order": "little"}, {}, "has no word order"),
    ({"field": "active_power", "address": 0, "type": "bit", "function": "coil", "byte_order": "big"}, {}, "a bit has no byte order"),
    ({"field": "active_power", "address": 0, "type": "float32", "function": "coil"}, {}, "cannot be read with function 'coil'"),
    ({"field": "active_power", "address": 0, "type": "float24"}, {}, "type 'float24' is not one of"),
    ({"field": "no_such_field", "address": 0, "type": "float32"}, {}, "field 'no_such_field' is not in measurement"),
    ({"field": "active_power", "address": 65535, "type": "float32"}, {}, "runs past register 65535"),
    ({"field": "active_power", "address": 0, "type": "float32", "unit": "kW"}, {}, "unit 'kW' differs from the schema's 'W'"),
    ({"field": "active_power", "address": 0, "type": "float32", "colour": 1}, {}, "unknown key(s) ['colour']"),
    ({"field": "active_power", "address": 40001, "type": "float32", "function": "input"}, {"addressing": "modicon"},
     "contradicts modicon number 40001"),
])
def test_profile_errors(reg, top, reason):
    with pytest.raises(ProfileError) as exc:
        profile(reg, **top)
    assert str(exc.value).startswith("t.toml: ")
    assert reason in str(exc.value)


def test_overlapping_registers_need_declaration():
    a = {"field": "active_power", "address": 0, "type": "float32"}
    b = {"field": "reactive_power", "address": 1, "type": "float32"}
    with pytest.raises(ProfileError, match=r"registers\[1\] \(reactive_power\): registers 1..2 overlap registers\[0\]"):
        profile(a, b)
    profile({**a, "allow_overlap": True}, {**b, "allow_overlap": True})


def test_one_based_and_modicon_addressing():
    p1 = profile({"field": "active_power", "address": 1, "type": "float32"}, addressing="one-based")
    assert p1.registers[0].address == 0
    p2 = profile({"field": "active_power", "address": 30073, "type": "float32"}, addressing="modicon")
    assert (p2.registers[0].function, p2.registers[0].address) == ("input", 0x48)


def test_block_planning_request_counts():
    p = load_profiles()["sdm630"]
    assert len(plan_blocks(p.registers, p.max_block_registers, max_gap=0)) == 6
    assert len(plan_blocks(p.registers, p.max_block_registers, max_gap=20)) == 3
    # the 80-register limit splits what a large gap would otherwise join
    blocks = plan_blocks(p.registers, 80, max_gap=400)
    assert all(b.count <= 80 for b in blocks) and len(blocks) == 2
    # every register is inside exactly one block
    for r in p.registers:
        assert sum(b.function == r.function and b.address <= r.address and r.address + r.width <= b.address + b.count
                   for b in blocks) == 1


def test_elevator_monitor_golden_words():
    """A car two floors below ground going down at 1.5 m/s, doors closed, someone inside, 70,000 trips."""
    p = load_profiles()["elevator_monitor"]
    assert p.measurement == "elevator"
    blocks = plan_blocks(p.registers, p.max_block_registers, p.max_gap)
    assert sorted((b.function, b.address, b.count) for b in blocks) == [("discrete", 0, 1), ("holding", 0, 8)]
    wire = {"holding": [0xFFFE, 2, 0, 0, 1, 0xFF6A, 0x0001, 0x1170], "discrete": [1]}
    out = ProfileDecoder(p, blocks).decode(np.array([w for b in blocks for w in wire[b.function]], dtype=np.uint16))
    got = dict(zip((r.field for r in p.registers), out.tolist()))
    assert got == {"floor": -2.0, "direction": 2.0, "door_state": 0.0, "in_door_zone": 0.0, "occupied": 1.0,
                   "speed": pytest.approx(-1.5), "run_count": 70000.0, "moving": 1.0}
    # the simulator side of the same file encodes the same words
    reg_map = {r.field: r for r in load_register_map("elevator_monitor").registers}
    assert reg_map["speed"].encode(-1.5) == [0xFF6A] and reg_map["run_count"].encode(70000) == [0x0001, 0x1170]


USER_PROFILE = """
model = "adl400"
manufacturer = "Acrel"
description = "A model added by a user: one file, no code"
measurement = "energy_meter"
function = "holding"
registers = [
  { field = "voltage_l1",    address = 0x0061, type = "uint16", scale = 0.1, unit = "V" },
  { field = "energy_import", address = 0x0000, type = "uint32", scale = 0.01, unit = "kWh" },
]
"""


def test_a_user_adds_a_model_by_adding_a_file(tmp_path):
    from tests.conftest import run_cli

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "adl400.toml").write_text(USER_PROFILE)
    r = run_cli("profiles", "list", "--profile-dir", str(profiles))
    assert r.returncode == 0 and "adl400" in r.stdout and "sdm630" in r.stdout
    r = run_cli("profiles", "show", "adl400", "--profile-dir", str(profiles))
    assert r.returncode == 0, r.stderr
    assert "voltage_l1" in r.stdout and "97 (0x0061)" in r.stdout and "0.1" in r.stdout
    config = tmp_path / "gw.toml"
    config.write_text(f"""
[gateway]
profile_dirs = ["{profiles}"]
[[buses]]
type = "modbus_rtu"
name = "rs485"
device = "/dev/ttyUSB0"
[[devices]]
id = "m1"
bus = "rs485"
profile = "adl400"
[[sinks]]
type = "influxdb1"
name = "local"
url = "http://127.0.0.1:8086"
database = "c"
""")
    r = run_cli("check-config", str(config))
    assert r.returncode == 0, r.stderr
    assert "1 x adl400" in r.stdout
    # a mistake in that file stops start-up with the file, the register and the reason
    (profiles / "adl400.toml").write_text(USER_PROFILE.replace("scale = 0.1", "scale = 0"))
    r = run_cli("check-config", str(config))
    assert r.returncode == 1
    assert "adl400.toml" in r.stderr and "registers[0] (voltage_l1): scale of 0" in r.stderr
