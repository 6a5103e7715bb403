"""dispatchkit.asyncio: await dispatch queues, locks, semaphores, events
and zero-copy frames from asyncio (or uvloop) without blocking the loop.

Use it as ``from dispatchkit import asyncio as dkio``::

    digest = await dkio.run(queue, hashlib.sha256, data)
    async with dkio.locked(named_mutex, timeout=5):
        ...
    async with named_mutex:                 # or dkio.locked(lock, timeout=)
        ...
    await dkio.wait(group)                  # also Semaphore, Event, Named*
    async for frame in reader:              # dispatchkit.zerobuffer.Reader
        with frame:
            handle(frame.data)

The names:

- ``run(queue, fn, /, *args, **kwargs)``: run ``fn`` on a dispatch queue;
  an ``asyncio.Future`` of its result (exceptions keep their traceback).
- ``wait(obj, timeout=None) -> bool`` (alias ``acquire``): a dispatch
  ``Group`` (until empty) or ``Semaphore`` (take a unit);
  ``dispatchkit.sync`` ``Mutex``/``NamedMutex`` (acquire),
  ``Semaphore``/``NamedSemaphore`` (take a unit), ``Event``/``NamedEvent``
  (until set). False after ``timeout`` seconds.
- ``locked(lock, timeout=None)``: ``async with`` acquire and release
  (``TimeoutError`` when the timeout passes first). Without a timeout,
  ``async with lock:`` works on the locks themselves (``sync.Mutex``,
  ``NamedMutex``, ``sync.Semaphore``, ``NamedSemaphore`` and the dispatch
  ``Semaphore``): their ``__aenter__`` waits as ``wait`` does.
- ``read_frame(reader, timeout=None)``, ``frames(reader)`` (what
  ``async for frame in reader`` uses), ``write_frame(writer, data,
  timeout=None)`` (waits for room in the ring), ``request(client, data,
  timeout=None)`` (a duplex request and its response).

Nothing here parks a thread per waiter. Work submitted with ``run``
completes through one eventfd per loop (watched with ``loop.add_reader``,
drained in batches; no ``call_soon_threadsafe``, no thread per call);
a single ``await run(...)`` with nothing else in flight first waits a
bounded moment for the result with the GIL released, so a short call
costs no thread wake-up.
Waits on primitives sleep in the loop's own io_uring (Linux 6.7+:
``IORING_OP_FUTEX_WAIT``, completed by the other side's futex wake; the
loop watches the ring's fd, no thread of ours in between), or else
in one futex watcher thread that sleeps on up to 127 futex words at once
with Linux's ``futex_waitv`` (5.16+; one thread per word on older
kernels). Either way each waiter announces itself in the
primitive's own protocol (the waiter count of a semaphore, the contended
state of a mutex, glibc's ``sem_t`` waiter count for zerobuffer), so posts,
sets and releases from any thread or process, fastipc's and
zerobuffer-ipc's included, wake it.

Cancelling the awaiting task, or its timeout, leaves the primitive as it
was: no unit taken, no lock held, no frame read or written, no waiter
left counted. A cancelled ``run`` item that has not started never runs.
Every function raises ``RuntimeError`` when no event loop is running in
the thread, ``TypeError`` for an object it cannot wait on, ``ValueError``
for a closed one. A loop closed with waits pending drops them; nothing
keeps the loop alive.

See docs/asyncio.md, including ``dispatchkit.Executor`` for
``loop.run_in_executor`` and ``loop.set_default_executor``.
"""
from __future__ import annotations

import asyncio as _asyncio
import time as _time
import weakref as _weakref
from typing import Any, AsyncIterator, Callable, List, Optional, TypeVar
from contextlib import asynccontextmanager as _asynccontextmanager

from dispatchkit import _dk

__all__ = ["run", "wait", "acquire", "locked", "read_frame", "frames",
           "write_frame", "request"]

_T = TypeVar("_T")

_get_running_loop = _asyncio.get_running_loop
# loop -> weakref to its waker. The loop's reader handle holds the waker;
# this table holds neither, so a dropped loop takes its waker with it.
_wakers: "_weakref.WeakKeyDictionary[Any, Any]" = _weakref.WeakKeyDictionary()
# The last loop used and its waker, both weakly: one lookup per run().
_last: List[Any] = [None, None]


