"""atomic() and atomicview()."""
from dispatchkit.atomics import base, ctx
from dispatchkit.atomics._types import ANY, BYTES, INT, INTEGRAL, UINT

_TYPE_ERROR = ("Type parameter 'atype' must be one of "
               "[ANY, INTEGRAL, BYTES, INT, UINT].")


def atomic(width, atype, **kwargs):
    """A new atomic object of `width` bytes that owns its buffer."""
    if atype is INT:
        return base.AtomicInt(width=width)
    if atype is UINT:
        return base.AtomicUint(width=width)
    if atype is BYTES:
        return base.AtomicBytes(width=width)
    if atype is INTEGRAL:
        return base.AtomicIntegral(width=width, **kwargs)
    if atype is ANY:
        return base.Atomic(width=width, **kwargs)
    raise TypeError(_TYPE_ERROR)


def atomicview(buffer, atype, **kwargs):
    """A context that yields an atomic view of `buffer` in ``with``."""
    if atype is INT:
        return ctx.AtomicIntViewContext(buffer=buffer)
    if atype is UINT:
        return ctx.AtomicUintViewContext(buffer=buffer)
    if atype is BYTES:
        return ctx.AtomicBytesViewContext(buffer=buffer)
    if atype is INTEGRAL:
        return ctx.AtomicIntegralViewContext(buffer=buffer, **kwargs)
    if atype is ANY:
        return ctx.AtomicViewContext(buffer=buffer, **kwargs)
    raise TypeError(_TYPE_ERROR)
