"""Scenario files: every section, the errors (each with the path of its key), groups placed on many
ports, the shipped scenarios, the gateway configuration they emit, the clock file and the CLI.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from datetime import datetime

import pytest
import tomli_w

from drivers.clock import SimClock as GatewaySimClock
from firmware_sim.clock import SimClock
from firmware_sim.faults import KINDS_OF_DEVICE, SERIES_OF
from firmware_sim.scenario import (
    ScenarioError,
    gateway_config,
    load_scenario,
    parse_duration,
    parse_scenario,
)
from firmware_sim.wire import MqttMessage
from gateway.config import parse_config
from gateway.devservices import free_port
from tests.conftest import REPO

SCENARIOS = REPO / "firmware-sim" / "scenarios"
T0 = datetime.fromisoformat("2026-03-02T07:00:00+08:00").timestamp()


def errors_of(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "s.toml")
    return e.value.issues


def test_type_errors_name_the_key():
    issues = errors_of("""
[sim]
start = 2026-03-02T07:00:00
speed = 0
[modbus_tcp]
port = 70000
[[tcp_endpoints]]
name = "t"
ports = "100-90"
[[meters]]
device = "a"
unit_id = 300
profile = "sdm120"
building = "B"
colour = "red"
[[faults]]
device = "a"
kind = "gremlin"
at = "1x"
duration = 0
""")
    assert "sim.start: start needs a UTC offset, e.g. 2026-03-02T07:00:00+08:00" in issues
    assert any(i.startswith("sim.speed: Input should be greater than 0") for i in issues)
    assert "modbus_tcp.port: Input should be less than or equal to 65535" in issues
    assert "tcp_endpoints[0]: ports '100-90': need 1 <= first <= last <= 65535" in issues
    assert "meters[0].unit_id: Input should be less than or equal to 247" in issues
    assert "meters[0].colour: unknown key" in issues
    assert any(i.startswith("faults[0].kind: Input should be 'spike'") for i in issues)
    assert any(i.startswith("faults[0].at: '1x' is neither a time after the start") for i in issues)
    assert "faults[0].duration: the duration must be > 0" in issues
    # keys that take one of several shapes say so once, at the key's own path
    issues = errors_of("""
[[tcp_endpoints]]
name = "t"
ports = [15300, 0]
[[faults]]
device = "a"
kind = "spike"
at = [1]
duration = "x"
""")
    assert issues == [
        "tcp_endpoints[0].ports: ports[1] = 0 is not a port (1..65535)",
        "faults[0].at: expected seconds after the start (90), a time after the start (\"1h30m\") or an absolute "
        "time (2026-03-02T08:00:00+08:00), got [1]",
        "faults[0].duration: 'x' is not a duration like 90s, 15m, 1h30m or 2d",
    ]


def test_cross_references_name_the_key():
    # type errors come first: cross-references are checked once every value has the right type
    issues = errors_of("""
[[serial_lines]]
name = "dlt"
protocol = "dlt645"
baudrate = 19200
[[meters]]
device = "x"
bus = "nope"
building = "B"
""")
    assert issues == ["serial_lines[0]: DL/T 645 meters run at 1200, 2400, 4800 or 9600 baud"]
    assert errors_of("""
[[tcp_endpoints]]
name = "t"
port = 7000
[[tcp_endpoints]]
name = "t"
port = 7000
""") == ["tcp_endpoints[1].name: another endpoint is also named 't'",
         "tcp_endpoints[1]: port 7000 on 127.0.0.1 is already used by endpoint 't'"]
    issues = errors_of("""
