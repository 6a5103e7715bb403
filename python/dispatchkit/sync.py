"""Futex synchronisation on caller-supplied buffers, with the API of
fastipc (``import dispatchkit.sync as fastipc``).

This first part provides the word-level primitives: ``FutexWord``,
``AtomicU32`` and ``AtomicU64`` (the same C atomics as
``dispatchkit.atomics``). ``Mutex``, ``Semaphore`` and the named helpers are
not implemented yet.
"""
from dispatchkit._dk import AtomicU32, AtomicU64, FutexWord

__all__ = ["FutexWord", "AtomicU32", "AtomicU64"]
