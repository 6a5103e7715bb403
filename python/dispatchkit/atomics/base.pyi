"""Type stubs for the atomic classes that own their buffer (created at
import by the extension, so invisible to type checkers without these)."""
from typing import TypeVar

from dispatchkit.atomics._types import ANY, BYTES, INT, INTEGRAL, UINT

_S = TypeVar("_S")

__all__ = ["Atomic", "AtomicIntegral", "AtomicBytes", "AtomicInt",
           "AtomicUint"]


class Atomic(ANY):
    def __new__(cls: type[_S], *, width: int, is_integral: bool = ...,
                 is_signed: bool = ...) -> _S: ...


class AtomicBytes(Atomic, BYTES):
    def __new__(cls: type[_S], *, width: int) -> _S: ...


class AtomicIntegral(Atomic, INTEGRAL):
    def __new__(cls: type[_S], *, width: int, is_signed: bool) -> _S: ...


class AtomicInt(AtomicIntegral, INT):
    def __new__(cls: type[_S], *, width: int) -> _S: ...


class AtomicUint(AtomicIntegral, UINT):
    def __new__(cls: type[_S], *, width: int) -> _S: ...