[modbus_tcp]
port = 7000
[[tcp_endpoints]]
name = "t"
ports = [7000, 7001]
[[serial_lines]]
name = "rtu"
protocol = "modbus_rtu"
[[meters]]
device = "a"
unit_id = 3
profile = "sdm999"
building = "B"
[[meters]]
device = "b"
bus = "nope"
building = "B"
[[meters]]
device = "c"
bus = "rtu"
unit_id = 4
profile = "sdm120"
address = "000000000001"
building = "B"
[[meters]]
device = "d"
unit_id = 4
profile = "sdm120"
building = "B"
[[meters]]
device = "e"
unit_id = 4
profile = "sdm630"
building = "B"
[[parking]]
dev_eui = "a840410001810001"
bay = "P1"
[[faults]]
device = "zz"
kind = "spike"
at = "1h"
duration = 10
[[faults]]
device = "a840410001810001"
kind = "spike"
at = 5
duration = "1h"
[[faults]]
device = "a840410001810001"
kind = "fire_lane"
at = 5
duration = "1h"
""")
    assert issues == [
        "tcp_endpoints[0]: port 7000 on 127.0.0.1 is already used by endpoint 'plant-room'",
        "meters[0].profile: unknown profile 'sdm999' (known: dtsu666, elevator_monitor, sdm120, sdm630)",
        "meters[1].bus: no tcp endpoint or serial line named 'nope' (declared: plant-room, rtu, t)",
        "meters[2].address: 'address' is for DL/T 645 meters; bus 'rtu' is modbus_rtu",
        "meters[4].unit_id: unit id 4 on port 7000 of 'plant-room' is already used",
        "mqtt: parking sensors, elevators and cameras need an [mqtt] broker",
        "faults[0].device: no device 'zz' in the scenario (a meter's device, a parking sensor's dev_eui, an "
        "elevator_id or a camera's device)",
        "faults[1].kind: 'spike' does not apply to 'a840410001810001', a parking sensor (it takes: offline, "
        "malformed_payload, clock_skew, fire_lane)",
        "faults[2].device: sensor a840410001810001 is in zone 'general': a fire_lane fault needs a bay with "
        "zone = \"fire_lane\"",
    ]


def test_lift_faults_must_fit_the_lift():
    issues = errors_of("""
[mqtt]
port = 1883
[[elevators]]
elevator_id = "L1"
building = "B"
[[faults]]
device = "L1"
kind = "door_open_while_moving"
at = "1h"
duration = 2
[[faults]]
device = "L1"
kind = "trapped_passenger"
at = "1h1m"
duration = "10m"
[[faults]]
device = "L1"
kind = "crowding"
at = "2h"
duration = "10m"
""")
    assert issues == [
        "faults[0].duration: the car needs at least 3.9 s to creep one floor",
        "faults[1].at: overlaps faults[0] on elevator 'L1' (leave a minute or more between two forced faults "
        "of one lift)",
        "faults[2].kind: 'crowding' does not apply to 'L1', an elevator (it takes: offline, malformed_payload, "
        "clock_skew, trapped_passenger, door_open_while_moving)",
    ]


def test_file_errors(tmp_path):
    with pytest.raises(ScenarioError, match="not valid TOML"):
        parse_scenario("[sim\n", "x.toml")
    with pytest.raises(ScenarioError, match="cannot read the file"):
        load_scenario(tmp_path / "missing.toml")


def test_fault_times_relative_or_absolute():
    s = parse_scenario("""
[sim]
start = 2026-03-02T07:00:00+08:00
[modbus_tcp]
port = 7000
[[meters]]
device = "m"
unit_id = 1
profile = "sdm120"
building = "B"
[[faults]]
device = "m"
kind = "spike"
at = 90
duration = "1m30s"
[[faults]]
device = "m"
kind = "level_shift"
at = "1h30m"
duration = 60
[[faults]]
device = "m"
kind = "drift"
at = 2026-03-02T09:00:00+08:00
duration = "2h"
[[faults]]
device = "m"
kind = "stuck"
at = "2026-03-02T01:30:00Z"
duration = "1d"
""")
    start = s.sim.start.timestamp()
    assert [f.start_s(start) - T0 for f in s.faults] == [90, 5400, 7200, 9000]
    assert [f.duration_s for f in s.faults] == [90, 60, 7200, 86400]
    assert [f.magnitude_value for f in s.faults] == [6.0, 3000.0, 900.0, 0.0]  # the kinds' defaults
    assert parse_duration("2d1h1m1.5s") == 2 * 86400 + 3600 + 60 + 1.5
    with pytest.raises(ValueError):
        parse_duration("1 h")


def test_groups_fill_many_ports_247_unit_ids_each():
    s = parse_scenario("""
