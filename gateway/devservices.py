"""Private mosquitto, influxd and victoria-metrics instances for the demo and the tests.

Each runs from a temp or project directory on a loopback port, never touching a system service,
and is stopped by whoever started it. A missing binary is an error that says how to install it.
"""
from __future__ import annotations

import shutil
import socket
import getpass
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = {
    "mosquitto": "apt-get install mosquitto",
    "influxd": "apt-get install influxdb",
    "socat": "apt-get install socat",
    "mbpoll": "apt-get install mbpoll",
    "victoria-metrics": "apt-get install victoria-metrics",
    "mosquitto_passwd": "apt-get install mosquitto",
    "openssl": "apt-get install openssl",
}


class MissingBinary(RuntimeError):
    pass


def require_binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise MissingBinary(f"{name} is not installed; install it with `{INSTALL_HINT.get(name, 'apt-get install ' + name)}` "
                        f"(or run `make test`, which installs everything it needs)")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    host: str
    port: int
    workdir: Path
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _wait(svc: Service, ready, timeout: float) -> Service:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.process.poll() is not None:
            raise RuntimeError(f"{svc.name} exited with {svc.process.returncode}:\n{svc.log_tail()}")
        if ready():
            return svc
        time.sleep(0.05)
    svc.kill()
    raise RuntimeError(f"{svc.name} did not answer on {svc.host}:{svc.port} within {timeout}s:\n{svc.log_tail()}")


def start_mosquitto(workdir: Path, port: int | None = None, host: str = "127.0.0.1",
                    listener_options: str = "", allow_anonymous: bool = True) -> Service:
    """``listener_options``: lines for the listener (cafile, certfile, password_file, ...), for TLS tests."""
    binary = require_binary("mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        # run as whoever started us: as root, mosquitto would otherwise switch to its own user, who
        # cannot read a private temp dir (password file, certificates, persistence)
        f"user {getpass.getuser()}\n"
        f"listener {port} {host}\n{listener_options}\nallow_anonymous {str(allow_anonymous).lower()}\n"
        f"persistence true\npersistence_location {workdir}/\n"
        f"autosave_interval 1\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n"
    )
    log_path = workdir / "mosquitto.log"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "ab"), start_new_session=True)
    return _wait(Service("mosquitto", proc, host, port, workdir, log_path), lambda: port_open(host, port), 10)


def start_influxd(workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> Service:
    binary = require_binary("influxd")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    rpc_port = free_port(host)
    conf = workdir / "influxdb.conf"
    conf.write_text(f"""reporting-enabled = false
bind-address = "{host}:{rpc_port}"
[meta]
  dir = "{workdir}/meta"
[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "{host}:{port}"
  log-enabled = false
[ifql]
  enabled = false
[continuous_queries]
  enabled = false
""")
    log_path = workdir / "influxd.log"
    proc = subprocess.Popen([binary, "-config", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "ab"), start_new_session=True)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=0.5) as r:
                return r.status == 204
        except OSError:
            return False

    return _wait(Service("influxd", proc, host, port, workdir, log_path), ready, 30)


def start_victoria_metrics(data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> Service:
    """A private VictoriaMetrics: it accepts InfluxDB line protocol on /api/v2/write (and /write),
    so it stands in for an InfluxDB 2.x/3.x target; query it with /api/v1/export."""
    binary = require_binary("victoria-metrics")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    log_path = data_dir / "victoria-metrics.log"
    proc = subprocess.Popen([binary, f"-httpListenAddr={host}:{port}", f"-storageDataPath={data_dir}",
                             "-loggerLevel=WARN"],
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"), start_new_session=True)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    return _wait(Service("victoria-metrics", proc, host, port, data_dir, log_path), ready, 30)


def influx_ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=1.0) as r:
            return r.status == 204
    except OSError:
        return False