def _waker_for(loop: Any) -> Any:
    ref = _last[0]
    if ref is not None and ref() is loop:
        w = _last[1]()
        if w is not None:
            return w
    wref = _wakers.get(loop)
    w = wref() if wref is not None else None
    if w is None:
        if loop.is_closed():
            raise RuntimeError("Event loop is closed")
        w = _dk._LoopWaker()
        loop.add_reader(w.fileno(), w.drain)
        _wakers[loop] = _weakref.ref(w)
    _last[0] = _weakref.ref(loop)
    _last[1] = _weakref.ref(w)
    return w


def _running_loop(what: str) -> Any:
    try:
        return _get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"dispatchkit.asyncio.{what}() needs a running event loop: "
            "call it from a coroutine or a callback of the loop") from None


_loop_now = _asyncio._get_running_loop


class _RunFuture(_asyncio.Future):  # type: ignore[type-arg]
    """run()'s future when nothing else of the loop is in flight. Awaiting
    it first lets the loop's thread wait a short, bounded time for the
    result with the GIL released (the waker's spin), so a tiny call
    awaited one at a time costs no thread wake-up; gathered or otherwise,
    it is an ordinary asyncio.Future."""

    __slots__ = ("_dk_waker", "_dk_loop")
    _dk_waker: Any
    _dk_loop: Any

    def __await__(self) -> Any:
        if not self.done() and _loop_now() is self._dk_loop:
            self._dk_waker.spin(self)
        return (yield from super().__await__())

    __iter__ = __await__


# run(queue, fn, /, *args, **kwargs): Run ``fn(*args, **kwargs)`` on
# ``queue``; an awaitable (asyncio.Future) of its result. Raises
# RuntimeError when no event loop is running in this thread, TypeError for
# a non-callable ``fn`` or a ``queue`` that is not a Queue. It is called
# once per item (10,000 times for a gather of 10,000), so all of it is C
# (src/python/futures.c): the running loop, its waker (the last one
# cached weakly; _waker_for otherwise), the future (a _RunFuture when
# nothing else of the loop is in flight), the item.
_dk._aio_init(_loop_now, _waker_for, _RunFuture)
run = _dk._aio_run


def _waker_fd(loop: Optional[Any] = None) -> int:
    """The eventfd of `loop`'s waker (the running loop by default); tests
    use it to check that one fd serves every call."""
    return int(_waker_for(loop or _get_running_loop()).fileno())


# ---- awaitable waits ---------------------------------------------------

# A mutex waiter asks whether the holder's process still lives after each
# quiet slice of this length, as the blocking acquire does.
_MUTEX_SLICE_NS = 50_000_000


def _primitive(obj: Any) -> Any:
    """The object the C layer waits on: Named* are their primitive's
    subtypes (ValueError once closed)."""
    from dispatchkit import _sync_named
    if isinstance(obj, _sync_named._Named) and obj._prim._closed:
        raise ValueError(f"{type(obj).__name__}({obj.name!r}) is closed")
    return obj


def _deadline(timeout: Optional[float]) -> int:
    if timeout is None:
        return -1
    if timeout != timeout:  # NaN
        raise ValueError("timeout must not be NaN")
    if timeout < 0:
        return -1
    return _time.monotonic_ns() + int(timeout * 1e9)


async def wait(obj: Any, timeout: Optional[float] = None) -> bool:
    """Wait on `obj` without blocking the loop and with no thread parked.

    - dispatchkit.Group: until its count is zero;
    - dispatchkit.Semaphore, dispatchkit.sync.Semaphore, NamedSemaphore:
      take one unit;
    - dispatchkit.sync.Mutex, NamedMutex: acquire it (owned by the loop's
      thread; release it from there);
    - dispatchkit.sync.Event, NamedEvent: until it is set.

    True when done, False once `timeout` seconds have passed (None or
    negative: no limit). Cancelling the awaiting task leaves the primitive
    as it was: no unit taken, no lock held, no waiter left counted. Waits
    on shared memory are woken by posts and sets from other processes
    (dispatchkit's or fastipc's).
    """
    loop = _running_loop("wait")
    target = _primitive(obj)
    waiter = _dk._AioWait(_waker_for(loop), target)
    deadline = _deadline(timeout)
    is_mutex = isinstance(target, _dk.SyncMutex)
    if deadline >= 0 and timeout == 0:
        return waiter.step(None, 0, True) >= 0
    check_owner = False
    try:
        while True:
            fut = loop.create_future()
            until = deadline
            if is_mutex:
                end = _time.monotonic_ns() + _MUTEX_SLICE_NS
                until = end if until < 0 else min(until, end)
            if waiter.step(fut, until, check_owner) >= 0:
                return True
            fired = await fut
            # 2: an event seen set, or a semaphore's unit taken, as the
            # wake-up was handled (abandon() gives back a unit not seen)
            if fired == 2:
                return True
            if fired:
                check_owner = False
                continue
            if deadline >= 0 and _time.monotonic_ns() >= deadline:
                return waiter.step(None, 0, True) >= 0
            check_owner = True  # a quiet slice: does the holder live?
    except BaseException:
        waiter.abandon()
        raise


