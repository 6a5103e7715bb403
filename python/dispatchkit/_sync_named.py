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
from typing import Optional, Protocol, cast

from dispatchkit._dk import SyncAtomicU32 as _AtomicU32
from dispatchkit._dk import _sync_rebind_methods as _rebind_methods
from dispatchkit._dk import SyncNamedEventBase as _EventBase
from dispatchkit._dk import SyncNamedMutexBase as _MutexBase
from dispatchkit._dk import SyncNamedSemaphoreBase as _SemaphoreBase
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


class _Primitive(Protocol):
    """What _Named uses of the C half of each class (SyncNamed*Base)."""

    @property
    def _closed(self) -> bool: ...

    def _close(self) -> None: ...


class _Named:
    """Common lifetime of the named objects, each a primitive of
    dispatchkit._dk (the class after this one in its bases, whose C
    methods every call reaches directly) on its named segment: close()
    makes the primitive refuse every later call with ValueError, then
    closes the segment."""

    # No layout of its own (the C base has one). Each class below keeps
    # its two attributes in slots, so that its __dict__ is not made until
    # a user sets an attribute of their own: method lookups then take the
    # interpreter's fast path (a made dict cost 8 ns a call on 3.9 and
    # 15 ns on 3.13 here, none on 3.11).
    __slots__ = ()
    _shm: GuardedSharedMemory
    _name: str

    @property
    def _prim(self) -> "_Primitive":
        # Typing only: the C base after this class, seen as such.
        return cast(_Primitive, self)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Calls of the C methods through the class's own descriptors: the
        # interpreter's fast path for them needs the exact type.
        _rebind_methods(cls)

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        """Detach from the named object (unlinked by the last user).
        Using the object afterwards raises ValueError."""
        self._prim._close()
        self._shm.close()

    def _state(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "closed" if self._prim._closed else self._state()
        return f"<{type(self).__name__} {self._name!r} {state}>"


class NamedEvent(_Named, _EventBase):
    """A cross-process manual-reset event by name (fastipc's NamedEvent:
    shared memory ``__pyfastipc_event_<name>``, one 4-byte word).

    ``set()``, ``clear()``, ``is_set()`` and ``wait(timeout_ns=-1)`` are
    ``Event``'s: ``wait`` returns True as soon as it sees the event set,
    at once if it already is (fastipc returns False then), False after
    timeout_ns (negative: forever), and never reports a spurious wake-up
    as the event.
    """

    __slots__ = ("_name", "_shm", "__dict__", "__weakref__")

    def __new__(cls, name: str, *, mode: int = 0o600) -> "NamedEvent":
        check_name(name, EVENT_PREFIX)
        shm = GuardedSharedMemory(EVENT_PREFIX + name, size=4, mode=mode)
        try:
            self = super().__new__(cls, shm.buf[:4], shared=True)
        except BaseException:
            shm.close()
            raise
        self._name, self._shm = name, shm
        return self

    def _state(self) -> str:
        return "set" if self.is_set() else "clear"

    def __enter__(self) -> "NamedEvent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NamedMutex(_Named, _MutexBase):
    """A cross-process mutex by name (fastipc's NamedMutex: shared memory
    ``__pyfastipc_mutex_<name>``, fastipc's 64-byte Mutex header).

    ``Mutex``'s methods, and ``try_release()``: ownership is per thread;
    a holder whose process died is taken over by a waiter, which
    ``owner_died`` then reports and the ``dispatchkit.sync`` logger logs
    as a warning (the C methods call ``_took_over`` after a takeover).
    """

    __slots__ = ("_name", "_shm", "__dict__", "__weakref__")

    def __new__(cls, name: str, *, mode: int = 0o600) -> "NamedMutex":
        check_name(name, MUTEX_PREFIX)
        shm = GuardedSharedMemory(MUTEX_PREFIX + name, size=64, mode=mode)
        try:
            header = shm.buf[:64]
            # fastipc's creator zeroes the whole header after creating it,
            # magic included (its attachers rewrite it): accept that.
            _AtomicU32(header[:4]).cas(0, _MUTEX_MAGIC)
            self = super().__new__(cls, header, shared=True)
        except BaseException:
            shm.close()
            raise
        self._name, self._shm = name, shm
        return self

    def _took_over(self) -> None:
        # Logged here, where the Python layer sees it; owner_died tells
        # the caller, who must check the data the dead holder left.
        if self.owner_died:
            _log.warning("NamedMutex %r taken over from a holder whose "
                         "process died holding it", self._name)

    def _state(self) -> str:
        pid = self.owner_pid()
        return f"owner={pid}" if pid else "unlocked"

    async def __aenter__(self) -> "NamedMutex":
        """``async with named_mutex:`` acquire it through
        dispatchkit.asyncio (the futex watcher; no thread parked)."""
        from dispatchkit import asyncio as _dkio
        await _dkio.wait(self)
        self._took_over()
        return self


class NamedSemaphore(_Named, _SemaphoreBase):
    """A cross-process counting semaphore by name (fastipc's
    NamedSemaphore: shared memory ``__pyfastipc_sema_<name>``, fastipc's
    64-byte Semaphore header). ``initial`` applies only when this call
    creates the semaphore. ``fastipc_compat=True`` also wakes fastipc's
    waiters (one futex syscall per post from zero; see ``Semaphore``).

    ``Semaphore``'s methods, with fastipc's ``wait(blocking=True,
    timeout=-1.0, spin=128)`` (seconds) and ``wait_ns(blocking=True,
    timeout_ns=-1, spin=128)``; ``P`` and ``acquire`` are ``wait``, ``V``
    and ``release`` are ``post``.
    """

    __slots__ = ("_name", "_shm", "__dict__", "__weakref__")

    def __new__(cls, name: str, initial: Optional[int] = None, *,
                mode: int = 0o600,
                fastipc_compat: bool = False) -> "NamedSemaphore":
        check_name(name, SEMAPHORE_PREFIX)
        if initial is not None:
            if not isinstance(initial, int):
                raise TypeError("initial must be an int or None")
            if initial < 0:
                raise OverflowError(
                    "can't convert negative value to unsigned int")
            if initial > 0xFFFFFFFF:
                raise OverflowError("initial out of range for uint32")
        shm = GuardedSharedMemory(SEMAPHORE_PREFIX + name, size=64,
                                  mode=mode)
        try:
            self = super().__new__(
                cls, shm.buf[:64], initial=initial if shm.created else None,
                shared=True, fastipc_compat=fastipc_compat)
        except BaseException:
            shm.close()
            raise
        self._name, self._shm = name, shm
        return self

    def _state(self) -> str:
        return f"value={self.value()}"

    P = acquire = _SemaphoreBase.wait
    V = release = _SemaphoreBase.post
