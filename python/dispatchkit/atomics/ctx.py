"""View contexts: they pin a caller's buffer from construction until
release(), and hand out the view in ``with``. The lifetime contract and
its error messages are the atomics package's."""
from typing import TYPE_CHECKING, Any, Optional, Type

from dispatchkit.atomics import view as _view
from dispatchkit.atomics.exc import UnsupportedWidthException  # noqa: F401

__all__ = ["AtomicViewContext", "AtomicIntegralViewContext",
           "AtomicBytesViewContext", "AtomicIntViewContext",
           "AtomicUintViewContext"]


class AtomicViewContext:
    _view_cls: Type[_view.AtomicView] = _view.AtomicView
    _integral = False
    _signed = False

    def __init__(self, *, buffer: Any, is_integral: Optional[bool] = None,
                 is_signed: Optional[bool] = None) -> None:
        integral = self._integral if is_integral is None else is_integral
        signed = self._signed if is_signed is None else is_signed
        # Pin the buffer now (and validate width and alignment): it must
        # not be resized or freed until release().
        self._view = _view._make_view(self._view_cls, buffer, integral,
                                      signed)
        self._opened = False
        self._released = False

    def __enter__(self) -> _view.AtomicView:
        if self._released:
            raise ValueError("Cannot open context after calling 'release'.")
        if self._opened:
            raise ValueError("Cannot open context multiple times.")
        self._opened = True
        return self._view

    def __exit__(self, exc_type: Optional[Type[BaseException]] = None,
                 exc_val: Optional[BaseException] = None,
                 exc_tb: Any = None) -> None:
        self._released = True
        self._view._release()

    def release(self) -> None:
        if self._opened and not self._released:
            raise ValueError("Cannot call 'release' while context is open.")
        self._released = True
        self._view._release()

    def __del__(self) -> None:
        # An open context's view stays usable (it holds its own export of
        # the buffer); otherwise the buffer is unpinned here.
        view = getattr(self, "_view", None)
        if view is not None and not (self._opened and not self._released):
            view._release()


class AtomicBytesViewContext(AtomicViewContext):
    _view_cls = _view.AtomicBytesView

    if TYPE_CHECKING:
        def __enter__(self) -> _view.AtomicBytesView: ...

    def __init__(self, *, buffer: Any) -> None:
        super().__init__(buffer=buffer, is_integral=False, is_signed=False)


class AtomicIntegralViewContext(AtomicViewContext):
    _view_cls = _view.AtomicIntegralView
    _integral = True

    if TYPE_CHECKING:
        def __enter__(self) -> _view.AtomicIntegralView: ...

    def __init__(self, *, buffer: Any,
                 is_signed: bool) -> None:
        super().__init__(buffer=buffer, is_integral=True, is_signed=is_signed)


class AtomicIntViewContext(AtomicIntegralViewContext):
    _view_cls = _view.AtomicIntView

    if TYPE_CHECKING:
        def __enter__(self) -> _view.AtomicIntView: ...

    def __init__(self, *, buffer: Any) -> None:
        AtomicViewContext.__init__(self, buffer=buffer, is_integral=True,
                                   is_signed=True)


class AtomicUintViewContext(AtomicIntegralViewContext):
    _view_cls = _view.AtomicUintView

    if TYPE_CHECKING:
        def __enter__(self) -> _view.AtomicUintView: ...

    def __init__(self, *, buffer: Any) -> None:
        AtomicViewContext.__init__(self, buffer=buffer, is_integral=True,
                                   is_signed=False)