acquire = wait


def _release(obj: Any) -> None:
    if isinstance(obj, _dk.Semaphore):
        obj.signal()
    elif hasattr(obj, "release"):
        obj.release()
    else:
        obj.post(1)


@_asynccontextmanager
async def locked(obj: Any, timeout: Optional[float] = None
                 ) -> AsyncIterator[Any]:
    """``async with dkio.locked(lock):`` acquire (as wait) and release.

    For dispatchkit.sync.Mutex, NamedMutex, dispatchkit.sync.Semaphore,
    NamedSemaphore and dispatchkit.Semaphore. Raises TimeoutError when
    `timeout` passes first; the lock is released on the way out even when
    the body raises or is cancelled.
    """
    target = _primitive(obj)
    if isinstance(target, (_dk.Group, _dk.SyncEvent)):
        raise TypeError(f"{type(obj).__name__} is not a lock")
    if not await wait(obj, timeout):
        raise TimeoutError(f"could not acquire {type(obj).__name__} within "
                           f"{timeout} s")
    try:
        yield obj
    finally:
        _release(obj)


async def _lock_enter(obj: Any) -> Any:
    """``async with lock:`` on entry (the C locks' ``__aenter__``): wait()
    with no timeout; the lock itself for a mutex, True for a semaphore
    (what ``with`` gives)."""
    await wait(obj)
    return obj if isinstance(obj, _dk.SyncMutex) else True


async def _lock_exit(obj: Any) -> None:
    """``async with lock:`` on exit (``__aexit__``): release it."""
    _release(obj)


# ---- zerobuffer -------------------------------------------------------------

_EAGAIN = -11
_EBADF = -9
_EPIPE = -32
# A reader waiting for frames asks whether the writer still lives after
# each quiet slice of this length (as the blocking read does).
_READER_SLICE_NS = 100_000_000


async def read_frame(reader: Any, timeout: Optional[float] = None) -> Any:
    """Await the next frame of a dispatchkit.zerobuffer Reader.

    The Frame (release it as read_frame's: ``with frame:``, dispose(), or
    reader.release_frame), or None once `timeout` seconds have passed
    (None: no limit). Raises WriterDeadException when the writer has gone
    and every frame it wrote has been read, and ZeroBufferException when
    the reader is closed, also while awaiting. No thread waits for it: the
    futex watcher sleeps on the frame semaphore, counted as a waiter the
    way sem_wait counts itself, so the writer's post (ours or a peer's)
    wakes it.
    """
    frame = reader.read_frame(timeout=0)
    if frame is not None:
        return frame
    loop = _running_loop("read_frame")
    waiter = _dk._AioWait(_waker_for(loop), reader)
    deadline = _deadline(timeout)
    check_writer = False
    try:
        while True:
            fut = loop.create_future()
            end = _time.monotonic_ns() + _READER_SLICE_NS
            until = end if deadline < 0 else min(deadline, end)
            rc = waiter.step(fut, until, check_writer)
            if rc == 0:
                frame = reader.read_frame(timeout=0)
                if frame is not None:
                    return frame
                continue
            if rc != _EAGAIN:
                _raise_reader(rc)
            if await fut:
                check_writer = False
                frame = reader.read_frame(timeout=0)
                if frame is not None:
                    return frame
                continue
            if deadline >= 0 and _time.monotonic_ns() >= deadline:
                return reader.read_frame(timeout=0)
            check_writer = True
    except BaseException:
        waiter.abandon()
        raise


