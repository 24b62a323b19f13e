"""Asyncio DL/T 645-2007 master over RS-485 (pyserial) or a TCP transparent converter.

One request at a time per line: a client owns its transport, and every exchange holds the
client's lock from the write of the request to the end of the reply. A reply is accepted only
if it is a response (D7 set) to the function asked, from the address asked (AA bytes in the
request match any byte) and, for read data, echoes the DI asked. Anything else on the line
(our own echo on adapters that hear themselves, a late reply to an earlier request) is skipped
while waiting. When the deadline passes without a matching reply, the error raised is the most
specific reason seen: a reply from another address, a frame with a bad checksum, or a timeout.
After a frame with a bad checksum the client waits only ``checksum_grace`` seconds more (the meter
will not repeat itself), so a noisy line does not cost a whole timeout per corrupted reply.
An abnormal reply from the right address is raised at once, with its error bits decoded.

Serial I/O: pyserial opens and configures the port (baud, parity); the file descriptor is
non-blocking and watched with ``loop.add_reader``, so nothing blocks the event loop and no
thread is needed. TCP: ``asyncio.open_connection`` to the converter; the connection is reopened
on the next request after a failure.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from drivers.dlt645.errors import (
    AbnormalResponseError,
    AddressMismatchError,
    ChecksumError,
    Dlt645Error,
    ResponseTimeoutError,
    TransportError,
    UnexpectedResponseError,
)
from drivers.dlt645.frame import (
    C_READ_ADDRESS,
    C_READ_DATA,
    MAX_PREAMBLE,
    WILDCARD_ADDRESS,
    Frame,
    FrameReader,
    address_matches,
    address_to_wire,
    build_read_address,
    build_read_data,
    parse_read_address_reply,
    parse_read_data_reply,
    raise_if_abnormal,
)
from drivers.dlt645.identifiers import DataIdentifier, lookup

log = logging.getLogger("drivers.dlt645")
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Transports: bytes in, bytes out, nothing about frames.


class Transport:
    """Byte pipe to one line. Received bytes collect in a buffer that ``read_some`` hands out."""

    name = "transport"

    def __init__(self) -> None:
        self._rx = bytearray()
        self._event: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    def _reset_rx(self) -> None:
        self._rx.clear()
        self._error = None
        self._event = asyncio.Event()

    def _push(self, data: bytes) -> None:
        self._rx += data
        if self._event is not None:
            self._event.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if self._event is not None:
            self._event.set()

    def discard_input(self) -> int:
        """Drop bytes received so far (stale replies); returns how many."""
        n = len(self._rx)
        self._rx.clear()
        return n

    async def read_some(self) -> bytes:
        """Wait for at least one byte and return everything buffered."""
        while not self._rx:
            if self._error is not None:
                raise TransportError(f"{self.name}: {self._error}") from self._error
            if self._event is None:
                raise TransportError(f"{self.name}: not open")
            self._event.clear()
            await self._event.wait()
        data = bytes(self._rx)
        self._rx.clear()
        return data


class SerialTransport(Transport):
    """An RS-485 adapter (or a pty) through pyserial; 2400 8E1 is the usual meter setting."""

    def __init__(
        self,
        path: str,
        *,
        baudrate: int = 2400,
        bytesize: int = 8,
        parity: str = "E",
        stopbits: float = 1,
    ) -> None:
        super().__init__()
        self.path = path
        self.name = f"serial {path}"
        self.settings = {"baudrate": baudrate, "bytesize": bytesize, "parity": parity, "stopbits": stopbits}
        self._serial = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None and self._error is None

    async def open(self) -> None:
        import termios

        import serial  # pyserial; imported here so the codec does not need it

        await self.close()
        try:
            ser = serial.Serial(port=self.path, timeout=0, write_timeout=0, exclusive=True, **self.settings)
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            raise TransportError(f"cannot open {self.path}: {exc}") from exc
        self._serial = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._reset_rx()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO on a pty whose other side went away, a pulled USB adapter...
            self._stop_reading()
            self._fail(exc)
            return
        if not data:
            self._stop_reading()
            self._fail(EOFError("end of file"))
            return
        self._push(data)

    def _stop_reading(self) -> None:
        if self._loop is not None and self._fd is not None:
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError, RuntimeError):
                pass

    async def write(self, data: bytes) -> None:
        if self._fd is None:
            raise TransportError(f"{self.name}: not open")
        view = memoryview(data)
        deadline = time.monotonic() + 2.0
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TransportError(f"{self.name}: write stalled") from None
                await asyncio.sleep(0.002)
                continue
            except OSError as exc:
                self._fail(exc)
                raise TransportError(f"{self.name}: write failed: {exc}") from exc
            view = view[n:]

    async def close(self) -> None:
        self._stop_reading()
        ser, self._serial, self._fd = self._serial, None, None
        if ser is not None:
            try:
                ser.close()
            except OSError:
                pass


class TcpTransport(Transport):
    """An RS-485-to-Ethernet converter in transparent (raw TCP server) mode."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 3.0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.name = f"tcp {host}:{port}"
        self.connect_timeout = connect_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task | None = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None and self._error is None

    async def open(self) -> None:
        await self.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout=self.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise TransportError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        self._reset_rx()
        self._writer = writer
        self._pump = asyncio.create_task(self._run_pump(reader), name=f"dlt645 rx {self.host}:{self.port}")

    async def _run_pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    self._fail(EOFError("connection closed by the converter"))
                    return
                self._push(data)
        except asyncio.CancelledError:
            raise
        except (OSError, ConnectionError) as exc:
            self._fail(exc)

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise TransportError(f"{self.name}: not open")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, ConnectionError) as exc:
            self._fail(exc)
            raise TransportError(f"{self.name}: write failed: {exc}") from exc

    async def close(self) -> None:
        pump, self._pump = self._pump, None
        writer, self._writer = self._writer, None
        if pump is not None:
            pump.cancel()
            try:
                await pump
            except (asyncio.CancelledError, Exception):
                pass
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass


