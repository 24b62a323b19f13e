"""The service harness itself: a missing binary is a clear failure, never a silent skip."""
from __future__ import annotations

import pytest

from gateway.devservices import MissingBinary, influx_ping, require_binary


def test_missing_binary_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingBinary, match=r"victoria-metrics-that-is-not-there is not installed; install it with "
                                             r"`apt-get install victoria-metrics-that-is-not-there`"):
        require_binary("victoria-metrics-that-is-not-there")


def test_private_services_answer(mosquitto, influxd):
    assert influx_ping(f"http://{influxd.host}:{influxd.port}")
    assert mosquitto.process.poll() is None and influxd.process.poll() is None