[[tcp_endpoints]]
name = "plant"
ports = "15300-15309"
[[meters]]
device = "first"
bus = "plant"
unit_id = 1
port = 15301
profile = "sdm630"
building = "B0"
[[meter_groups]]
prefix = "flat"
count = 2000
bus = "plant"
profiles = ["sdm120", "sdm630"]
buildings = ["B1", "B2", "B3", "B4"]
[[serial_lines]]
name = "line"
protocol = "dlt645"
[[meter_groups]]
prefix = "old"
count = 3
bus = "line"
first_address = "000000000099"
buildings = ["B9"]
""")
    meters = s.all_meters()
    assert len(meters) == 2004 and s.device_count() == 2004
    flats = [pm for pm in meters if pm.meter.device.startswith("flat")]
    slots = {(pm.port, pm.meter.unit_id) for pm in meters if pm.protocol == "modbus_tcp"}
    assert len(slots) == 2001 and all(1 <= u <= 247 for _, u in slots)
    assert flats[0].meter.device == "flat-0001" and (flats[0].port, flats[0].meter.unit_id) == (15300, 1)
    assert (flats[247].port, flats[247].meter.unit_id) == (15301, 2)  # unit 1 of 15301 was taken by "first"
    assert [pm.meter.profile for pm in flats[:3]] == ["sdm120", "sdm630", "sdm120"]
    assert [pm.meter.building for pm in flats[::500]] == ["B1", "B2", "B3", "B4"]
    assert [pm.meter.address for pm in meters[-3:]] == ["000000000099", "000000000100", "000000000101"]
    cfg = gateway_config(s, "http://127.0.0.1:8086", "db", "/tmp/gw")
    buses = {b["name"]: b for b in cfg["buses"]}
    assert sorted(b for b in buses if b.startswith("plant")) == [f"plant-{p}" for p in range(15300, 15309)]
    assert buses["plant-15305"]["port"] == 15305
    parse_config(tomli_w.dumps(cfg))  # the gateway takes it as it is
    # ten ports hold 2,470 meters; one unit id is taken by a meter of its own
    with pytest.raises(ScenarioError, match=r"meter_groups\[0\]\.count: bus 'plant' has 2469 free unit ids"):
        parse_scenario("""
