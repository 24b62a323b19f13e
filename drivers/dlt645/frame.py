"""DL/T 645-2007 frame codec and a streaming reader that never raises on garbage.

Wire layout (see /work/shared/reference/dlt645.md, section 2)::

    [FE x 0..4] 68 A0 A1 A2 A3 A4 A5 68 C L DATA[0..L-1] CS 16

* the address is BCD, least significant byte first on the wire: meter "123456789012" is sent as
  ``12 90 78 56 34 12``. In this module an *address string* is always the printed order (what is on
  the nameplate) and ``Frame.address`` is always the 6 wire bytes;
* every DATA byte is sent as (value + 0x33) mod 256; ``Frame.data`` holds the decoded bytes;
* CS is the sum mod 256 of every byte from the first 0x68 through the last DATA byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from drivers.dlt645.errors import AbnormalResponseError, ChecksumError, FrameError, UnexpectedResponseError

PREAMBLE_BYTE = 0xFE
START = 0x68
END = 0x16
DATA_OFFSET = 0x33
MAX_PREAMBLE = 4
HEADER_LEN = 10  # 68 + address(6) + 68 + C + L
MIN_FRAME_LEN = HEADER_LEN + 2  # + CS + 16
MAX_DATA_LEN = 255
MAX_FRAME_LEN = MIN_FRAME_LEN + MAX_DATA_LEN

# Control code bits (reference section 3).
DIR_RESPONSE = 0x80  # D7: 1 = meter -> master
ABNORMAL = 0x40  # D6: 1 = abnormal (error) reply
FOLLOW_UP = 0x20  # D5: 1 = more frames follow
FUNCTION_MASK = 0x1F

C_BROADCAST_TIME = 0x08
C_READ_DATA = 0x11
C_READ_FOLLOW_UP = 0x12
C_READ_ADDRESS = 0x13

WILDCARD_ADDRESS = "AAAAAAAAAAAA"  # read/write communication address; any meter answers
BROADCAST_ADDRESS = "999999999999"  # time sync / freeze; no meter answers

# Error byte of an abnormal reply, bit by bit (reference section 3). A table, not an if chain.
ERROR_BITS: tuple[tuple[int, str, str], ...] = (
    (0x01, "other_error", "other error"),
    (0x02, "no_data_requested", "no requested data (identifier not supported)"),
    (0x04, "unauthorised", "password error / unauthorised"),
    (0x08, "baud_rate_unchangeable", "communication baud rate cannot be changed"),
    (0x10, "year_zones_exceeded", "annual time zone count exceeded"),
    (0x20, "day_periods_exceeded", "daily period count exceeded"),
    (0x40, "rates_exceeded", "tariff (rate) count exceeded"),
)
ERROR_NAMES = {bit: name for bit, name, _ in ERROR_BITS}
ERROR_BIT_OF = {name: bit for bit, name, _ in ERROR_BITS}


def decode_error_byte(error_byte: int) -> tuple[str, ...]:
    """Names of the error bits set in an abnormal reply's error byte, lowest bit first.

    Bit 7 is reserved; if it is set it is reported as ``reserved_bit7`` rather than dropped.
    """
    names = tuple(name for bit, name, _ in ERROR_BITS if error_byte & bit)
    if error_byte & 0x80:
        names += ("reserved_bit7",)
    return names


def encode_error_byte(names: Iterable[str]) -> int:
    """The error byte with the named bits set (the inverse of ``decode_error_byte``)."""
    value = 0
    for name in names:
        if name == "reserved_bit7":
            value |= 0x80
            continue
        try:
            value |= ERROR_BIT_OF[name]
        except KeyError:
            raise ValueError(f"unknown DL/T 645 error bit name {name!r}; known: {sorted(ERROR_BIT_OF)}") from None
    return value


# ---------------------------------------------------------------------------------------------
# Addresses


def _normalise_address(address: str) -> str:
    a = address.strip().replace(" ", "").upper()
    if len(a) != 12 or any(c not in "0123456789A" for c in a):
        raise ValueError(
            f"DL/T 645 address must be 12 decimal digits as printed on the meter (or A for the wildcard), got {address!r}"
        )
    return a


def address_to_wire(address: str) -> bytes:
    """Printed address ("123456789012") -> the 6 wire bytes, least significant byte first."""
    a = _normalise_address(address)
    return bytes(int(a[i : i + 2], 16) for i in range(10, -2, -2))


def address_from_wire(wire: bytes) -> str:
    """6 wire bytes -> printed address. Bytes that are not BCD are shown in hex (e.g. AA)."""
    if len(wire) != 6:
        raise FrameError(f"an address is 6 bytes, got {len(wire)}")
    return "".join(f"{b:02X}" for b in reversed(wire))


def address_matches(requested: bytes, replied: bytes) -> bool:
    """Whether a reply from ``replied`` answers a request sent to ``requested`` (AA bytes match any)."""
    return all(r == 0xAA or r == g for r, g in zip(requested, replied))


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the 6 address bytes as on the wire, the control code, decoded data."""

    address: bytes
    control: int
    data: bytes = b""

    @property
    def address_str(self) -> str:
        return address_from_wire(self.address)

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_response(self) -> bool:
        return bool(self.control & DIR_RESPONSE)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & DIR_RESPONSE) and bool(self.control & ABNORMAL)

    @property
    def has_follow_up(self) -> bool:
        return bool(self.control & FOLLOW_UP)

    @property
    def error_byte(self) -> int | None:
        """The error byte of an abnormal reply (None if this is not one, or it carries no byte)."""
        if not self.is_abnormal or not self.data:
            return None
        return self.data[0]

    @property
    def error_names(self) -> tuple[str, ...]:
        eb = self.error_byte
        return () if eb is None else decode_error_byte(eb)

    @property
    def di(self) -> int | None:
        """The data identifier of a read-data request or normal reply (DI0 first on the wire)."""
        if self.function not in (C_READ_DATA, C_READ_FOLLOW_UP) or self.is_abnormal or len(self.data) < 4:
            return None
        return int.from_bytes(self.data[:4], "little")

    def encode(self, preamble: int = MAX_PREAMBLE) -> bytes:
        return encode_frame(self.address, self.control, self.data, preamble=preamble)


