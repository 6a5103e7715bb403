"""atomic() and atomicview()."""
from typing import Any, Optional, Type, overload

from dispatchkit.atomics import base, ctx
from dispatchkit.atomics._types import ANY, BYTES, INT, INTEGRAL, UINT

_TYPE_ERROR = ("Type parameter 'atype' must be one of "
               "[ANY, INTEGRAL, BYTES, INT, UINT].")

# The overloads give each atype its class, as the atomics package's
# annotations do (atype=INT -> AtomicInt, ...); the most derived first.


@overload
def atomic(width: int, atype: Type[INT]) -> base.AtomicInt: ...
@overload
def atomic(width: int, atype: Type[UINT]) -> base.AtomicUint: ...
@overload
def atomic(width: int, atype: Type[BYTES]) -> base.AtomicBytes: ...
@overload
def atomic(width: int, atype: Type[INTEGRAL], *,
           is_signed: bool) -> base.AtomicIntegral: ...
@overload
def atomic(width: int, atype: Type[ANY], *, is_integral: bool = ...,
           is_signed: bool = ...) -> base.Atomic: ...


def atomic(width: int, atype: Type[ANY], **kwargs: Any) -> base.Atomic:
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


@overload
def atomicview(buffer: Any, atype: Type[INT]
               ) -> ctx.AtomicIntViewContext: ...
@overload
def atomicview(buffer: Any, atype: Type[UINT]
               ) -> ctx.AtomicUintViewContext: ...
@overload
def atomicview(buffer: Any, atype: Type[BYTES]
               ) -> ctx.AtomicBytesViewContext: ...
@overload
def atomicview(buffer: Any, atype: Type[INTEGRAL], *,
               is_signed: bool) -> ctx.AtomicIntegralViewContext: ...
@overload
def atomicview(buffer: Any, atype: Type[ANY], *,
               is_integral: Optional[bool] = ...,
               is_signed: Optional[bool] = ...) -> ctx.AtomicViewContext: ...


def atomicview(buffer: Any, atype: Type[ANY],
               **kwargs: Any) -> ctx.AtomicViewContext:
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


__all__ = ["atomic", "atomicview"]
