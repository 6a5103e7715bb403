"""Lock-free atomic operations on buffers: the API of the ``atomics``
package, as direct C calls. Code written for it runs with
``import dispatchkit.atomics as atomics``.

Widths 1, 2, 4 and 8 bytes, and 16 bytes through the CPU's 16-byte
compare-and-swap; all lock-free and address-free, so they work on memory
shared between processes.
"""
from dispatchkit.atomics._enums import MemoryOrder, OpType
from dispatchkit.atomics._alignment import Alignment
from dispatchkit.atomics.exc import (
    AlignmentError,
    MemoryOrderError,
    UnsupportedOperationException,
    UnsupportedWidthException,
)
from dispatchkit._dk import CmpxchgResult, _atomics_setup

_atomics_setup(AlignmentError, MemoryOrderError, UnsupportedWidthException,
               UnsupportedOperationException, OpType)

from dispatchkit.atomics._types import ANY, BYTES, INT, INTEGRAL, UINT  # noqa
from dispatchkit.atomics._funcs import atomic, atomicview  # noqa: E402

__all__ = [
    "atomic", "atomicview", "ANY", "INTEGRAL", "BYTES", "INT", "UINT",
    "Alignment", "CmpxchgResult", "MemoryOrder", "OpType",
]