def checksum(body: bytes | bytearray | memoryview) -> int:
    return sum(body) & 0xFF


def encode_frame(address: bytes | str, control: int, data: bytes = b"", *, preamble: int = MAX_PREAMBLE) -> bytes:
    """Encode a frame. ``address`` is 6 wire bytes or a printed address string; ``data`` is unencoded."""
    wire = address_to_wire(address) if isinstance(address, str) else bytes(address)
    if len(wire) != 6:
        raise ValueError(f"an address is 6 bytes, got {len(wire)}")
    if not 0 <= control <= 0xFF:
        raise ValueError(f"control code must be one byte, got {control}")
    if len(data) > MAX_DATA_LEN:
        raise ValueError(f"data is at most {MAX_DATA_LEN} bytes, got {len(data)}")
    if not 0 <= preamble <= MAX_PREAMBLE:
        raise ValueError(f"the wake-up preamble is 0..{MAX_PREAMBLE} bytes of 0xFE, got {preamble}")
    body = bytearray((START,))
    body += wire
    body += bytes((START, control, len(data)))
    body += bytes((b + DATA_OFFSET) & 0xFF for b in data)
    body.append(checksum(body))
    body.append(END)
    return bytes((PREAMBLE_BYTE,) * preamble) + bytes(body)


def _check_at(buf: bytes | bytearray, i: int) -> tuple[str, int]:
    """Classify the candidate frame starting at ``buf[i] == 0x68``.

    Returns (verdict, end) where verdict is "ok", "short" (need more bytes), "no_start2",
    "no_end" or "checksum", and end is the index one past the frame (valid for ok/no_end/checksum).
    """
    n = len(buf)
    if n - i < HEADER_LEN:
        return "short", 0
    if buf[i + 7] != START:
        return "no_start2", 0
    end = i + MIN_FRAME_LEN + buf[i + 9]
    if end > n:
        return "short", end
    if buf[end - 1] != END:
        return "no_end", end
    if checksum(memoryview(buf)[i : end - 2]) != buf[end - 2]:
        return "checksum", end
    return "ok", end


