"""socat pty pairs for tests: two linked pseudo-terminals, like the two ends of a null-modem cable.

    with pty_pair() as (gateway_end, device_end):
        ...  # open gateway_end with pyserial, serve the simulated device on device_end

socat is a hard requirement of the integration tests: when it is missing this fails (never skips)
and says how to install it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

INSTALL_HINT = "socat is required for the serial-line tests: install it with `apt-get install socat`"


class SocatError(RuntimeError):
    pass


def socat_path() -> str:
    path = shutil.which("socat")
    if path is None:
        raise SocatError(f"socat not found on PATH ({os.environ.get('PATH', '')}); {INSTALL_HINT}")
    return path


@contextmanager
def pty_pair(*, names: tuple[str, str] = ("a", "b"), timeout: float = 5.0,
             directory: str | None = None) -> Iterator[tuple[str, str]]:
    """Start ``socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B``, yield (A, B), kill socat after.

    With ``directory`` the links are made there, so a second pair can reappear under the same names
    (an adapter unplugged and plugged in again).
    """
    socat = socat_path()
    with (contextlib.nullcontext(directory) if directory else tempfile.TemporaryDirectory(prefix="ptys-")) as tmp:
        a, b = (os.path.join(tmp, n) for n in names)
        log_path = os.path.join(tmp, f"socat-{names[0]}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            deadline = time.monotonic() + timeout
            while not (os.path.exists(a) and os.path.exists(b)):
                if proc.poll() is not None:
                    raise SocatError(f"socat exited with {proc.returncode} before creating the ptys: {_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise SocatError(f"socat did not create {a} and {b} within {timeout} s: {_tail(log_path)}")
                time.sleep(0.01)
            # socat logs "starting data transfer loop" once both ptys are set up.
            while b"starting data transfer loop" not in _read(log_path) and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SocatError(f"socat exited with {proc.returncode}: {_tail(log_path)}")
                time.sleep(0.01)
            yield a, b
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=2)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _tail(path: str) -> str:
    return _read(path)[-800:].decode(errors="replace").strip() or "(no output)"