[[tcp_endpoints]]
name = "plant"
ports = "15300-15309"
[[meters]]
device = "x"
bus = "plant"
unit_id = 1
profile = "sdm120"
building = "B"
[[meter_groups]]
prefix = "flat"
count = 2500
bus = "plant"
profiles = ["sdm120"]
buildings = ["B1"]
""")


def test_shipped_scenarios_load_and_emit_what_the_gateway_accepts(tmp_path):
    sizes = {}
    for name in ("small.toml", "demo.toml", "large.toml", "faults.toml"):
        s = load_scenario(SCENARIOS / name)
        sizes[name] = s.device_count()
        cfg = gateway_config(s, "http://127.0.0.1:8086", "db", str(tmp_path / "gw"), sim_dir=tmp_path / "sim")
        parse_config(tomli_w.dumps(cfg))
    assert sizes["large.toml"] >= 5000
    assert sizes["small.toml"] == 15 and sizes["faults.toml"] == 21
    large = load_scenario(SCENARIOS / "large.toml")
    types = {t: list(large.device_types().values()).count(t) for t in set(large.device_types().values())}
    assert types == {"modbus_tcp_meter": 4460, "modbus_rtu_meter": 32, "dlt645_meter": 16, "parking": 620,
                     "elevator": 40, "camera": 6}
    # the fault scenario: every kind at least three times, and every device type has faults
    faults = load_scenario(SCENARIOS / "faults.toml")
    kinds = [f.kind for f in faults.faults]
    assert {k for k in SERIES_OF if kinds.count(k) >= 3} == set(SERIES_OF)
    assert {faults.device_types()[f.device] for f in faults.faults} == set(KINDS_OF_DEVICE)


def test_emitted_config_serial_lines_pv_and_clock(tmp_path):
    s = load_scenario(SCENARIOS / "small.toml")
    cfg = gateway_config(s, "http://127.0.0.1:8086", "db", "/tmp/gw", sim_dir=tmp_path)
    buses = {b["name"]: b for b in cfg["buses"]}
    assert buses["rs485-rtu"] == {"type": "modbus_rtu", "name": "rs485-rtu", "device": str(tmp_path / "rs485-rtu.gateway"),
                                  "baudrate": 9600, "parity": "N", "stopbits": 1, "timeout_s": 0.5}
    assert buses["rs485-dlt645"]["type"] == "dlt645_serial" and buses["rs485-dlt645"]["parity"] == "E"
    devices = {d["id"]: d for d in cfg["devices"]}
    assert devices["s1-pv"]["pv"] is True and "pv" not in devices["s1-101"]
    assert devices["s2-201"] == {"id": "s2-201", "bus": "rs485-dlt645", "address": "000000000201",
                                 "fields": ["energy_import", "energy_total", "active_power", "voltage_l1",
                                            "current_l1", "frequency"], "building": "S2", "poll_interval_s": 2.0}
    assert devices["s2-101"]["unit_id"] == 1 and devices["s2-101"]["bus"] == "rs485-rtu"
    assert "sim_clock_file" not in cfg["gateway"]  # speed 1 from now: the devices' time is the system clock
    with_clock = gateway_config(s, "http://127.0.0.1:8086", "db", "/tmp/gw", sim_dir=tmp_path, clock_file=True)
    assert with_clock["gateway"]["sim_clock_file"] == str(tmp_path / "clock.json")
    # a scenario that starts at a given time (or runs faster) always tells the gateway to follow its clock
    faults = load_scenario(SCENARIOS / "faults.toml")
    assert "sim_clock_file" in gateway_config(faults, "http://x:1", "db", "/tmp/gw")["gateway"]


def test_clock_file_is_what_the_gateway_reads(tmp_path):
    sim = SimClock(int(T0 * 1e9), 60.0)
    sim.write(tmp_path / "clock.json")
    gw = GatewaySimClock.from_file(tmp_path / "clock.json")
    assert (gw.wall_ns, gw.sim_ns, gw.speed) == (sim.wall_ns, sim.sim_ns, 60.0)
    assert abs(gw.now_ns() - sim.now_ns()) < 60 * 10**7  # both read the same simulated time (within 10 ms wall)
    assert sim.wall_seconds_until(sim.now_s() + 60) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="speed must be > 0"):
        SimClock(0, 0.0)


def test_a_skewed_device_restamps_every_time_in_its_payload():
    msg = MqttMessage("cameras/c/peopleCounting", {"dateTime": "x", "peopleCounting": {"RealTime": {"time": "x"}}},
                      1_772_406_000_000, "c", "people_counter", {}, {}, (("dateTime",), ("peopleCounting", "RealTime", "time")))
    later = msg.restamped(3 * 3_600_000)
    assert later.t_ms == msg.t_ms + 3 * 3_600_000
    assert later.doc["dateTime"] == later.doc["peopleCounting"]["RealTime"]["time"] == "2026-03-02T10:00:00.000+08:00"
    assert msg.doc["dateTime"] == "x"  # the original is untouched


def run_sim(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware_sim", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_reports_scenario_errors_and_a_missing_socat(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[modbus_tcp]\nport = 7000\n[[meters]]\ndevice = "a"\nunit_id = 999\nprofile = "sdm120"\n'
                   'building = "B"\n')
    r = run_sim("--scenario", str(bad), "--emit-config", str(tmp_path / "x.toml"))
    assert r.returncode == 1
    assert f"{bad}: 1 scenario error(s)" in r.stderr and "meters[0].unit_id: Input should be less" in r.stderr
    data = tomllib.loads((SCENARIOS / "small.toml").read_text())
    data["sim"]["data_dir"] = str(tmp_path / "sim")
    path = tmp_path / "small.toml"
    path.write_text(tomli_w.dumps(data))
    env = {**os.environ, "PATH": str(tmp_path / "no-such-bin")}  # no socat anywhere on it
    r = run_sim("--scenario", str(path), "--duration", "1", env=env)
    assert r.returncode == 1
    assert "socat is not installed" in r.stderr and "apt-get install socat" in r.stderr
    r = run_sim("--scenario", str(path), "--speed", "-2", "--emit-config", str(tmp_path / "x.toml"))
    assert r.returncode == 2 and "--speed -2.0: must be > 0" in r.stderr


def test_cli_emits_the_clock_file_setting_with_speed(tmp_path):
    out = tmp_path / "gw.toml"
    r = run_sim("--scenario", str(SCENARIOS / "small.toml"), "--emit-config", str(out), "--speed", "60",
                "--sim-dir", str(tmp_path / "sim"))
    assert r.returncode == 0, r.stderr
    cfg = tomllib.loads(out.read_text())
    assert cfg["gateway"]["sim_clock_file"] == str(tmp_path / "sim" / "clock.json")
    assert {b["name"]: b["device"] for b in cfg["buses"] if "device" in b} == {
        "rs485-rtu": str(tmp_path / "sim" / "rs485-rtu.gateway"),
        "rs485-dlt645": str(tmp_path / "sim" / "rs485-dlt645.gateway")}


def test_a_run_makes_its_ptys_and_cleans_up_after_itself(tmp_path):
    """The simulator makes the pty pair with socat, writes its clock (accelerated: a gateway must
    follow it) and ground truth, and on SIGTERM leaves no socat, no links and no clock file behind."""
    data = tomllib.loads((SCENARIOS / "small.toml").read_text())
    data["sim"]["data_dir"] = str(tmp_path / "sim")
    data["modbus_tcp"]["port"] = free_port()
    del data["parking"], data["elevators"], data["cameras"], data["mqtt"]
    data["faults"] = [{"device": "s2-101", "kind": "crc_error", "at": "1m", "duration": "2m"}]
    path = tmp_path / "small.toml"
    path.write_text(tomli_w.dumps(data))
    proc = subprocess.Popen([sys.executable, "-m", "firmware_sim", "--scenario", str(path), "--speed", "10"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sim_dir = tmp_path / "sim"
    try:
        deadline = time.monotonic() + 30
        while not (sim_dir / "clock.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        for line in ("rs485-rtu", "rs485-dlt645"):
            assert os.path.realpath(sim_dir / f"{line}.gateway").startswith("/dev/pts/")
            assert os.path.realpath(sim_dir / f"{line}.device").startswith("/dev/pts/")
        truth = (sim_dir / "ground-truth.jsonl").read_text().splitlines()
        assert len(truth) == 1 and '"kind": "crc_error"' in truth[0] and '"device_type": "modbus_rtu_meter"' in truth[0]
        socats = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid]
        assert len(socats) == 2
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    assert not (sim_dir / "clock.json").exists()
    assert not any(os.path.lexists(sim_dir / f"{line}.{end}") for line in ("rs485-rtu", "rs485-dlt645")
                   for end in ("gateway", "device"))
    assert all(not os.path.exists(f"/proc/{p}") or _state(p) == "Z" for p in socats)


def _parent(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_firmware_sim_imports_nothing_of_the_gateway():
    code = ("import sys, firmware_sim.runner, firmware_sim.cli, firmware_sim.scenario, firmware_sim.serial_link, "
            "firmware_sim.clock; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gateway', 'pipelines', 'drivers')); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
