"""socat pty pairs for tests: two linked pseudo-terminals, like the two ends of a null-modem cable.

    with pty_pair() as (gateway_end, device_end):
        ...  # open gateway_end with pyserial, serve the simulated device on device_end

The pair is firmware-sim's own (``firmware_sim.serial_link.PtyPair``, what a scenario's serial
lines use). socat is a hard requirement of the integration tests: when it is missing this fails
(never skips) and says how to install it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from firmware_sim.serial_link import PtyPair
from firmware_sim.serial_link import SerialLinkError as SocatError  # noqa: F401  (the tests' name for it)


@contextmanager
def pty_pair(*, names: tuple[str, str] = ("a", "b"), timeout: float = 5.0,
             directory: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield the paths (A, B) of a linked pty pair; socat is stopped after.

    With ``directory`` the links are made there, so a second pair can reappear under the same names
    (an adapter unplugged and plugged in again).
    """
    with (contextlib.nullcontext(directory) if directory else tempfile.TemporaryDirectory(prefix="ptys-")) as tmp:
        a, b = (os.path.join(tmp, n) for n in names)
        pair = PtyPair(b, a, Path(tmp) / f"socat-{names[0]}.log").open(timeout)
        try:
            yield a, b
        finally:
            pair.close()
