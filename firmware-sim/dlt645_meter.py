"""Simulated DL/T 645-2007 electricity meters: the device side of the wire.

Shares nothing with the gateway but the protocol: the framing, BCD and identifier formats below
are the meter's own (written from /work/shared/reference/dlt645.md), so a bug in the gateway's
codec cannot hide behind the same bug here.

Several meters can sit on one line (``MeterLine``), as on an RS-485 bus. A meter answers

* read communication address (0x13) to AA AA AA AA AA AA with its address (0x93);
* read data (0x11) addressed to it (AA bytes match any) with the DI echoed and the value in BCD
  (0x91), or with an abnormal reply 0xD1 + error byte: bit1 "no data requested" for an identifier
  it does not have, bit0 "other error" for a value its format cannot hold;
* nothing to the broadcast address 99..99, and nothing to frames from other meters.

When more than one meter answers the same request (a wildcard on a shared bus) the replies
collide: the line carries the bytewise AND of the frames, as overlapping drivers would garble them.

Faults are injected on request, per meter, and labelled in ``meter.faults.log``: silence, bad
checksum, a garbled data byte, noise before the reply, a truncated reply, a wrong address, a delay.
Scenario runs schedule them in time instead: ``line_fault(t_ns)`` names the fault active at a
request (``offline``, ``crc_error`` or ``garbled``), and each one is written to the served log.

Run from Python::

    line = MeterLine([SimMeter("000000000001", {0x00010000: 1234.56})])
    await serve_serial("/tmp/pty-b", line)            # until cancelled
    server = await start_tcp("127.0.0.1", 0, line)    # an asyncio.Server; port 0 picks one

or from a shell: ``python -m firmware_sim.dlt645_meter --tcp 127.0.0.1:8899 --address 000000000001``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import termios
import time
import tty
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Union

PREAMBLE = 0xFE
START = 0x68
END = 0x16
WILDCARD = bytes([0xAA] * 6)
BROADCAST = bytes([0x99] * 6)

ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_UNAUTHORISED = 0x04

# The meter's identifier formats: DI -> (value bytes, decimals, signed). Reference section 5.
FORMATS: dict[int, tuple[int, int, bool]] = {
    **{0x00000000 | t << 8: (4, 2, True) for t in range(5)},  # combined active energy, total + tariffs
    **{0x00010000 | t << 8: (4, 2, False) for t in range(5)},  # forward (import) active energy
    **{0x00020000 | t << 8: (4, 2, False) for t in range(5)},  # reverse (export) active energy
    0x00030000: (4, 2, True),
    0x00040000: (4, 2, True),
    **{0x02010000 | p << 8: (2, 1, False) for p in (1, 2, 3)},  # phase voltage XXX.X V
    **{0x02020000 | p << 8: (3, 3, True) for p in (1, 2, 3)},  # phase current XXX.XXX A, signed
    **{0x02030000 | p << 8: (3, 4, True) for p in (0, 1, 2, 3)},  # active power XX.XXXX kW, signed
    **{0x02040000 | p << 8: (3, 4, True) for p in (0, 1, 2, 3)},  # reactive power kvar, signed
    **{0x02050000 | p << 8: (3, 4, False) for p in (0, 1, 2, 3)},  # apparent power kVA
    **{0x02060000 | p << 8: (2, 3, True) for p in (0, 1, 2, 3)},  # power factor X.XXX, signed
    **{0x020C0000 | p << 8: (2, 1, False) for p in (1, 2, 3)},  # line voltage
    0x02800001: (3, 3, False),  # neutral current
    0x02800002: (2, 2, False),  # frequency XX.XX Hz
    0x02800007: (2, 1, True),  # meter temperature
}

Values = Union[Mapping[int, float], Callable[[int], "float | None"]]

# What a scenario meter serves: energy_meter field -> (DI, factor from the field's unit to the
# wire's). Fields in W go on the wire in kW (reference section 5).
FIELD_DI: dict[str, tuple[int, float]] = {
    "energy_total": (0x00000000, 1.0), "energy_import": (0x00010000, 1.0), "energy_export": (0x00020000, 1.0),
    **{f"voltage_l{p}": (0x02010000 | p << 8, 1.0) for p in (1, 2, 3)},
    **{f"current_l{p}": (0x02020000 | p << 8, 1.0) for p in (1, 2, 3)},
    "active_power": (0x02030000, 0.001),
    **{f"active_power_l{p}": (0x02030000 | p << 8, 0.001) for p in (1, 2, 3)},
    "reactive_power": (0x02040000, 0.001), "apparent_power": (0x02050000, 0.001),
    "power_factor": (0x02060000, 1.0), "frequency": (0x02800002, 1.0),
}
LINE_FAULTS = ("offline", "crc_error", "garbled")


# ---------------------------------------------------------------------------------------------
# The meter's own framing and BCD


def _sum(b: bytes | bytearray) -> int:
    return sum(b) & 0xFF


def build_frame(address: bytes, control: int, data: bytes, preamble: int = 4) -> bytes:
    body = bytearray([START]) + address + bytes([START, control, len(data)])
    body += bytes((x + 0x33) & 0xFF for x in data)
    body += bytes([_sum(body), END])
    return bytes([PREAMBLE] * preamble) + bytes(body)


def wire_address(printed: str) -> bytes:
    printed = printed.strip()
    if len(printed) != 12:
        raise ValueError(f"a meter address is 12 digits, got {printed!r}")
    return bytes(int(printed[i : i + 2], 16) for i in range(10, -2, -2))


def to_bcd(value: float, length: int, decimals: int, signed: bool) -> bytes | None:
    """Packed BCD, least significant byte first; top bit of the last byte = sign. None if it does not fit."""
    n = int(round(abs(value) * 10**decimals))
    limit = 8 * 10 ** (2 * length - 1) if signed else 10 ** (2 * length)
    if n >= limit or (value < 0 and n and not signed) or math.isnan(value):
        return None
    out = bytearray()
    for _ in range(length):
        n, pair = divmod(n, 100)
        out.append((pair // 10) << 4 | pair % 10)
    if value < 0 and any(out):
        out[-1] |= 0x80
    return bytes(out)


class _RequestParser:
    """Meter-side stream parser: skips garbage, keeps a partial frame for the next chunk."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.bad_frames = 0

    def feed(self, data: bytes) -> list[tuple[bytes, int, bytes]]:
        self.buf += data
        out = []
        while True:
            i = self.buf.find(START)
            if i < 0:
                self.buf.clear()
                break
            del self.buf[:i]
            if len(self.buf) < 12:
                break
            if self.buf[7] != START:
                del self.buf[:1]
                continue
            n = 12 + self.buf[9]
            if len(self.buf) < n:
                break
            frame = bytes(self.buf[:n])
            if frame[-1] != END or _sum(frame[:-2]) != frame[-2]:
                self.bad_frames += 1
                del self.buf[:1]
                continue
            del self.buf[:n]
            out.append((frame[1:7], frame[8], bytes((x - 0x33) & 0xFF for x in frame[10:-2])))
        return out


