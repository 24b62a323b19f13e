"""DL/T 645-2007 (Chinese multi-function electricity meters) over RS-485 or a TCP transparent converter.

``frame``: codec and streaming reader; ``identifiers``: the data identifier table and BCD;
``client``: the asyncio master; ``errors``: one exception class per failure kind.
"""
from drivers.dlt645.client import ClientStats, Dlt645Client, SerialTransport, TcpTransport, Transport
from drivers.dlt645.errors import (
    AbnormalResponseError,
    AddressMismatchError,
    ChecksumError,
    Dlt645Error,
    FrameError,
    InvalidBcdError,
    ResponseTimeoutError,
    TransportError,
    UnexpectedResponseError,
    UnknownIdentifierError,
)
from drivers.dlt645.frame import Frame, FrameReader, decode_error_byte, decode_frame, encode_frame
from drivers.dlt645.identifiers import BY_DI, TABLE, DataIdentifier, lookup, to_fields

__all__ = [
    "AbnormalResponseError", "AddressMismatchError", "BY_DI", "ChecksumError", "ClientStats", "DataIdentifier",
    "Dlt645Client", "Dlt645Error", "Frame", "FrameError", "FrameReader", "InvalidBcdError", "ResponseTimeoutError",
    "SerialTransport", "TABLE", "TcpTransport", "Transport", "TransportError", "UnexpectedResponseError",
    "UnknownIdentifierError", "decode_error_byte", "decode_frame", "encode_frame", "lookup", "to_fields",
]
