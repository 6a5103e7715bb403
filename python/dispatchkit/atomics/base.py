"""Atomic objects that own their buffer (what atomics.atomic returns).
The classes are created by the extension (see _atomic_class) so that
every operation is a direct, specialized C method call."""
from dispatchkit._dk import _AtomicAny, _atomic_class
from dispatchkit.atomics._types import ANY, BYTES, INT, INTEGRAL, UINT

__all__ = ["Atomic", "AtomicIntegral", "AtomicBytes", "AtomicInt",
           "AtomicUint"]

_M = __name__
Atomic = _atomic_class("Atomic", "any", "any", (_AtomicAny, ANY), _M)
AtomicBytes = _atomic_class("AtomicBytes", "bytes", "bytes",
                            (Atomic, BYTES), _M)
AtomicIntegral = _atomic_class("AtomicIntegral", "integral", "integral",
                               (Atomic, INTEGRAL), _M)
AtomicInt = _atomic_class("AtomicInt", "integral", "int",
                          (AtomicIntegral, INT), _M)
AtomicUint = _atomic_class("AtomicUint", "integral", "uint",
                           (AtomicIntegral, UINT), _M)
