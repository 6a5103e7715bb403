"""Named cross-process primitives of dispatchkit.sync (fastipc's
NamedEvent, NamedMutex and NamedSemaphore): one primitive of
dispatchkit._dk on a GuardedSharedMemory segment named after the object,
with fastipc's names, sizes and layouts
(``/__pyfastipc_{event,mutex,sema}_<name>``), so that fastipc and
dispatchkit processes share one object. The segment's lifetime (who
creates it, who removes it, what happens when a user dies) is the
PID-directory protocol of ``_pid_registry``, drawn there.
"""
import logging
import typing
from types import TracebackType
from typing import Optional, Type

from dispatchkit._dk import SyncAtomicU32 as _AtomicU32
from dispatchkit._dk import SyncEvent as _Event
from dispatchkit._dk import SyncMutex as _Mutex
from dispatchkit._dk import SyncSemaphore as _Semaphore
from dispatchkit._pid_registry import (
    GuardedSharedMemory,
    NoShmFoundError,
    check_name,
)

__all__ = ["GuardedSharedMemory", "NoShmFoundError", "NamedEvent",
           "NamedMutex", "NamedSemaphore"]

EVENT_PREFIX = "__pyfastipc_event_"
MUTEX_PREFIX = "__pyfastipc_mutex_"
SEMAPHORE_PREFIX = "__pyfastipc_sema_"
_MUTEX_MAGIC = 0x4D555458

_log = logging.getLogger("dispatchkit.sync")


class _ClosedPrimitive:
    """Stands in for a closed named object's primitive: any use raises a
    clear ValueError (as a closed file does) instead of an AttributeError
    about None."""

    def __init__(self, owner: "_Named") -> None:
        self._what = f"{type(owner).__name__}({owner.name!r})"

    def __getattr__(self, attr: str) -> "typing.NoReturn":
        raise ValueError(f"{self._what} is closed")


