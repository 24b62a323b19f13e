"""End to end under load: devices publish JSON over MQTT, `cgw run` (its own process, the core in
the path) writes to InfluxDB. The rate goes up step by step; for each step the benchmark reports
whether every message landed (counted in InfluxDB), the p99 latency from publish to queryable, the
gateway's CPU per 1,000 messages and its peak RSS during the step (the start-up's peak is printed apart).

    .venv/bin/python benchmarks/bench_end_to_end.py [--devices 2000] [--rates 1000,2000,5000,...]
                                                    [--step-s 10] [--qos 1]

Everything runs on this machine and loopback only: a private mosquitto (unlimited QoS 1 in flight,
so throughput is not capped at 20 messages per commit), a private influxd, the gateway, and the
publisher, which writes pre-encoded MQTT PUBLISH packets on a raw socket so that the publisher costs
as little CPU as possible (it still shares the two cores with everything else, as do the broker and
the database: the note says where the time goes).

Latency: every message carries its publish time as its timestamp. Four times a second the benchmark
counts the points InfluxDB holds; the k-th message's latency is when the count first reached k
minus its publish time (messages land in publish order within a step; resolution 250 ms). Those
counts start two seconds' worth of messages before the previous count (a full count each time
would cost influxd ~0.1 s per query late in a 45,000/s step); whether every message landed is a
full count at the end of the step.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.devservices import free_port, start_influxd, start_mosquitto, stop_process  # noqa: E402


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"  # MQTT 3.1.1, clean session, keepalive 60
    payload = len(cid).to_bytes(2, "big") + cid
    body = var + payload
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    var = len(topic).to_bytes(2, "big") + topic + (packet_id.to_bytes(2, "big") if qos else b"")
    body = var + payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


# Telemetry as published: topic bench/dNNNNN/telemetry, payload {"ts":<19 digits>,"p":<8 digits>.5,"v":230.1}
# with p = P_BASE + the message's sequence number. Every packet has the same length, so a whole slice
# of packets is one numpy array whose digit columns are filled at once: a Python-built packet costs
# ~7 us, which at 45,000 messages/s would take a third of a core from the system under test.
P_BASE = 10_000_000


class PacketSlab:
    def __init__(self, qos: int) -> None:
        template = publish_packet(b"bench/d00000/telemetry", b'{"ts":%d,"p":%d.5,"v":230.1}' % (10**18, P_BASE),
                                  qos, 1)
        self.template = np.frombuffer(template, dtype=np.uint8)
        self.qos = qos
        self.topic_at = template.index(b"/d") + 2  # 5 digits of the device number
        self.ts_at = template.index(b'"ts":') + 5  # 19 digits
        self.p_at = template.index(b'"p":') + 4  # 8 digits
        self.mid_at = self.topic_at + 5 + len(b"/telemetry")  # packet id, 2 bytes big-endian (QoS > 0)

    @staticmethod
    def _digits(out: np.ndarray, at: int, width: int, values: np.ndarray) -> None:
        for k in range(width):
            out[:, at + width - 1 - k] = 48 + (values // 10**k) % 10

    def build(self, seq: np.ndarray, ts: np.ndarray, devices: int, mids: np.ndarray) -> bytes:
        """Packets for messages ``seq`` (device seq % devices), timestamps ``ts``, packet ids ``mids``."""
        assert ts.min() >= 10**18 and seq.max() + P_BASE < 10**8 and devices <= 100_000
        out = np.tile(self.template, (len(seq), 1))
        self._digits(out, self.topic_at, 5, seq % devices)
        self._digits(out, self.ts_at, 19, ts)
        self._digits(out, self.p_at, 8, seq + P_BASE)
        if self.qos:
            out[:, self.mid_at] = mids >> 8
            out[:, self.mid_at + 1] = mids & 0xFF
        return out.tobytes()


class Publisher:
    """Raw-socket MQTT publisher: connects once, writes PUBLISH packets, discards PUBACKs."""

    def __init__(self, host: str, port: int, qos: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.sendall(mqtt_connect_packet(f"bench-pub-{os.getpid()}"))
        ack = self.sock.recv(4)
        assert ack[:1] == b"\x20" and ack[3:4] == b"\x00", f"CONNACK refused: {ack!r}"
        self.qos = qos
        self.pid = 0
        self._stop = False
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while not self._stop:
            try:
                if not self.sock.recv(1 << 20):
                    return
            except OSError:
                return
            # PUBACKs trickle in 4 bytes at a time: reading them in bulk every few milliseconds
            # keeps this thread from taking the GIL (and a core share) thousands of times a second
            time.sleep(0.005)

    def send(self, packets: bytes) -> None:
        self.sock.sendall(packets)

    def next_ids(self, n: int) -> np.ndarray:
        """The next ``n`` packet ids, 1..65535 and round again."""
        ids = (self.pid + np.arange(n, dtype=np.int64)) % 65535 + 1
        self.pid = int(ids[-1])
        return ids

    def close(self) -> None:
        self._stop = True
        self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


def influx_count(url: str, db: str, since_ns: int) -> int:
    q = f"SELECT count(active_power) FROM energy_meter WHERE time >= {since_ns}"
    params = urllib.parse.urlencode({"db": db, "q": q})
    try:
        with urllib.request.urlopen(f"{url}/query?{params}", timeout=5) as r:
            doc = json.load(r)
    except OSError:
        return 0
    for res in doc.get("results", []):
        for s in res.get("series", []):
            return int(s["values"][0][1])
    return 0


def proc_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm(pid: int) -> None:
    """Start the peak-RSS count afresh (Linux: 5 > clear_refs), so a step's peak is its own and not
    the start-up's (the warm-up loads LLVM, whose pages the gateway hands back once it is ready)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def gateway_config(work: Path, mqtt_port: int, influx_url: str, db: str, qos: int) -> str:
    return f"""
[gateway]
site = "bench"
data_dir = "{work}/gw-data"
status_interval_s = 5

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "cgw-bench-{os.getpid()}"

[[subscriptions]]
topic = "bench/+/telemetry"
decoder = "json"
qos = {qos}
[subscriptions.mapping]
measurement = "energy_meter"
device_from_topic = 1
time_path = "ts"
time_format = "epoch_ns"
fields.active_power = {{ path = "p" }}
fields.voltage = {{ path = "v" }}

[[sinks]]
type = "influxdb1"
name = "local"
url = "{influx_url}"
database = "{db}"
batch_max_points = 20000
batch_max_age_s = 0.2
"""


