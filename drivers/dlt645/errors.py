"""Errors of the DL/T 645 driver: one class per way a request can fail, so health counts by kind."""
from __future__ import annotations


class Dlt645Error(Exception):
    """Base of every DL/T 645 error. ``kind`` names the failure for health counters."""

    kind = "error"


class FrameError(Dlt645Error, ValueError):
    """Bytes that are not one well-formed frame (bad start, length, end byte...)."""

    kind = "frame"


class ChecksumError(FrameError):
    """A frame whose structure is right but whose checksum byte is wrong."""

    kind = "checksum"


class InvalidBcdError(Dlt645Error, ValueError):
    """Value bytes that are not packed BCD (a nibble above 9), or a value a format cannot hold."""

    kind = "bcd"


class UnknownIdentifierError(Dlt645Error, KeyError):
    """A data identifier that is not in the identifier table."""

    kind = "unknown_di"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown data identifier"


class AbnormalResponseError(Dlt645Error):
    """The meter answered with an abnormal reply (control | 0xC0) and one error byte."""

    kind = "abnormal"

    def __init__(self, address: str, control: int, error_byte: int, names: tuple[str, ...], di: int | None = None):
        self.address = address
        self.control = control
        self.error_byte = error_byte
        self.names = names
        self.di = di
        what = f" for DI {di:08X}" if di is not None else ""
        super().__init__(
            f"meter {address} answered abnormally{what}: control 0x{control:02X}, error byte 0x{error_byte:02X}"
            f" ({', '.join(names) or 'no error bit set'})"
        )


class ResponseTimeoutError(Dlt645Error, TimeoutError):
    """No matching reply before the deadline (and no more specific reason was seen)."""

    kind = "timeout"


class AddressMismatchError(Dlt645Error):
    """A reply came back, but from another address than the one asked (and none from the right one)."""

    kind = "address_mismatch"

    def __init__(self, expected: str, got: str):
        self.expected = expected
        self.got = got
        super().__init__(f"asked meter {expected}, reply came from {got}")


class UnexpectedResponseError(Dlt645Error):
    """A reply from the right meter that does not answer the request (wrong DI echo, wrong length)."""

    kind = "unexpected"


class TransportError(Dlt645Error, ConnectionError):
    """The serial port or TCP connection failed or closed."""

    kind = "transport"
