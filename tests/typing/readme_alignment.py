"""The atomics seed README's "Alignment" snippet with only the
import changed, type-checked by make lint-python."""
from dispatchkit.atomics import Alignment

buf = bytearray(8)
align = Alignment(len(buf))
assert align.is_valid(buf)
