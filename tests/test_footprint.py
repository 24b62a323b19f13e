"""What a gateway loads depends on its configuration: an MQTT-only gateway never imports the Modbus or
DL/T 645 drivers (pymodbus alone is ~7 MiB resident); one with a Modbus bus does."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MQTT_ONLY = """
[gateway]
site = "s"
[mqtt]
host = "127.0.0.1"
port = 1
[[subscriptions]]
topic = "t/+/telemetry"
decoder = "json"
[subscriptions.mapping]
measurement = "energy_meter"
device_from_topic = 1
fields.active_power = { path = "p" }
[[sinks]]
type = "influxdb1"
name = "local"
url = "http://127.0.0.1:1"
database = "d"
"""

WITH_MODBUS = MQTT_ONLY + """
[[buses]]
type = "modbus_tcp"
name = "plant"
host = "127.0.0.1"
port = 1
[[devices]]
id = "m-1"
bus = "plant"
profile = "sdm630"
building = "B1"
unit_id = 1
"""


def _modules_after_start(config: str, tmp_path: Path) -> set[str]:
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    code = textwrap.dedent(f"""
        import asyncio, sys
        from gateway.config import load_config
        from gateway.runtime import Gateway

        async def build():  # buses are made in the event loop they will run in
            Gateway(load_config({str(path)!r}), data_dir={str(tmp_path / "data")!r})

        asyncio.run(build())
        print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} | set(sys.modules))))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def test_an_mqtt_only_gateway_does_not_load_the_serial_and_modbus_drivers(tmp_path: Path) -> None:
    loaded = _modules_after_start(MQTT_ONLY, tmp_path)
    assert "gateway.runtime" in loaded
    assert not {"pymodbus", "drivers.modbus.poller", "drivers.dlt645.client", "drivers.dlt645.poller"} & loaded


def test_a_gateway_with_a_modbus_bus_loads_them(tmp_path: Path) -> None:
    loaded = _modules_after_start(WITH_MODBUS, tmp_path)
    assert {"pymodbus", "drivers.modbus.poller"} <= loaded
