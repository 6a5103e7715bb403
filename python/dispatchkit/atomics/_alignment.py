"""Alignment requirements: natural alignment for every supported width.
Misaligned atomics are not guaranteed to be atomic across cache lines, so
the minimum alignment equals the recommended one here (the atomics
package's patomic backend reported 1)."""
from typing import Any, Optional

from dispatchkit._dk import _ATOMIC16, _buffer_address
from dispatchkit.atomics.exc import UnsupportedWidthException

_WIDTHS = (1, 2, 4, 8) + ((16,) if _ATOMIC16 else ())


class Alignment:
    def __init__(self, width: int) -> None:
        if width not in _WIDTHS:
            raise UnsupportedWidthException(width, readonly=False)
        self.width = width
        self.recommended = width
        self.minimum = width
        self.size_within = 0

    def _address(self, buffer: Any) -> int:
        address: Optional[int]
        try:
            address, length = _buffer_address(buffer)
        except TypeError:
            address = None
        if address is None:  # raised here, outside the except clause
            raise TypeError("Positional argument 'buffer' must support the "
                            "buffer protocol.")
        if length != self.width:
            raise ValueError("Positional argument 'buffer' does not have "
                             f"matching width of {self.width}.")
        return address

    def is_valid_recommended(self, buffer: Any) -> bool:
        return self._address(buffer) % self.recommended == 0

    def is_valid_minimum(self, buffer: Any) -> bool:
        return self._address(buffer) % self.minimum == 0

    def is_valid(self, buffer: Any, *,
                 using_recommended: bool = True) -> bool:
        if using_recommended:
            return self.is_valid_recommended(buffer)
        return self.is_valid_minimum(buffer)

    def __str__(self) -> str:
        return (f"Alignment(width={self.width}, recommended="
                f"{self.recommended}, minimum={self.minimum}, size_within="
                f"{self.size_within})")
