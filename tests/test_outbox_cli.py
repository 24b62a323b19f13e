"""`cgw outbox status` and `cgw outbox deadletter` read what the outbox file says, next to a gateway."""
from __future__ import annotations

import gzip
import json
import re

from gateway.sinks.outbox import Outbox
from tests.conftest import run_cli
from tests.test_outbox_store import noisy_lines

CONFIG = """
[gateway]
data_dir = "{data}"

[[sinks]]
type = "influxdb1"
name = "local"
url = "http://127.0.0.1:8086"
database = "community"
max_outbox_bytes = 65536
fsync = "batch"

[[sinks]]
type = "influxdb2"
name = "remote"
url = "https://influx.example.com"
org = "home"
bucket = "community"
token = "t"
"""


def prepared(tmp_path):
    data = tmp_path / "data"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(CONFIG.format(data=data))
    ob = Outbox(data / "outbox-local.sqlite3", fsync="batch", max_bytes=65536)
    for i in range(40):
        ob.put(noisy_lines(i), 400)
    ob.delivered(ob.oldest(limit=2))
    batch = ob.oldest(limit=1)[0]
    bad = gzip.decompress(batch.payload).splitlines()[:3]
    ob.reject_lines(batch, [(line, 'field type conflict: input field "v" is type string', 2) for line in bad], 394)
    st = ob.stats()
    ob.close()
    return cfg, st, bad


def test_status_shows_depth_age_rate_drops_and_dead_letters(tmp_path):
    cfg, st, _ = prepared(tmp_path)
    r = run_cli("outbox", "status", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "local (influxdb1 http://127.0.0.1:8086 db=community)" in out
    assert re.search(rf"queued\s+{st.batches} batches, {st.points} points, ", out), out
    assert "of the 64.0 KiB bound" in out
    assert re.search(r"oldest\s+\d+\.\d s", out)
    assert re.search(rf"drain rate\s+\d+\.\d points/s over the last 30-60 s; {2 * 400 + 394} points delivered", out)
    dropped = st.counters["dropped_points"]
    assert dropped > 0
    assert re.search(rf"dropped\s+{dropped} points \({st.counters['dropped_batches']} batches\)", out)
    assert re.search(r"dead letters\s+3 lines, 6 points", out)
    assert "fsync=batch" in out
    assert "remote: no outbox yet at" in out

    j = run_cli("outbox", "status", "-c", str(cfg), "--json", "--sink", "local")
    [doc] = json.loads(j.stdout)
    assert doc["queued_points"] == st.points and doc["queued_bytes"] == st.bytes
    assert doc["dropped_points"] == dropped and doc["delivered_points"] == 1194
    assert doc["dead_letters"] == 3 and doc["dead_letter_points"] == 6
    assert doc["max_outbox_bytes"] == 65536 and doc["drain_rate_points_per_s"] > 0
    # conservation, as the operator sees it
    assert doc["queued_points"] + doc["dropped_points"] + doc["delivered_points"] + doc["dead_letter_points"] == 40 * 400


def test_deadletter_lists_lines_with_the_reason(tmp_path):
    cfg, _, bad = prepared(tmp_path)
    r = run_cli("outbox", "deadletter", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    entries = [line for line in r.stdout.splitlines() if line.startswith("local #")]
    assert len(entries) == 3
    assert all('reason: field type conflict: input field "v" is type string' in e for e in entries)
    for line in bad:
        assert "    " + line.decode() in r.stdout


def test_check_config_describes_both_sink_types(tmp_path):
    cfg, _, _ = prepared(tmp_path)
    r = run_cli("check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "http://127.0.0.1:8086 db=community" in r.stdout
    assert "https://influx.example.com org=home bucket=community" in r.stdout
