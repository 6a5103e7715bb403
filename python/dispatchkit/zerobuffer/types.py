"""Protocol types of ZeroBuffer v1.0.0: the 128-byte OIEB, the 16-byte
frame header, the protocol version and BufferConfig, with the same names,
struct formats and helpers as zerobuffer-ipc."""
import struct
from dataclasses import dataclass, field
from typing import Tuple

BLOCK_ALIGNMENT = 64


def align_to_boundary(size: int, alignment: int = BLOCK_ALIGNMENT) -> int:
    """Round size up to a multiple of alignment."""
    return (size + alignment - 1) // alignment * alignment


@dataclass
class ProtocolVersion:
    major: int = 1
    minor: int = 0
    patch: int = 0
    reserved: int = 0

    FORMAT = "<4B"
    SIZE = 4

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, self.major, self.minor, self.patch,
                           self.reserved)

    @classmethod
    def unpack(cls, data: bytes) -> "ProtocolVersion":
        return cls(*struct.unpack(cls.FORMAT, bytes(data[:cls.SIZE])))


@dataclass
class OIEB:
    """Operation Info Exchange Block: the segment's first 128 bytes."""
    oieb_size: int = 128
    version: ProtocolVersion = field(default_factory=ProtocolVersion)
    metadata_size: int = 0
    metadata_free_bytes: int = 0
    metadata_written_bytes: int = 0
    payload_size: int = 0
    payload_free_bytes: int = 0
    payload_write_pos: int = 0
    payload_read_pos: int = 0
    payload_written_count: int = 0
    payload_read_count: int = 0
    writer_pid: int = 0
    reader_pid: int = 0
    _reserved: Tuple[int, int, int, int] = (0, 0, 0, 0)

    FORMAT = "<I4B11Q4Q"
    SIZE = 128

    def pack(self) -> bytes:
        v = self.version
        return struct.pack(
            self.FORMAT, self.oieb_size, v.major, v.minor, v.patch,
            v.reserved, self.metadata_size, self.metadata_free_bytes,
            self.metadata_written_bytes, self.payload_size,
            self.payload_free_bytes, self.payload_write_pos,
            self.payload_read_pos, self.payload_written_count,
            self.payload_read_count, self.writer_pid, self.reader_pid,
            *self._reserved)

    @classmethod
    def unpack(cls, data: bytes) -> "OIEB":
        if len(data) < cls.SIZE:
            raise ValueError(f"Invalid OIEB data size: {len(data)} < "
                             f"{cls.SIZE}")
        f = struct.unpack(cls.FORMAT, bytes(data[:cls.SIZE]))
        # mypy cannot count *f[5:16] (11 fields, none of them _reserved).
        return cls(f[0], ProtocolVersion(*f[1:5]), *f[5:16],  # type: ignore[misc]
                   _reserved=tuple(f[16:20]))

    def calculate_used_bytes(self) -> int:
        """Bytes between the read and write positions."""
        if self.payload_write_pos >= self.payload_read_pos:
            return self.payload_write_pos - self.payload_read_pos
        return (self.payload_size - self.payload_read_pos
                + self.payload_write_pos)


@dataclass
class FrameHeader:
    payload_size: int = 0
    sequence_number: int = 0

    FORMAT = "<2Q"
    SIZE = 16
    WRAP_MARKER = 0

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, self.payload_size,
                           self.sequence_number)

    @classmethod
    def unpack(cls, data: bytes) -> "FrameHeader":
        if len(data) < cls.SIZE:
            raise ValueError(f"Invalid frame header size: {len(data)} < "
                             f"{cls.SIZE}")
        return cls(*struct.unpack(cls.FORMAT, bytes(data[:cls.SIZE])))

    def is_wrap_marker(self) -> bool:
        return self.payload_size == self.WRAP_MARKER


@dataclass
class BufferConfig:
    """Sizes of a new buffer; both are rounded up to 64 bytes.

    metadata_size may be 0 (a buffer without metadata, as the C++ peer
    allows); payload_size must be positive.
    """
    metadata_size: int = 1024
    payload_size: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.metadata_size < 0:
            raise ValueError("metadata_size must be >= 0")
        if self.payload_size <= 0:
            raise ValueError("payload_size must be positive")


# Frame is a C type (dispatchkit.zerobuffer.core); zerobuffer-ipc defines
# it in its types module and its test helpers import it from there.
from .core import Frame  # noqa: E402,F401
