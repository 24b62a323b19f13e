"""Configuration errors name the exact path and reason; check-config prints them all and exits 1."""
from __future__ import annotations

import textwrap

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import REPO, run_cli

VALID = """
[gateway]
site = "test-site"

[[buses]]
type = "modbus_tcp"
name = "plant-room"
host = "127.0.0.1"
port = 502

[[devices]]
id = "m1"
bus = "plant-room"
unit_id = 1
profile = "sdm630"

[[sinks]]
type = "influxdb1"
name = "local"
url = "http://127.0.0.1:8086"
database = "community"
"""


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(textwrap.dedent(text))
    return [str(i) for i in exc.value.issues]


def test_valid_config_parses():
    cfg = parse_config(VALID)
    assert cfg.devices[0].profile == "sdm630"
    assert cfg.buses[0].port == 502


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port = 502", "port = 70000"), "buses[0].port: Input should be less than or equal to 65535"),
        (("unit_id = 1", "unit_id = 1\npoll_interval_s = 0"),
         "devices[0].poll_interval_s: Input should be greater than or equal to 0.1"),
        (('bus = "plant-room"', 'bus = "rs485-9"'),
         "devices[0].bus: bus 'rs485-9' is not declared in [[buses]] (declared: plant-room)"),
        (('site = "test-site"', 'site = "test-site"\ncolour = "blue"'), "gateway.colour: unknown key"),
        (("unit_id = 1", 'unit_id = "one"'), "devices[0].unit_id: Input should be a valid integer, unable to parse string as an integer"),
        (('profile = "sdm630"', 'profile = "sdm999"'), "devices[0].profile: unknown profile 'sdm999' (known: "),
        (('type = "modbus_tcp"', 'type = "modbus_udp"'),
         "buses[0]: unknown type 'modbus_udp' (expected one of: 'modbus_tcp', 'modbus_rtu', 'dlt645_serial', 'dlt645_tcp')"),
        (('url = "http://127.0.0.1:8086"', 'url = "127.0.0.1:8086"'), "sinks[0].url: String should match pattern"),
        (('database = "community"', ""), "sinks[0].database: required key is missing"),
    ],
)
def test_each_error_names_path_and_reason(change, expected):
    old, new = change
    assert old in VALID
    found = issues_of(VALID.replace(old, new, 1))
    assert any(i.startswith(expected) for i in found), found


def test_every_problem_reported_at_once():
    text = VALID.replace("port = 502", "port = 0").replace('bus = "plant-room"', 'bus = "nowhere"')
    text += '\n[[devices]]\nid = "m1"\nbus = "plant-room"\nunit_id = 2\nprofile = "sdm120"\n'
    found = issues_of(text)
    assert "buses[0].port: Input should be greater than or equal to 1" in found
    assert any(i.startswith("devices[0].bus: bus 'nowhere'") for i in found)
    assert "devices[1].id: duplicate id 'm1'" in found


def test_duplicate_unit_id_on_a_bus():
    text = VALID + '\n[[devices]]\nid = "m2"\nbus = "plant-room"\nunit_id = 1\nprofile = "sdm120"\n'
    assert "devices[1].unit_id: unit id 1 on bus 'plant-room' is already used by devices[0]" in issues_of(text)


def test_toml_syntax_error_is_reported():
    found = issues_of("[gateway\nsite = 1")
    assert found[0].startswith("not valid TOML")


def test_check_config_cli_exit_codes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(VALID)
    r = run_cli("check-config", str(good))
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert "plant-room" in r.stdout and "1 x sdm630" in r.stdout and "series polled: 17" in r.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(VALID.replace("port = 502", "port = 70000").replace('bus = "plant-room"', 'bus = "x"'))
    r = run_cli("check-config", str(bad))
    assert r.returncode == 1
    assert "buses[0].port: Input should be less than or equal to 65535" in r.stderr
    assert "devices[0].bus: bus 'x' is not declared" in r.stderr
    assert "2 configuration error(s)" in r.stderr


def test_shipped_example_config_is_valid():
    r = run_cli("check-config", str(REPO / "gateway/examples/demo-community.toml"))
    assert r.returncode == 0, r.stderr
    assert "13 device(s)" in r.stdout


def test_example_config_is_what_the_demo_scenario_emits(tmp_path):
    """The example the demo runs and the simulated community it reads cannot drift apart."""
    import tomllib

    out = tmp_path / "emitted.toml"
    r = run_cli("sim", "--scenario", str(REPO / "firmware-sim/scenarios/demo.toml"), "--emit-config", str(out),
                "--data-dir", ".demo/data")
    assert r.returncode == 0, r.stderr
    shipped = tomllib.loads((REPO / "gateway/examples/demo-community.toml").read_text())
    assert tomllib.loads(out.read_text()) == shipped


DLT645 = VALID + """
[[buses]]
type = "dlt645_serial"
name = "rs485-2"
device = "/dev/ttyUSB1"

[[devices]]
id = "flat-1"
bus = "rs485-2"
address = "000000000101"
"""


def test_dlt645_meters_parse_with_serial_defaults():
    cfg = parse_config(DLT645)
    bus = cfg.buses[1]
    assert (bus.baudrate, bus.parity, bus.stopbits) == (2400, "E", 1)  # what Chinese meters ship with
    assert cfg.devices[1].address == "000000000101" and cfg.devices[1].profile is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('address = "000000000101"', 'address = "0101"'), "devices[1].address: String should match pattern"),
        (('address = "000000000101"', ""), "devices[1].address: a meter on DL/T 645 bus 'rs485-2' needs its 12-digit address"),
        (('address = "000000000101"', 'address = "000000000101"\nprofile = "sdm630"'),
         "devices[1].profile: 'profile' is for Modbus devices; bus 'rs485-2' is dlt645_serial"),
        (('address = "000000000101"', 'address = "000000000101"\nfields = ["energy_import", "colour"]'),
         "devices[1].fields[1]: no DL/T 645 identifier feeds field 'colour'"),
        (('id = "flat-1"', 'id = "flat-1"\nunit_id = 3'),
         "devices[1].unit_id: 'unit_id' is for Modbus devices; bus 'rs485-2' is dlt645_serial"),
        (('device = "/dev/ttyUSB1"', 'device = "/dev/ttyUSB1"\nbaudrate = 19200'), "buses[1].baudrate: Input should be"),
        (('profile = "sdm630"', 'address = "000000000001"'), "devices[0].profile: a device on Modbus bus 'plant-room' needs a profile"),
    ],
)
def test_dlt645_errors_name_path_and_reason(change, expected):
    old, new = change
    assert old in DLT645
    found = issues_of(DLT645.replace(old, new, 1))
    assert any(i.startswith(expected) for i in found), found


def test_duplicate_dlt645_address_on_one_line():
    text = DLT645 + '\n[[devices]]\nid = "flat-2"\nbus = "rs485-2"\naddress = "000000000101"\n'
    assert "devices[2].address: address 000000000101 on bus 'rs485-2' is already used by devices[1]" in issues_of(text)


def test_check_config_summarises_dlt645_lines(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(DLT645)
    r = run_cli("check-config", str(path))
    assert r.returncode == 0, r.stderr
    assert "rs485-2" in r.stdout and "dlt645_serial" in r.stdout and "/dev/ttyUSB1 2400 E1" in r.stdout
    assert "1 x dlt645, 1 x sdm630" in r.stdout
    assert "series polled: 29" in r.stdout  # 17 SDM630 registers + 12 default DL/T 645 fields