def _frame_at(buf: bytes | bytearray, i: int, end: int) -> Frame:
    return Frame(
        bytes(buf[i + 1 : i + 7]),
        buf[i + 8],
        bytes((b - DATA_OFFSET) & 0xFF for b in buf[i + HEADER_LEN : end - 2]),
    )


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one frame (with an optional 0xFE preamble); raise on anything else.

    Raises ``ChecksumError`` for a wrong checksum and ``FrameError`` for every other defect, naming it.
    """
    raw = bytes(raw)
    i = 0
    while i < len(raw) and raw[i] == PREAMBLE_BYTE:
        i += 1
    if i == len(raw):
        raise FrameError("no frame: empty or only preamble bytes")
    if raw[i] != START:
        raise FrameError(f"expected start byte 0x68 at offset {i}, got 0x{raw[i]:02X}")
    verdict, end = _check_at(raw, i)
    if verdict == "short":
        raise FrameError(f"truncated frame: {len(raw) - i} bytes after the preamble, need {max(end - i, HEADER_LEN + 2)}")
    if verdict == "no_start2":
        raise FrameError(f"expected the second start byte 0x68 at offset {i + 7}, got 0x{raw[i + 7]:02X}")
    if verdict == "no_end":
        raise FrameError(f"expected end byte 0x16 at offset {end - 1}, got 0x{raw[end - 1]:02X}")
    if verdict == "checksum":
        raise ChecksumError(f"checksum 0x{raw[end - 2]:02X} on the wire, computed 0x{checksum(raw[i:end - 2]):02X}")
    if end != len(raw):
        raise FrameError(f"{len(raw) - end} trailing bytes after the end byte")
    return _frame_at(raw, i, end)


# ---------------------------------------------------------------------------------------------
# Streaming reader


class FrameReader:
    """Feed bytes in chunks of any size; get every valid frame out. Never raises on input.

    A *valid* frame has 0x68 at offsets 0 and 7, a length byte that fits, the right checksum and
    0x16 at its end. Anything else is skipped one byte at a time, so the reader resynchronises on
    the next 0x68 even when garbage, a truncated frame or a corrupted frame came first. An
    incomplete candidate is kept until more bytes arrive, unless a complete valid frame already
    sits later in the buffer: then the candidate was garbage and is dropped, so a fake start byte
    with a large length cannot hold back the frames behind it.

    Counters (cumulative): ``frames``, ``frame_bytes`` (0x68..0x16 spans), ``preamble_bytes``
    (0xFE bytes, up to 4, right before a frame), ``discarded_bytes`` (everything else dropped) and
    ``checksum_errors`` (complete candidates with the end byte in place and a wrong checksum).
    Invariant: bytes fed == frame_bytes + preamble_bytes + discarded_bytes + pending.
    """

    __slots__ = ("_buf", "frames", "frame_bytes", "preamble_bytes", "discarded_bytes", "checksum_errors", "bytes_fed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.frame_bytes = 0
        self.preamble_bytes = 0
        self.discarded_bytes = 0
        self.checksum_errors = 0
        self.bytes_fed = 0

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of a possible frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop the pending bytes (counted as discarded), e.g. before a new request."""
        self.discarded_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Append bytes and return the frames completed by them, in order."""
        self.bytes_fed += len(data)
        self._buf += data
        return self._drain()

    def _account_skipped(self, start: int, stop: int) -> None:
        """Bytes buf[start:stop] are dropped before a frame: a trailing FE run (max 4) is preamble."""
        buf = self._buf
        k = stop
        while k > start and stop - k < MAX_PREAMBLE and buf[k - 1] == PREAMBLE_BYTE:
            k -= 1
        self.preamble_bytes += stop - k
        self.discarded_bytes += k - start

    def _valid_frame_after(self, i: int) -> int:
        """Index of the first complete valid frame starting after ``i``, or -1."""
        buf = self._buf
        j = buf.find(START, i + 1)
        while j >= 0:
            if _check_at(buf, j)[0] == "ok":
                return j
            j = buf.find(START, j + 1)
        return -1

    def _drain(self) -> list[Frame]:
        buf = self._buf
        out: list[Frame] = []
        skip_from = 0  # bytes before skip_from are already accounted for
        pos = 0
        keep_from = -1  # where the pending tail starts (-1: nothing pending)
        known_valid = -1  # a complete valid frame found by look-ahead
        while True:
            i = buf.find(START, pos)
            if i < 0:
                break
            verdict, end = _check_at(buf, i)
            if verdict == "ok":
                self._account_skipped(skip_from, i)
                out.append(_frame_at(buf, i, end))
                self.frames += 1
                self.frame_bytes += end - i
                pos = skip_from = end
                continue
            if verdict == "short":
                if known_valid <= i:
                    known_valid = self._valid_frame_after(i)
                if known_valid < 0:
                    keep_from = i
                    break
                pos = i + 1  # a valid frame follows: this incomplete candidate was garbage
                continue
            if verdict == "checksum":
                self.checksum_errors += 1
            pos = i + 1
        if keep_from < 0:
            keep_from = len(buf)  # nothing pending but maybe a preamble whose 0x68 is still to come
        # Keep the FE run (at most 4) right in front of the pending part with it.
        stop = keep_from
        while keep_from > skip_from and stop - keep_from < MAX_PREAMBLE and buf[keep_from - 1] == PREAMBLE_BYTE:
            keep_from -= 1
        self.discarded_bytes += keep_from - skip_from
        del buf[:keep_from]
        return out

    def iter_frames(self, chunks: Iterable[bytes]) -> Iterator[Frame]:
        for chunk in chunks:
            yield from self.feed(chunk)


# ---------------------------------------------------------------------------------------------
# Requests and replies


def _di_bytes(di: int) -> bytes:
    if not 0 <= di <= 0xFFFFFFFF:
        raise ValueError(f"a data identifier is 4 bytes, got {di:#x}")
    return di.to_bytes(4, "little")  # DI0 first on the wire


def build_read_address(*, preamble: int = MAX_PREAMBLE) -> bytes:
    """Read communication address (0x13) to the wildcard AA..AA: the one meter on the line answers."""
    return encode_frame(WILDCARD_ADDRESS, C_READ_ADDRESS, b"", preamble=preamble)


def build_read_data(address: str | bytes, di: int, *, preamble: int = MAX_PREAMBLE) -> bytes:
    """Read data (0x11) of one data identifier from one meter."""
    return encode_frame(address, C_READ_DATA, _di_bytes(di), preamble=preamble)


def build_read_address_reply(address: str | bytes, *, preamble: int = MAX_PREAMBLE) -> bytes:
    wire = address_to_wire(address) if isinstance(address, str) else bytes(address)
    return encode_frame(wire, C_READ_ADDRESS | DIR_RESPONSE, wire, preamble=preamble)


def build_read_data_reply(address: str | bytes, di: int, value_bytes: bytes, *, preamble: int = MAX_PREAMBLE) -> bytes:
    return encode_frame(address, C_READ_DATA | DIR_RESPONSE, _di_bytes(di) + bytes(value_bytes), preamble=preamble)


def build_abnormal_reply(address: str | bytes, function: int, error_byte: int, *, preamble: int = MAX_PREAMBLE) -> bytes:
    return encode_frame(address, (function & FUNCTION_MASK) | DIR_RESPONSE | ABNORMAL, bytes((error_byte,)), preamble=preamble)


def raise_if_abnormal(frame: Frame, di: int | None = None) -> None:
    """Raise AbnormalResponseError, with the error bits decoded, if ``frame`` is an abnormal reply."""
    if frame.is_abnormal:
        raise AbnormalResponseError(frame.address_str, frame.control, frame.error_byte or 0, frame.error_names, di)


def parse_read_address_reply(frame: Frame) -> str:
    """The printed address from a normal 0x93 reply (its DATA is the 6 address bytes)."""
    raise_if_abnormal(frame)
    if frame.control & ~FOLLOW_UP != C_READ_ADDRESS | DIR_RESPONSE or len(frame.data) != 6:
        raise UnexpectedResponseError(
            f"not a read-address reply: control 0x{frame.control:02X}, {len(frame.data)} data bytes"
        )
    return address_from_wire(frame.data)


def parse_read_data_reply(frame: Frame, di: int) -> bytes:
    """The value bytes (LSB first, BCD) of a normal 0x91/0xB1 reply echoing ``di``; abnormal replies raise."""
    raise_if_abnormal(frame, di)
    if frame.control & ~FOLLOW_UP != C_READ_DATA | DIR_RESPONSE:
        raise UnexpectedResponseError(f"not a read-data reply: control 0x{frame.control:02X}")
    if len(frame.data) < 4:
        raise UnexpectedResponseError(f"read-data reply with {len(frame.data)} data bytes, no identifier")
    got = int.from_bytes(frame.data[:4], "little")
    if got != di:
        raise UnexpectedResponseError(f"asked DI {di:08X}, reply echoes DI {got:08X}")
    return frame.data[4:]
