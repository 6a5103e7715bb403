"""Futex synchronisation on caller-supplied buffers and by name, with the
API of fastipc 0.1.5 (``import dispatchkit.sync as fastipc``).

Buffer primitives (fastipc keeps them in ``fastipc._primitives``; here they
are at the top level too): ``FutexWord``, ``AtomicU32``, ``AtomicU64``
(the same C atomics as ``dispatchkit.atomics``), and ``Mutex`` and
``Semaphore`` on fastipc's 64-byte layouts, usable at the same time as
fastipc on the same memory. ``Event`` is the 4-byte word under
``NamedEvent``.

Named helpers (fastipc's top level): ``GuardedSharedMemory``,
``NoShmFoundError``, ``NamedEvent``, ``NamedMutex``, ``NamedSemaphore``,
on fastipc's shared memory names and PID-tracking directory
(``$FASTIPC_PID_DIR``, default ``/dev/shm/fastipc``). The named classes
are subclasses of ``Event``, ``Mutex`` and ``Semaphore``: their calls
cost what the primitives' do.

Beyond fastipc: per-thread mutex ownership; ``Mutex.owner_died`` after
taking over from a holder whose process died; ``post(n)`` wakes exactly
n waiters; deadlines; Ctrl-C interrupts every wait; no syscall on
uncontended paths; bad buffers and names raise. See docs/sync.md.
"""
import os as _os

from dispatchkit._dk import SyncAtomicU32 as AtomicU32
from dispatchkit._dk import SyncAtomicU64 as AtomicU64
from dispatchkit._dk import SyncEvent as Event
from dispatchkit._dk import SyncFutexWord as FutexWord
from dispatchkit._dk import SyncMutex as Mutex
from dispatchkit._dk import SyncSemaphore as Semaphore
from dispatchkit._pid_registry import GuardedSharedMemory, NoShmFoundError
from dispatchkit._sync_named import NamedEvent, NamedMutex, NamedSemaphore

__all__ = ["FutexWord", "AtomicU32", "AtomicU64", "Mutex", "Semaphore",
           "Event", "GuardedSharedMemory", "NoShmFoundError", "NamedEvent",
           "NamedMutex", "NamedSemaphore", "align_to_cacheline_size"]


def align_to_cacheline_size(size: int) -> int:
    """Round size up to the cache line size (CACHE_LINE_SIZE, default 64)."""
    line = int(_os.environ.get("CACHE_LINE_SIZE", 64))
    return (size + line - 1) // line * line
