"""The helper types of the atomics API: ANY, INTEGRAL, BYTES, INT, UINT.
They carry no operations (those are on the C base types), only identity
for isinstance checks and type hints."""


class ANY:
    """Any atomic object (properties only)."""
    __slots__ = ()


class INTEGRAL(ANY):
    """An atomic integer (signed or not)."""
    __slots__ = ()


class BYTES(ANY):
    """An atomic byte string."""
    __slots__ = ()


class INT(INTEGRAL):
    """A signed atomic integer."""
    __slots__ = ()


class UINT(INTEGRAL):
    """An unsigned atomic integer."""
    __slots__ = ()
