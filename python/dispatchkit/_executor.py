"""dispatchkit.Executor and the Future it returns.

The Future subclasses concurrent.futures.Future but builds its lock,
waiter list and callback list only when something needs them (a waiter,
cancel(), add_done_callback, wait, as_completed, asyncio.wrap_future). A
task whose result is read after it finished never creates them: the
worker writes the state straight into the instance (see
src/python/futures.c for why that is race-free under the GIL).
"""
from __future__ import annotations

import concurrent.futures as _cf
import threading as _threading
import time as _time
from concurrent.futures import _base
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, List,
                    Optional, TypeVar)

from dispatchkit import _dk

_T = TypeVar("_T")
_FINISHED = _base.FINISHED


class _Lazy:
    """A per-instance attribute made by `factory` on first read."""

    __slots__ = ("name", "factory")

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        # setdefault is atomic: two racing first reads agree on one value.
        return obj.__dict__.setdefault(self.name, self.factory())


if TYPE_CHECKING:
    _FutureBase = _cf.Future[Any]
else:
    _FutureBase = _cf.Future


class Future(_FutureBase):
    """A concurrent.futures.Future completed by a dispatch queue."""

    _state = _base.PENDING
    _result = None
    _exception = None
    _condition = _Lazy(_threading.Condition)
    _waiters = _Lazy(list)
    _done_callbacks = _Lazy(list)

    def __init__(self) -> None:  # the state lives in class defaults
        pass

    def result(self, timeout: Optional[float] = None) -> Any:
        if self._state is _FINISHED and self._exception is None:
            return self._result
        return _cf.Future.result(self, timeout)


_dk._futures_init(Future, _base.RUNNING, _base.FINISHED, _base.CANCELLED,
                  _base.CANCELLED_AND_NOTIFIED)


class Executor(_cf.ThreadPoolExecutor):
    """A concurrent.futures executor that runs work on dispatch queues.

    Executor(max_workers=None, *, queue=None, thread_name_prefix="")

    Work runs on `queue` (the default global concurrent queue when None) on
    the runtime's shared worker pool: no thread is created per executor or
    per worker. `max_workers` caps how many of this executor's tasks run
    at once (None: the pool decides). `thread_name_prefix` is accepted for
    compatibility and ignored (the pool's threads are shared).

    It subclasses ThreadPoolExecutor only so that
    loop.set_default_executor(), which checks for that class, takes it.
    """

    def __init__(self, max_workers: Optional[int] = None, *,
                 queue: Optional[_dk.Queue] = None,
                 thread_name_prefix: str = "") -> None:
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers,
                                                              bool):
                raise TypeError("max_workers must be an int or None")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if not isinstance(thread_name_prefix, str):
            raise TypeError("thread_name_prefix must be a str")
        self._core = _dk._ExecutorCore(queue, max_workers or 0)
        self._max_workers = max_workers  # type: ignore[assignment]  # None: no limit
        self._thread_name_prefix = thread_name_prefix
        self._queue = queue
        if type(self).submit is Executor.submit:
            # The C method itself: no Python frame per submit.
            self.submit = self._core.submit  # type: ignore[method-assign]

    def submit(self, fn: Callable[..., _T], /, *args: Any,
               **kwargs: Any) -> _cf.Future[_T]:
        return self._core.submit(fn, *args, **kwargs)

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[_T]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else timeout + _time.monotonic()
        fs = self._core.map_submit(fn, iterables)
        return _results(fs, end)

    def shutdown(self, wait: bool = True, *,
                 cancel_futures: bool = False) -> None:
        self._core.shutdown(wait, cancel_futures)

    @property
    def queue(self) -> Optional[_dk.Queue]:
        """The queue the work runs on (None: the default global queue)."""
        return self._queue

    def __repr__(self) -> str:
        return (f"<dispatchkit.Executor max_workers={self._max_workers} "
                f"pending={self._core.pending} "
                f"shutdown={self._core.is_shutdown}>")


def _results(fs: List[_cf.Future[Any]],
             end: Optional[float]) -> Iterator[Any]:
    # fs holds the futures last first; pop() keeps no reference to a
    # result already yielded.
    try:
        while fs:
            f = fs.pop()
            if f._state is _FINISHED and f._exception is None:
                yield f._result
            elif end is None:
                yield f.result()
            else:
                try:
                    yield f.result(end - _time.monotonic())
                except BaseException:
                    f.cancel()
                    raise
    finally:
        for f in fs:
            f.cancel()
