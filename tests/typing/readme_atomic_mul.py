"""The atomics seed README's "Operations" snippet (atomic_mul with
CmpxchgResult) with only the import changed, type-checked by make
lint-python."""
import dispatchkit.atomics as atomics


def atomic_mul(a: atomics.INTEGRAL, operand: int):
    res = atomics.CmpxchgResult(success=False, expected=a.load())
    while not res:
        desired = res.expected * operand
        res = a.cmpxchg_weak(expected=res.expected, desired=desired)
