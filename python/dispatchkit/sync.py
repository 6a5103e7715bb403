"""Futex synchronisation on caller-supplied buffers, with the API of
fastipc (``import dispatchkit.sync as fastipc``).

Implemented: ``FutexWord``, ``AtomicU32``, ``AtomicU64`` (the same C
atomics as ``dispatchkit.atomics``), and ``Mutex`` and ``Semaphore`` on
fastipc's 64-byte layouts, usable at the same time as fastipc on the same
memory. Not implemented yet: ``NamedEvent``, ``NamedMutex``,
``NamedSemaphore``, ``GuardedSharedMemory``.
"""
import os as _os

from dispatchkit._dk import SyncAtomicU32 as AtomicU32
from dispatchkit._dk import SyncAtomicU64 as AtomicU64
from dispatchkit._dk import SyncFutexWord as FutexWord
from dispatchkit._dk import SyncMutex as Mutex
from dispatchkit._dk import SyncSemaphore as Semaphore

__all__ = ["FutexWord", "AtomicU32", "AtomicU64", "Mutex", "Semaphore",
           "align_to_cacheline_size"]


def align_to_cacheline_size(size: int) -> int:
    """Round size up to the cache line size (CACHE_LINE_SIZE, default 64)."""
    line = int(_os.environ.get("CACHE_LINE_SIZE", 64))
    return (size + line - 1) // line * line