# ---------------------------------------------------------------------------------------------
# Meters and faults


@dataclass
class Faults:
    """Counters of faults still to inject (each reply uses one of each that is > 0) and a log."""

    silent: int = 0  # requests to ignore
    bad_checksum: int = 0  # replies with checksum + 1
    garble: int = 0  # replies with one data byte flipped (the checksum no longer matches)
    noise_before: int = 0  # replies preceded by noise that includes a fake 0x68 start
    truncate: int = 0  # replies cut short
    wrong_address: int = 0  # replies carrying another meter's address
    delay: float = 0.0  # seconds before every reply
    log: list[str] = field(default_factory=list)

    def take(self, name: str) -> bool:
        n = getattr(self, name)
        if n > 0:
            setattr(self, name, n - 1)
            self.log.append(name)
            return True
        return False


class SimMeter:
    """One meter: an address, values by DI (a dict or a callable returning None for "no data")."""

    def __init__(
        self,
        address: str,
        values: Values,
        *,
        formats: Mapping[int, tuple[int, int, bool]] | None = None,
        preamble: int = 4,
        faults: Faults | None = None,
        served_log: Callable[[dict], None] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        device: str | None = None,
        line_fault: Callable[[int], str | None] | None = None,
    ) -> None:
        self.served_log = served_log  # every value put on the wire, for tests to compare against
        self.clock_ns = clock_ns
        self.device = device  # the name a scenario gives the meter, carried into the served log
        self.line_fault = line_fault  # t_ns -> one of LINE_FAULTS active then, or None
        self.address = address
        self.wire = wire_address(address)
        self.values = values
        self.formats = {**FORMATS, **(formats or {})}
        self.preamble = preamble
        self.faults = faults or Faults()
        self.requests: list[tuple[int, int | None]] = []  # (control, DI) of every request it answered

    def value_of(self, di: int) -> float | None:
        if callable(self.values):
            return self.values(di)
        return self.values.get(di)

    def addressed_by(self, address: bytes) -> bool:
        return all(a == 0xAA or a == m for a, m in zip(address, self.wire))

    def reply(self, control: int, data: bytes) -> bytes:
        """The reply to a request this meter must answer (before faults)."""
        p = self.preamble
        if control == 0x13:
            self.requests.append((control, None))
            return build_frame(self.wire, 0x93, self.wire, p)
        if control == 0x11:
            if len(data) < 4:
                self.requests.append((control, None))
                return build_frame(self.wire, 0xD1, bytes([ERR_OTHER]), p)
            di = int.from_bytes(data[:4], "little")
            self.requests.append((control, di))
            fmt = self.formats.get(di)
            value = self.value_of(di) if fmt is not None else None
            if fmt is None or value is None:
                return build_frame(self.wire, 0xD1, bytes([ERR_NO_DATA]), p)
            bcd = to_bcd(float(value), *fmt)
            if bcd is None:
                return build_frame(self.wire, 0xD1, bytes([ERR_OTHER]), p)
            if self.served_log is not None:
                decimals = fmt[1]
                served = int(round(abs(float(value)) * 10**decimals)) / 10**decimals  # exactly what the BCD says
                record = {"t_ns": self.clock_ns(), "kind": "dlt645", "address": self.address, "di": di,
                          "value": -served if value < 0 else served}
                if self.device is not None:
                    record["device"] = self.device
                self.served_log(record)
            return build_frame(self.wire, 0x91, data[:4] + bcd, p)
        self.requests.append((control, None))
        return build_frame(self.wire, (control & 0x1F) | 0xC0, bytes([ERR_OTHER]), p)

    def apply_faults(self, reply: bytes, rng: random.Random) -> bytes | None:
        f = self.faults
        scheduled = None
        if self.line_fault is not None:
            t_ns = self.clock_ns()
            scheduled = self.line_fault(t_ns)
            if scheduled is not None and self.served_log is not None:
                self.served_log({"t_ns": t_ns, "kind": "dlt645", "address": self.address, "device": self.device,
                                 "line_fault": scheduled})
        if scheduled == "offline" or f.take("silent"):
            return None
        out = bytearray(reply)
        start = out.index(START)
        if scheduled == "garbled" and len(out) - start > 12:
            out[start + 10 + rng.randrange(len(out) - start - 12)] ^= 0x10  # a data byte: the checksum fails
        elif scheduled == "crc_error":
            out[-2] = (out[-2] + 1) & 0xFF
        if f.take("wrong_address"):
            other = bytes(((b & 0x0F) + 1) % 10 | (b & 0xF0) for b in self.wire)  # bump each low digit
            out[start + 1 : start + 7] = other
            out[-2] = _sum(out[start:-2])
        if f.take("garble") and len(out) - start > 12:
            k = rng.randrange(start + 10, len(out) - 2)
            out[k] ^= 0x01
        if f.take("bad_checksum"):
            out[-2] = (out[-2] + 1) & 0xFF
        if f.take("truncate"):
            out = out[: start + (len(out) - start) // 2]
        if f.take("noise_before"):
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
            out = bytearray(noise + bytes([START]) + bytes(rng.randrange(256) for _ in range(5))) + out
        return bytes(out)


class MeterLine:
    """Meters sharing one bus. ``feed`` takes bytes from the master, returns (delay, bytes) to send."""

    def __init__(self, meters: Iterable[SimMeter] | SimMeter, *, echo: bool = False, seed: int = 645) -> None:
        self.meters = [meters] if isinstance(meters, SimMeter) else list(meters)
        self.echo = echo  # an adapter that hears its own transmission
        self.rng = random.Random(seed)
        self.parser = _RequestParser()
        self.collisions = 0
        self.ignored = 0  # valid frames no meter answered (broadcasts, other meters' replies)

    def feed(self, data: bytes) -> list[tuple[float, bytes]]:
        out: list[tuple[float, bytes]] = []
        if self.echo:
            out.append((0.0, bytes(data)))
        for address, control, payload in self.parser.feed(data):
            if control & 0x80 or address == BROADCAST:
                self.ignored += 1
                continue
            if control == 0x13:
                targets = [m for m in self.meters if address == WILDCARD or address == m.wire]
            else:
                targets = [m for m in self.meters if m.addressed_by(address)]
            replies = []
            delay = 0.0
            for m in targets:
                r = m.apply_faults(m.reply(control, payload), self.rng)
                delay = max(delay, m.faults.delay)
                if r is not None:
                    replies.append(r)
            if not replies:
                self.ignored += not targets
                continue
            if len(replies) > 1:
                self.collisions += 1
                width = max(map(len, replies))
                garbled = bytearray(b"\xff" * width)
                for r in replies:
                    for k, b in enumerate(r):
                        garbled[k] &= b
                out.append((delay, bytes(garbled)))
            else:
                out.append((delay, replies[0]))
        return out


def _as_line(meters: MeterLine | SimMeter | Iterable[SimMeter]) -> MeterLine:
    return meters if isinstance(meters, MeterLine) else MeterLine(meters)


# ---------------------------------------------------------------------------------------------
# Serving: a serial port path (a pty end) or TCP, as an RS-485 converter in transparent mode


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await asyncio.sleep(0.001)


async def serve_serial(path: str, meters: MeterLine | SimMeter | Iterable[SimMeter], *, ready: asyncio.Event | None = None) -> None:
    """Answer on a serial device (e.g. one end of a socat pty pair) until cancelled or the port goes away."""
    line = _as_line(meters)
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if os.isatty(fd):
            tty.setraw(fd, termios.TCSANOW)
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        def on_readable() -> None:
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                inbox.put_nowait(None)
            else:
                inbox.put_nowait(data)

        loop.add_reader(fd, on_readable)
        if ready is not None:
            ready.set()
        try:
            while True:
                data = await inbox.get()
                if data is None:
                    return
                for delay, reply in line.feed(data):
                    if delay:
                        await asyncio.sleep(delay)
                    await _write_all(fd, reply)
        finally:
            try:
                loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
    finally:
        os.close(fd)


async def start_tcp(host: str, port: int, meters: MeterLine | SimMeter | Iterable[SimMeter]) -> asyncio.Server:
    """Listen like a transparent RS-485-to-Ethernet converter; every connection shares the one line."""
    line = _as_line(meters)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                for delay, reply in line.feed(data):
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(reply)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def serve_tcp(host: str, port: int, meters: MeterLine | SimMeter | Iterable[SimMeter]) -> None:
    """``start_tcp`` and serve until cancelled."""
    server = await start_tcp(host, port, meters)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------------------
# A plausible household three-phase meter, for demos and end-to-end runs


def demo_values(*, start_kwh: float = 12345.67, power_kw: float = 2.4, seed: int = 1) -> Callable[[int], float | None]:
    """Values that move: energy counts up with a power that wanders; phase B and C are present."""
    rng = random.Random(seed)
    t0 = time.monotonic()

    def value(di: int) -> float | None:
        t = time.monotonic() - t0
        p = power_kw * (1.0 + 0.2 * math.sin(t / 30.0)) + rng.uniform(-0.05, 0.05)
        energy = start_kwh + power_kw * t / 3600.0
        table = {
            0x00000000: energy + 10.0,
            0x00010000: energy,
            0x00020000: 10.0,
            0x02800002: 50.0 + rng.uniform(-0.03, 0.03),
            0x02030000: p,
            0x02060000: 0.97,
        }
        for ph in (1, 2, 3):
            u = 230.0 + rng.uniform(-2, 2)
            table[0x02010000 | ph << 8] = u
            table[0x02030000 | ph << 8] = p / 3
            table[0x02020000 | ph << 8] = p / 3 * 1000 / u
        return table.get(di)

    return value


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Simulated DL/T 645-2007 meter(s)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", help="serial device path (e.g. a socat pty link)")
    where.add_argument("--tcp", help="HOST:PORT to listen on, like a transparent converter")
    ap.add_argument("--address", action="append", default=None, help="12-digit meter address (repeatable)")
    ap.add_argument("--served-log", help="append every value put on the wire to this JSONL file")
    args = ap.parse_args(argv)
    log_file = open(args.served_log, "a", buffering=1, encoding="utf-8") if args.served_log else None

    def served(record: dict) -> None:
        log_file.write(json.dumps(record) + "\n")

    meters = [SimMeter(a, demo_values(seed=i), served_log=served if log_file else None)
              for i, a in enumerate(args.address or ["000000000001"])]
    if args.serial:
        asyncio.run(serve_serial(args.serial, meters))
    else:
        host, _, port = args.tcp.rpartition(":")
        asyncio.run(serve_tcp(host or "127.0.0.1", int(port), meters))


if __name__ == "__main__":
    main()
