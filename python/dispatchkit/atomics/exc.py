"""The exceptions of the atomics API, with its constructor arguments,
attributes, messages (double spaces included, so code that matches them
keeps working) and reprs."""
from typing import Any


def _article(word: str) -> str:
    return "an" if word.lower()[:1] in ("a", "e", "i", "o", "u") else "a"


def _name(x: object) -> str:
    return str(getattr(x, "name", str(x)))


class AlignmentError(Exception):
    def __init__(self, width: int, address: int, *,
                 using_recommended: bool = True) -> None:
        self.width = width
        self.address = address
        self.using_recommended = using_recommended
        kind = "recommended" if using_recommended else "minimum"
        super().__init__(
            f"The alignment of address {hex(address)} does not meet the "
            f"{kind} alignment requirements for atomic operations on "
            f"objects with a width of {width}.")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(width={self.width}, address="
                f"{self.address}, using_recommended="
                f"{self.using_recommended})")


class MemoryOrderError(Exception):
    def __init__(self, optype: Any, order: Any, *,
                 is_fail: bool = False) -> None:
        self.optype = optype
        self.order = order
        self.is_fail = is_fail
        kind = "fail " if is_fail else " "
        op = _name(optype)
        super().__init__(f"{_name(order)} is not a valid {kind}memory order "
                         f"for {_article(op)} {op} operation.")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(optype=OpType.{_name(self.optype)}, "
                f"order=MemoryOrder.{_name(self.order)}, is_fail="
                f"{self.is_fail})")


class UnsupportedWidthException(Exception):
    def __init__(self, width: int, *, readonly: bool = False) -> None:
        self.width = width
        self.readonly = readonly
        ro = " readonly " if readonly else " "
        super().__init__(f"No operations are supported on{ro}objects with "
                         f"a width of {width}.")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(width={self.width}, readonly="
                f"{self.readonly})")


class UnsupportedOperationException(Exception):
    def __init__(self, optype: Any, width: int, *,
                 readonly: bool = False) -> None:
        self.optype = optype
        self.width = width
        self.readonly = readonly
        ro = "readonly " if readonly else " "
        super().__init__(f"Operation {_name(optype)} is not supported on "
                         f"{ro}objects with a width of {width}.")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(optype=OpType.{_name(self.optype)}, "
                f"width={self.width}, readonly={self.readonly})")


__all__ = ["AlignmentError", "MemoryOrderError", "UnsupportedWidthException",
           "UnsupportedOperationException"]
