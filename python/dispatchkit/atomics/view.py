"""Atomic views of a caller's buffer, obtained from an Atomic*ViewContext
(``with atomics.atomicview(buf, atomics.INT) as a: ...``); they cannot be
constructed directly."""
from dispatchkit._dk import _AtomicAny, _atomic_class, _atomic_view
from dispatchkit.atomics._types import ANY, BYTES, INT, INTEGRAL, UINT

__all__ = ["AtomicView", "AtomicIntegralView", "AtomicBytesView",
           "AtomicIntView", "AtomicUintView"]

_M = __name__
AtomicView = _atomic_class("AtomicView", "any", "view", (_AtomicAny, ANY),
                           _M)
AtomicBytesView = _atomic_class("AtomicBytesView", "bytes", "view",
                                (AtomicView, BYTES), _M)
AtomicIntegralView = _atomic_class("AtomicIntegralView", "integral", "view",
                                   (AtomicView, INTEGRAL), _M)
AtomicIntView = _atomic_class("AtomicIntView", "integral", "view",
                              (AtomicIntegralView, INT), _M)
AtomicUintView = _atomic_class("AtomicUintView", "integral", "view",
                               (AtomicIntegralView, UINT), _M)


def _make_view(cls, buffer, integral, signed):
    return _atomic_view(cls, buffer, integral, signed)