def run_step(pub: Publisher, rate: int, seconds: float, devices: int, influx_url: str, db: str,
             pids: dict[str, int]) -> dict:
    """One step; ``pids``: the processes whose share of the cores is reported ("gateway" first)."""
    gw_pid = pids["gateway"]
    # the field p carries a sequence number, so the count of landed points is exact per message
    n = int(rate * seconds)
    slab = PacketSlab(pub.qos)
    cpu0 = proc_cpu_s(gw_pid)
    reset_hwm(gw_pid)
    t_start = time.time_ns()
    publish_ts = np.empty(n, dtype=np.int64)
    counts: list[tuple[int, int]] = []
    stop_poll = threading.Event()

    def poll() -> None:
        # Counting every point of the step four times a second costs influxd ~0.1 s per query at
        # 450,000 points, CPU the system under test would lose. Messages land in publish order (the
        # latency below relies on it too), so only the points from two seconds' worth of messages
        # before the last count on are counted again; the final count of the step is a full one.
        landed = 0
        while not stop_poll.is_set():
            j = max(0, landed - 2 * rate)
            landed = j + influx_count(influx_url, db, int(publish_ts[j]) if j else t_start)
            counts.append((time.time_ns(), landed))
            stop_poll.wait(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    chunk = max(1, rate // 100)  # send in 10 ms slices
    sent = 0
    busy0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    while sent < n:
        due = int((time.perf_counter() - t0) * rate)
        if due - sent < chunk and due < n:  # a slice at a time: building one costs ~0.1 ms however small
            time.sleep(max(0.0, (sent + chunk) / rate - (time.perf_counter() - t0)))
            continue
        k = min(n, due, sent + chunk * 4)
        # one clock reading per slice; +1 ns per message keeps every point distinct in InfluxDB
        ts_slice = time.time_ns() + np.arange(k - sent)
        publish_ts[sent:k] = ts_slice
        pub.send(slab.build(np.arange(sent, k), ts_slice, devices, pub.next_ids(k - sent)))
        sent = k
    publish_s = time.perf_counter() - t0
    # cores each process kept busy while the messages went out (the publisher: this process)
    cores = {name: (proc_cpu_s(pid) - busy0[name]) / publish_s for name, pid in pids.items()}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (not counts or counts[-1][1] < n):
        time.sleep(0.25)
    time.sleep(0.5)
    stop_poll.set()
    poller.join()
    landed = influx_count(influx_url, db, t_start)
    cpu = proc_cpu_s(gw_pid) - cpu0
    # latency of message k: first poll time at which the count reached k+1, minus its publish time
    times = np.array([t for t, _ in counts], dtype=np.int64)
    cum = np.maximum.accumulate(np.array([c for _, c in counts], dtype=np.int64))
    idx = np.searchsorted(cum, np.arange(1, min(landed, n) + 1), side="left")
    ok = idx < len(times)
    lat = (times[idx[ok]] - publish_ts[: min(landed, n)][ok]) / 1e9
    return {"rate": rate, "sent": n, "achieved_rate": n / publish_s, "landed": landed,
            "lost": n - min(landed, n), "p50_s": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_s": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "cpu_us_per_msg": cpu / n * 1e6, "rss_mib": proc_hwm_mib(gw_pid), "cores": cores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rates", default="1000,2000,5000,10000,15000,20000,30000,45000,60000,80000")
    ap.add_argument("--step-s", type=float, default=10.0)
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        broker = start_mosquitto(work / "mosquitto", listener_options="max_inflight_messages 0")
        influxd = start_influxd(work / "influxd", port=free_port())
        influx_url = f"http://{influxd.host}:{influxd.port}"
        db = "bench"
        urllib.request.urlopen(f"{influx_url}/query", data=urllib.parse.urlencode(
            {"q": f'CREATE DATABASE "{db}"'}).encode(), timeout=10).read()
        config = work / "gateway.toml"
        config.write_text(gateway_config(work, broker.port, influx_url, db, args.qos))
        gw_log = open(work / "gateway.log", "wb")
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(config)], cwd=REPO,
                              stdout=gw_log, stderr=subprocess.STDOUT)
        results = []
        try:
            deadline = time.monotonic() + 60
            while b"event=mqtt_connected" not in (work / "gateway.log").read_bytes():
                if time.monotonic() > deadline or gw.poll() is not None:
                    raise SystemExit("gateway did not start:\n" + (work / "gateway.log").read_text()[-2000:])
                time.sleep(0.2)
            time.sleep(1.0)
            startup_peak = proc_hwm_mib(gw.pid)
            pub = Publisher("127.0.0.1", broker.port, args.qos)
            pids = {"gateway": gw.pid, "mosquitto": broker.process.pid, "influxd": influxd.process.pid,
                    "publisher": os.getpid()}
            print(f"\n{args.devices} devices, QoS {args.qos}, {args.step_s:g} s per step, everything on "
                  f"{os.cpu_count()} cores\n")
            print(f"{'rate/s':>8} {'achieved':>9} {'sent':>8} {'landed':>8} {'lost':>6} {'p50 s':>6} {'p99 s':>6} "
                  f"{'CPU us/msg':>10} {'peak RSS MiB':>12}  cores busy while publishing")
            for rate in (int(r) for r in args.rates.split(",")):
                r = run_step(pub, rate, args.step_s, args.devices, influx_url, db, pids)
                results.append(r)
                print(f"{r['rate']:>8} {r['achieved_rate']:>9.0f} {r['sent']:>8} {r['landed']:>8} {r['lost']:>6} "
                      f"{r['p50_s']:>6.2f} {r['p99_s']:>6.2f} {r['cpu_us_per_msg']:>10.1f} {r['rss_mib']:>12.0f}  "
                      + " ".join(f"{name} {c:.2f}" for name, c in r["cores"].items()), flush=True)
                if r["lost"] or r["p99_s"] >= 1.0:
                    if r["landed"] == 0:
                        print("nothing landed; the gateway's log says:\n" + (work / "gateway.log").read_text()[-3000:])
                    break
                time.sleep(2.0)
            pub.close()
        finally:
            stop_process(gw, 20)
            broker.stop()
            influxd.stop()
        good = [r for r in results if not r["lost"] and r["p99_s"] < 1.0]
        if good:
            best = max(good, key=lambda r: r["rate"])
            print(f"\nhighest zero-loss rate with p99 < 1 s: {best['rate']}/s (achieved {best['achieved_rate']:.0f}/s), "
                  f"p99 {best['p99_s']:.2f} s, gateway CPU {best['cpu_us_per_msg']:.1f} us/msg, peak RSS "
                  f"{best['rss_mib']:.0f} MiB")
        print(f"peak RSS of the gateway's start-up (warm-up, before it hands the start-up's file pages back): {startup_peak:.0f} MiB; "
              "each step's peak RSS is counted from the start of that step")
        print("peers on this machine class (from the issue): Node-RED 5 ~15,000/s at p99 0.3 s, 62 us/msg, 450 MB; "
              "ThingsBoard IoT gateway ~1,400/s")


if __name__ == "__main__":
    main()