# ---------------------------------------------------------------------------------------------
# The client


@dataclass
class ClientStats:
    """Link health: counts by outcome, the last success (unix seconds) and the last error."""

    requests: int = 0
    successes: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by Dlt645Error.kind
    stray_frames: int = 0  # valid frames on the line that did not answer the pending request
    stale_bytes: int = 0  # bytes left over from earlier exchanges, dropped before a request
    last_success: float | None = None
    last_error: str | None = None

    def count_error(self, exc: Dlt645Error) -> None:
        self.errors[exc.kind] = self.errors.get(exc.kind, 0) + 1
        self.last_error = f"{exc.kind}: {exc}"


AddressLike = str


class Dlt645Client:
    """DL/T 645-2007 master on one line (one serial port, or one TCP converter).

    ``address`` arguments are the 12-digit meter number as printed on the meter ("000000000001");
    the wildcard "AAAAAAAAAAAA" reaches the single meter of a point-to-point line.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = 1.0,
        preamble: int = MAX_PREAMBLE,
        inter_frame_delay: float = 0.0,
        checksum_grace: float = 0.1,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.checksum_grace = checksum_grace
        self.preamble = preamble
        self.inter_frame_delay = inter_frame_delay
        self.reader = FrameReader()
        self.stats = ClientStats()
        self._lock = asyncio.Lock()
        self._last_io = 0.0

    @classmethod
    def serial(
        cls,
        path: str,
        *,
        baudrate: int = 2400,
        bytesize: int = 8,
        parity: str = "E",
        stopbits: float = 1,
        **kwargs,
    ) -> "Dlt645Client":
        return cls(SerialTransport(path, baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits), **kwargs)

    @classmethod
    def tcp(cls, host: str, port: int, *, connect_timeout: float = 3.0, **kwargs) -> "Dlt645Client":
        return cls(TcpTransport(host, port, connect_timeout=connect_timeout), **kwargs)

    async def connect(self) -> None:
        if not self.transport.is_open:
            await self.transport.open()

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> "Dlt645Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- public reads --------------------------------------------------------------------------

    async def read_address(self, *, timeout: float | None = None) -> str:
        """Read communication address (0x13 to AA..AA): the printed address of the one meter on the line."""
        return await self._transact(
            build_read_address(preamble=self.preamble), address=WILDCARD_ADDRESS, function=C_READ_ADDRESS,
            di=None, timeout=timeout, parse=parse_read_address_reply,
        )

    async def read_raw(self, address: AddressLike, di: int, *, timeout: float | None = None) -> bytes:
        """The value bytes (BCD, LSB first) of any data identifier, in or out of the table."""
        return await self._transact(
            build_read_data(address, di, preamble=self.preamble), address=address, function=C_READ_DATA,
            di=di, timeout=timeout, parse=lambda frame: parse_read_data_reply(frame, di),
        )

    async def read(self, address: AddressLike, di: int | str | DataIdentifier, *, timeout: float | None = None) -> float:
        """One value in the identifier's wire unit (kWh, V, A, kW, Hz); unknown DIs raise UnknownIdentifierError."""
        row = lookup(di)

        def parse(frame: Frame) -> float:
            raw = parse_read_data_reply(frame, row.di)
            if len(raw) != row.length:
                raise UnexpectedResponseError(
                    f"DI {row.di:08X} ({row.name}) carries {row.length} value bytes, the reply has {len(raw)}"
                )
            return row.decode(raw)

        return await self._transact(
            build_read_data(address, row.di, preamble=self.preamble), address=address, function=C_READ_DATA,
            di=row.di, timeout=timeout, parse=parse,
        )

    async def read_many(
        self,
        address: AddressLike,
        dis: Iterable[int | str | DataIdentifier],
        *,
        skip_abnormal: bool = False,
        timeout: float | None = None,
    ) -> dict[int, float]:
        """{DI: value}, one request per identifier, in order.

        With ``skip_abnormal`` an identifier the meter refuses (abnormal reply, e.g. "no data
        requested" for phase B on a single-phase meter) is left out instead of raising; it is
        still counted in ``stats.errors['abnormal']``. Every other error stops the poll and raises:
        a meter that does not answer one request will not answer the next.
        """
        rows = [lookup(di) for di in dis]  # unknown identifiers fail before anything is sent
        out: dict[int, float] = {}
        for row in rows:
            try:
                out[row.di] = await self.read(address, row, timeout=timeout)
            except AbnormalResponseError:
                if not skip_abnormal:
                    raise
        return out

    # -- the exchange --------------------------------------------------------------------------

    async def _transact(
        self, request: bytes, *, address: str, function: int, di: int | None, timeout: float | None,
        parse: Callable[[Frame], T],
    ) -> T:
        want = address_to_wire(address)
        timeout = self.timeout if timeout is None else timeout
        async with self._lock:
            self.stats.requests += 1
            try:
                frame = await self._exchange(request, want, function, di, timeout)
                value = parse(frame)
            except Dlt645Error as exc:
                self.stats.count_error(exc)
                raise
            self.stats.successes += 1
            self.stats.last_success = time.time()
            return value

    async def _exchange(self, request: bytes, want: bytes, function: int, di: int | None, timeout: float) -> Frame:
        loop = asyncio.get_running_loop()
        try:
            if not self.transport.is_open:
                await self.transport.open()
            if self.inter_frame_delay > 0:
                wait = self._last_io + self.inter_frame_delay - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            stale = self.transport.discard_input() + self.reader.pending
            if stale:  # leftovers of an earlier exchange: a late reply must not answer this request
                log.debug("%s: dropping %d stale bytes", self.transport.name, stale)
                self.stats.stale_bytes += stale
                self.reader.reset()
            log.debug("%s TX %s", self.transport.name, request.hex(" "))
            await self.transport.write(request)
            return await self._await_reply(loop, want, function, di, timeout)
        except TransportError:
            await self.transport.close()
            raise
        finally:
            self._last_io = loop.time()

    async def _await_reply(self, loop, want: bytes, function: int, di: int | None, timeout: float) -> Frame:
        deadline = loop.time() + timeout
        checksum_errors_before = self.reader.checksum_errors
        other_address: str | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    chunk = await self.transport.read_some()
            except TimeoutError:
                break
            log.debug("%s RX %s", self.transport.name, chunk.hex(" "))
            frames = self.reader.feed(chunk)
            if self.reader.checksum_errors > checksum_errors_before:
                # A corrupted reply is almost always *the* reply: the meter will not send another,
                # so wait only a little longer for a valid one instead of the whole timeout.
                deadline = min(deadline, loop.time() + self.checksum_grace)
            for frame in frames:
                if not frame.is_response or frame.function != function:
                    self.stats.stray_frames += 1  # our own echo, or a reply to something else
                    continue
                if not address_matches(want, frame.address):
                    other_address = frame.address_str
                    self.stats.stray_frames += 1
                    continue
                raise_if_abnormal(frame, di)
                if di is not None and frame.di != di:
                    self.stats.stray_frames += 1  # a late reply to an earlier request
                    continue
                return frame
        wanted = "".join(f"{b:02X}" for b in reversed(want))
        if other_address is not None:
            raise AddressMismatchError(wanted, other_address)
        if self.reader.checksum_errors > checksum_errors_before:
            raise ChecksumError(
                f"no valid reply from {wanted} within {timeout:g} s: "
                f"{self.reader.checksum_errors - checksum_errors_before} frame(s) with a bad checksum"
            )
        raise ResponseTimeoutError(f"no reply from {wanted} within {timeout:g} s on {self.transport.name}")