def _raise_reader(rc: int) -> None:
    from dispatchkit.zerobuffer import exceptions as zbx
    if rc == _EPIPE:
        raise zbx.WriterDeadException()
    if rc == _EBADF:
        raise zbx.ZeroBufferException("Reader is closed")
    raise OSError(-rc, "cannot wait on this reader's semaphore")


async def frames(reader: Any) -> AsyncIterator[Any]:
    """``async for frame in reader`` (Reader.__aiter__ returns this).

    Yields each frame as it arrives; ends when the writer has gone (left
    or died) and every frame is read, or when the reader is closed.
    Release each frame as with read_frame (``with frame:``); a frame not
    released is released when it is garbage-collected.
    """
    from dispatchkit.zerobuffer import exceptions as zbx
    while True:
        try:
            frame = await read_frame(reader)
        except zbx.WriterDeadException:
            return
        except zbx.ZeroBufferException:
            if reader.closed:
                return
            raise
        if frame is None:  # pragma: no cover (no timeout given)
            continue
        yield frame


_EBUSY = -16
_EINVAL = -22
_EMSGSIZE = -90
# A writer waiting for room asks whether the reader still lives after each
# quiet slice of this length.
_WRITER_SLICE_NS = 100_000_000


def _raise_writer(rc: int) -> None:
    from dispatchkit.zerobuffer import exceptions as zbx
    if rc == _EPIPE:
        raise zbx.ReaderDeadException()
    if rc == _EBADF:
        raise zbx.ZeroBufferException("Writer is closed")
    if rc == _EMSGSIZE:
        raise zbx.FrameTooLargeException()
    if rc == _EINVAL:
        raise zbx.InvalidFrameSizeException()
    if rc == _EBUSY:
        raise zbx.ZeroBufferException(
            "a frame is reserved (get_frame_buffer): commit it first")
    raise OSError(-rc, "cannot wait on this writer's semaphore")


async def write_frame(writer: Any, data: Any,
                      timeout: Optional[float] = None) -> Any:
    """Write one frame with a dispatchkit.zerobuffer Writer, awaiting room
    in the ring instead of blocking the loop; what write_frame returns.

    Raises BufferFullException once `timeout` seconds pass with no room
    (None: no limit), ReaderDeadException when the reader is gone,
    FrameTooLargeException / InvalidFrameSizeException for a frame that
    can never fit. Cancelling leaves the writer as it was (nothing
    reserved, nothing written).
    """
    size = memoryview(data).nbytes
    loop = _running_loop("write_frame")
    waiter = _dk._AioWait(_waker_for(loop), writer, size)
    deadline = _deadline(timeout)
    check_reader = False
    try:
        while True:
            fut = loop.create_future()
            end = _time.monotonic_ns() + _WRITER_SLICE_NS
            until = end if deadline < 0 else min(deadline, end)
            rc = waiter.step(fut, until, check_reader)
            if rc == 0:
                # Room now, and only this writer takes it: no wait.
                return writer.write_frame(data)
            if rc != _EAGAIN:
                _raise_writer(rc)
            if await fut:
                check_reader = False
                continue
            if deadline >= 0 and _time.monotonic_ns() >= deadline:
                from dispatchkit.zerobuffer import exceptions as zbx
                raise zbx.BufferFullException()
            check_reader = True
    except BaseException:
        waiter.abandon()
        raise


async def request(client: Any, data: Any,
                  timeout: Optional[float] = None) -> Any:
    """Send one request through a dispatchkit.zerobuffer DuplexClient and
    await its response (a DuplexResponse; release it with dispose() or
    ``with``). Both the write (waiting for room) and the read are awaited
    on the futex watcher. After `timeout` seconds without a response, an
    invalid DuplexResponse (is_valid False), as receive_response gives.
    """
    from dispatchkit.zerobuffer.duplex import DuplexResponse
    client._check()
    if client._pending:
        from dispatchkit.zerobuffer.exceptions import ZeroBufferException
        raise ZeroBufferException("Previous request not committed")
    await write_frame(client._request_writer, data, timeout)
    frame = await read_frame(client._response_reader, timeout)
    if frame is None:
        return DuplexResponse(sequence=0, data=None)
    return DuplexResponse(sequence=frame.sequence, data=frame.data,
                          _frame=frame)
