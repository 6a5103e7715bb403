"""Exceptions of dispatchkit.zerobuffer, with zerobuffer-ipc's names,
hierarchy and default messages (code catching the peer's exceptions
catches ours)."""


class ZeroBufferException(Exception):
    """Base class of every ZeroBuffer error."""


class WriterDeadException(ZeroBufferException):
    """The writer's process died, or it left and every frame was read."""

    def __init__(self, message: str = "Writer process is dead") -> None:
        super().__init__(message)


class ReaderDeadException(ZeroBufferException):
    """The reader's process died or closed the buffer."""

    def __init__(self, message: str = "Reader process is dead") -> None:
        super().__init__(message)


class WriterAlreadyConnectedException(ZeroBufferException):
    """Another live writer is connected to the buffer."""

    def __init__(self,
                 message: str = "Another writer is already connected") -> None:
        super().__init__(message)


class ReaderAlreadyConnectedException(ZeroBufferException):
    """Another live reader owns a buffer of that name."""

    def __init__(self,
                 message: str = "Another reader is already connected") -> None:
        super().__init__(message)


class BufferFullException(ZeroBufferException):
    """No space came free within the writer's write_timeout."""

    def __init__(self, message: str = "Buffer is full") -> None:
        super().__init__(message)


class FrameTooLargeException(ZeroBufferException):
    """The frame plus its 16-byte header exceeds the payload ring."""

    def __init__(self,
                 message: str = "Frame size exceeds buffer capacity") -> None:
        super().__init__(message)


class InvalidFrameSizeException(ZeroBufferException):
    """A frame of zero bytes (size 0 marks a wrap on the wire)."""

    def __init__(self, message: str =
                 "Invalid frame size (zero or too large)") -> None:
        super().__init__(message)


class SequenceError(ZeroBufferException):
    """A frame carried another sequence number than the one expected."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"Sequence error: expected {expected}, got {got}")
        self.expected = expected
        self.got = got

    def __reduce__(self) -> "tuple[type, tuple[int, int]]":
        return (type(self), (self.expected, self.got))


class MetadataAlreadyWrittenException(ZeroBufferException):
    """Metadata is written once per buffer."""

    def __init__(self,
                 message: str = "Metadata has already been written") -> None:
        super().__init__(message)


class InvalidBufferNameException(ZeroBufferException, ValueError):
    """A buffer name that cannot name shared objects safely (dispatchkit's
    addition: also a ValueError)."""


__all__ = [
    "ZeroBufferException", "WriterDeadException", "ReaderDeadException",
    "WriterAlreadyConnectedException", "ReaderAlreadyConnectedException",
    "BufferFullException", "FrameTooLargeException",
    "InvalidFrameSizeException", "SequenceError",
    "MetadataAlreadyWrittenException", "InvalidBufferNameException",
]
