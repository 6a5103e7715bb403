"""Type stubs for the view classes (created at import by the extension);
they come from an Atomic*ViewContext's ``__enter__``."""
from typing import Type, TypeVar

from dispatchkit.atomics._types import ANY, BYTES, INT, INTEGRAL, UINT

__all__ = ["AtomicView", "AtomicIntegralView", "AtomicBytesView",
           "AtomicIntView", "AtomicUintView"]

_V = TypeVar("_V", bound="AtomicView")


class AtomicView(ANY):
    def _release(self) -> None: ...
class AtomicBytesView(AtomicView, BYTES): ...
class AtomicIntegralView(AtomicView, INTEGRAL): ...
class AtomicIntView(AtomicIntegralView, INT): ...
class AtomicUintView(AtomicIntegralView, UINT): ...


def _make_view(cls: Type[_V], buffer: object, integral: bool,
               signed: bool) -> _V: ...
