"""dispatchkit.asyncio: await work running on dispatch queues.

Use it as ``from dispatchkit import asyncio as dkio``::

    async def handler(data):
        digest = await dkio.run(queue, hashlib.sha256, data)

``run(queue, fn, /, *args, **kwargs)`` submits ``fn(*args, **kwargs)`` to
``queue`` (any ``dispatchkit.Queue``: a global concurrent queue, a serial
queue, a workloop) and returns an ``asyncio.Future`` of its result, bound
to the running loop. Awaiting it returns ``fn``'s result or raises its
exception (with its traceback); the loop is never blocked.

How completions reach the loop: each event loop gets one eventfd, watched
with ``loop.add_reader``. A worker that finishes an item appends it to the
loop's completion list and writes the eventfd only if the list was empty;
the loop's reader then resolves every finished future in one pass. There
is no ``call_soon_threadsafe`` and no thread per call, and a burst of
completions costs one wake-up. It works the same under asyncio's own loops
and uvloop's.

Cancelling the awaiting task (or the future) before the item starts means
the item never runs; once it has started it runs to the end and its result
is dropped.

Calling ``run`` with no running event loop raises ``RuntimeError``. If the
loop closes while items are in flight, their results are dropped when they
finish (nothing is left holding the loop or the items).

See docs/asyncio.md for the whole story, including ``dispatchkit.Executor``
with ``loop.run_in_executor`` and ``loop.set_default_executor``.
"""
from __future__ import annotations

import asyncio as _asyncio
import weakref as _weakref
from typing import Any, Awaitable, Callable, Optional, TypeVar

from dispatchkit import _dk

__all__ = ["run"]

_T = TypeVar("_T")

_get_running_loop = _asyncio.get_running_loop
# loop -> weakref to its waker. The loop's reader handle holds the waker;
# this table holds neither, so a dropped loop takes its waker with it.
_wakers: "_weakref.WeakKeyDictionary[Any, Any]" = _weakref.WeakKeyDictionary()
# The last loop used and its waker, both weakly: one lookup per run().
_last: list = [None, None]


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


def run(queue: _dk.Queue, fn: Callable[..., _T], /, *args: Any,
        **kwargs: Any) -> "_asyncio.Future[_T]":
    """Run ``fn(*args, **kwargs)`` on ``queue``; an awaitable of its result.

    Raises RuntimeError when no event loop is running in this thread,
    TypeError for a non-callable ``fn`` or a ``queue`` that is not a Queue.
    """
    try:
        loop = _get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "dispatchkit.asyncio.run() needs a running event loop: call "
            "it from a coroutine or a callback of the loop") from None
    fut = loop.create_future()
    w = _waker_for(loop)
    if kwargs:
        w.submit_kw(fut, queue, fn, args, kwargs)
    else:
        w.submit(fut, queue, fn, *args)
    return fut


def _waker_fd(loop: Optional[Any] = None) -> int:
    """The eventfd of `loop`'s waker (the running loop by default); tests
    use it to check that one fd serves every call."""
    return _waker_for(loop or _get_running_loop()).fileno()
