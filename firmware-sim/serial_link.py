"""RS-485 lines for a scenario: two linked pseudo-terminals made by socat, like a null-modem cable.

The simulator serves its meters on one end (``device_link``); the gateway opens the other
(``gateway_link``) as it would open /dev/ttyUSB0. socat runs as a child of the simulator and dies
with it (PR_SET_PDEATHSIG), so no pty pair outlives a killed simulator.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

INSTALL_HINT = "install it with `apt-get install socat`"
_PR_SET_PDEATHSIG = 1


class SerialLinkError(RuntimeError):
    pass


def socat_path() -> str:
    path = shutil.which("socat")
    if path is None:
        raise SerialLinkError(f"socat is not installed; the scenario's serial lines need it: {INSTALL_HINT}")
    return path


def _die_with_parent() -> None:
    # runs in the child between fork and exec: socat gets SIGTERM when the simulator exits, however it exits
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class PtyPair:
    """``socat -d -d pty,raw,echo=0,link=DEVICE pty,raw,echo=0,link=GATEWAY`` while open."""

    def __init__(self, device_link: str, gateway_link: str, log_path: Path | None = None) -> None:
        self.device_link = device_link
        self.gateway_link = gateway_link
        self.log_path = log_path or Path(device_link).with_suffix(".socat.log")
        self.process: subprocess.Popen | None = None

    def open(self, timeout_s: float = 5.0) -> "PtyPair":
        socat = socat_path()
        for link in (self.device_link, self.gateway_link):
            Path(link).parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(link):  # left by a simulator that was killed: socat would not replace it
                os.unlink(link)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [socat, "-d", "-d", f"pty,raw,echo=0,link={self.device_link}",
                 f"pty,raw,echo=0,link={self.gateway_link}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        # socat logs "starting data transfer loop" once both ptys exist and are linked
        while b"starting data transfer loop" not in self._log():
            if self.process.poll() is not None:
                raise SerialLinkError(f"socat exited with {self.process.returncode} before the ptys were ready: "
                                      f"{self._log()[-600:].decode(errors='replace').strip()}")
            if time.monotonic() > deadline:
                self.close()
                raise SerialLinkError(f"socat did not create {self.device_link} and {self.gateway_link} "
                                      f"within {timeout_s:g} s")
            time.sleep(0.01)
        return self

    def _log(self) -> bytes:
        try:
            return self.log_path.read_bytes()
        except OSError:
            return b""

    def close(self) -> None:
        p = self.process
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=2)
        for link in (self.device_link, self.gateway_link):
            if os.path.islink(link) and not os.path.exists(link):  # socat removes its links; a dangling one goes too
                os.unlink(link)
