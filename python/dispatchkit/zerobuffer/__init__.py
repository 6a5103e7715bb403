"""dispatchkit.zerobuffer: zero-copy frame IPC through shared memory,
binary compatible with zerobuffer-ipc (``import dispatchkit.zerobuffer as
zerobuffer``) and its C++/C# siblings, in C.

A :class:`Reader` creates a buffer; one :class:`Writer` connects to it and
writes frames; the reader gets each frame as a zero-copy view of shared
memory. Duplex (request/response) channels are two buffers. See
docs/zerobuffer.md for the protocol and where we differ from the peers.
"""
from dispatchkit import _dk

from . import exceptions as _exceptions
from .exceptions import (BufferFullException, FrameTooLargeException,
                         InvalidBufferNameException,
                         InvalidFrameSizeException,
                         MetadataAlreadyWrittenException,
                         ReaderAlreadyConnectedException,
                         ReaderDeadException, SequenceError,
                         WriterAlreadyConnectedException,
                         WriterDeadException, ZeroBufferException)

_dk._zb_set_exceptions(_exceptions)

from .core import Frame, Reader, Writer  # noqa: E402
from .types import (BLOCK_ALIGNMENT, OIEB, BufferConfig,  # noqa: E402
                    FrameHeader, ProtocolVersion, align_to_boundary)
from .duplex import (DuplexChannelFactory, DuplexClient,  # noqa: E402
                     DuplexResponse, ErrorEventArgs, IDuplexChannelFactory,
                     IDuplexClient, IDuplexServer, IImmutableDuplexServer,
                     IMutableDuplexServer, ImmutableDuplexServer,
                     ProcessingMode)

# Ours, not the peer's: the wire protocol version is ProtocolVersion
# (1.0.0), and zerobuffer-ipc's own release number says nothing about this
# package.
from dispatchkit._version import __version__  # noqa: E402

__all__ = [
    "Reader", "Writer", "BufferConfig", "Frame", "OIEB", "FrameHeader",
    "ProtocolVersion", "align_to_boundary", "BLOCK_ALIGNMENT",
    "ZeroBufferException", "WriterDeadException", "ReaderDeadException",
    "WriterAlreadyConnectedException", "ReaderAlreadyConnectedException",
    "BufferFullException", "FrameTooLargeException", "SequenceError",
    "InvalidFrameSizeException", "MetadataAlreadyWrittenException",
    "InvalidBufferNameException", "ErrorEventArgs",
    "DuplexChannelFactory", "DuplexClient", "ImmutableDuplexServer",
    "IDuplexClient", "IDuplexServer", "IImmutableDuplexServer",
    "IMutableDuplexServer", "IDuplexChannelFactory", "DuplexResponse",
    "ProcessingMode",
]