class _Named:
    """Common lifetime of the named primitives: close() drops the
    primitive, then the segment; usable as a context manager for that
    only where the class does not define its own (NamedMutex locks)."""

    _shm: Optional[GuardedSharedMemory] = None
    _name: str

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        """Detach from the named object (unlinked by the last user).
        Using the object afterwards raises ValueError."""
        # Each subclass types its own _prim; all of them drop it here.
        setattr(self, "_prim", _ClosedPrimitive(self))
        if self._shm is not None:
            self._shm.close()

    def _state(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        prim = getattr(self, "_prim", None)
        live = prim is not None and not isinstance(prim, _ClosedPrimitive)
        state = self._state() if live else "closed"
        return f"<{type(self).__name__} {self._name!r} {state}>"


class NamedEvent(_Named):
    """A cross-process manual-reset event by name (fastipc's NamedEvent:
    shared memory ``__pyfastipc_event_<name>``, one 4-byte word).

    ``wait`` returns True as soon as it sees the event set, at once if it
    already is (fastipc returns False then), and never reports a spurious
    wake-up as the event.
    """

    def __init__(self, name: str, *, mode: int = 0o600) -> None:
        check_name(name, EVENT_PREFIX)
        self._name = name
        self._shm = GuardedSharedMemory(EVENT_PREFIX + name, size=4,
                                        mode=mode)
        self._prim = _Event(self._shm.buf[:4], shared=True)

    def set(self) -> None:
        """Set the event, waking every waiter in every process."""
        self._prim.set()

    def clear(self) -> None:
        """Reset the event."""
        self._prim.clear()

    def wait(self, timeout_ns: int = -1) -> bool:
        """Wait until set; False after timeout_ns (negative: forever)."""
        return self._prim.wait(timeout_ns)

    def is_set(self) -> bool:
        return self._prim.is_set()

    def _state(self) -> str:
        return "set" if self._prim.is_set() else "clear"

    def __enter__(self) -> "NamedEvent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NamedMutex(_Named):
    """A cross-process mutex by name (fastipc's NamedMutex: shared memory
    ``__pyfastipc_mutex_<name>``, fastipc's 64-byte Mutex header).

    Ownership is per thread; a holder whose process died is taken over by
    a waiter, which ``owner_died`` then reports (see ``Mutex``).
    """

    def __init__(self, name: str, *, mode: int = 0o600) -> None:
        check_name(name, MUTEX_PREFIX)
        self._name = name
        self._shm = GuardedSharedMemory(MUTEX_PREFIX + name, size=64,
                                        mode=mode)
        header = self._shm.buf[:64]
        # fastipc's creator zeroes the whole header after creating it,
        # magic included (its attachers rewrite it): accept that.
        magic = _AtomicU32(header[:4])
        magic.cas(0, _MUTEX_MAGIC)
        del magic
        self._prim = _Mutex(header, shared=True)

    def _took_over(self) -> None:
        # Logged here, where the Python layer sees it; owner_died tells
        # the caller, who must check the data the dead holder left.
        if self._prim.owner_died:
            _log.warning("NamedMutex %r taken over from a holder whose "
                         "process died holding it", self._name)

    def acquire(self) -> bool:
        """Block until held (Ctrl-C interrupts). True."""
        got = self._prim.acquire()
        self._took_over()
        return got

    def acquire_ns(self, timeout_ns: int = -1, spin: int = 16) -> bool:
        got = bool(self._prim.acquire_ns(timeout_ns, spin))
        if got:
            self._took_over()
        return got

    def try_acquire(self) -> bool:
        got = bool(self._prim.try_acquire())
        if got:
            self._took_over()
        return got

    def release(self) -> None:
        """RuntimeError if the caller does not hold it."""
        self._prim.release()

    def try_release(self) -> bool:
        """Release; False (instead of RuntimeError) if not the holder."""
        try:
            self._prim.release()
            return True
        except RuntimeError:
            return False

    def force_release(self) -> None:
        """Release whoever holds it (recovery)."""
        self._prim.force_release()

    def owner_pid(self) -> int:
        return int(self._prim.owner_pid())

    def last_acquired_ns(self) -> int:
        return int(self._prim.last_acquired_ns())

    def _state(self) -> str:
        pid = self._prim.owner_pid()
        return f"owner={pid}" if pid else "unlocked"

    @property
    def owner_died(self) -> bool:
        """True if the last acquisition through this object took the mutex
        over from a process that died holding it."""
        return self._prim.owner_died

    def __enter__(self) -> "NamedMutex":
        self._prim.acquire()
        self._took_over()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self._prim.release()

    async def __aenter__(self) -> "NamedMutex":
        """``async with named_mutex:`` acquire it through
        dispatchkit.asyncio (the futex watcher; no thread parked)."""
        from dispatchkit import asyncio as _dkio
        await _dkio.wait(self)
        self._took_over()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._prim.release()


class NamedSemaphore(_Named):
    """A cross-process counting semaphore by name (fastipc's
    NamedSemaphore: shared memory ``__pyfastipc_sema_<name>``, fastipc's
    64-byte Semaphore header). ``initial`` applies only when this call
    creates the semaphore. ``fastipc_compat=True`` also wakes fastipc's
    waiters (one futex syscall per post from zero; see ``Semaphore``).
    """

    def __init__(self, name: str, initial: Optional[int] = None, *,
                 mode: int = 0o600, fastipc_compat: bool = False) -> None:
        check_name(name, SEMAPHORE_PREFIX)
        if initial is not None:
            if not isinstance(initial, int):
                raise TypeError("initial must be an int or None")
            if initial < 0:
                raise OverflowError(
                    "can't convert negative value to unsigned int")
            if initial > 0xFFFFFFFF:
                raise OverflowError("initial out of range for uint32")
        self._name = name
        self._shm = GuardedSharedMemory(SEMAPHORE_PREFIX + name, size=64,
                                        mode=mode)
        init_val = initial if self._shm.created else None
        self._prim = _Semaphore(self._shm.buf[:64], initial=init_val,
                                shared=True, fastipc_compat=fastipc_compat)

    def last_acquired_ns(self) -> int:
        return int(self._prim.last_acquired_ns())

    def last_pid(self) -> int:
        return int(self._prim.last_pid())

    def post(self, n: int = 1) -> None:
        """Add n units and wake that many waiters."""
        self._prim.post(n)

    def post1(self) -> None:
        self._prim.post1()

    def wait(self, blocking: bool = True, timeout: float = -1.0,
             spin: int = 128) -> bool:
        """Take one unit; timeout in seconds (negative: forever)."""
        return self._prim.wait(blocking, int(timeout * 1_000_000_000), spin)

    def wait_ns(self, blocking: bool = True, timeout_ns: int = -1,
                spin: int = 128) -> bool:
        """Take one unit; timeout in nanoseconds (negative: forever)."""
        return self._prim.wait(blocking, timeout_ns, spin)

    def value(self) -> int:
        return self._prim.value()

    def _state(self) -> str:
        return f"value={self._prim.value()}"

    def __enter__(self) -> bool:
        """``with sem:`` as threading.Semaphore: wait() with no timeout."""
        return self._prim.wait(True, -1)

    def __exit__(self, *exc: object) -> None:
        self._prim.post1()

    async def __aenter__(self) -> bool:
        """``async with sem:`` take a unit through dispatchkit.asyncio (the
        futex watcher; no thread parked). True."""
        from dispatchkit import asyncio as _dkio
        return await _dkio.wait(self)

    async def __aexit__(self, *exc: object) -> None:
        self._prim.post1()

    P = wait
    acquire = wait
    V = post
    release = post
