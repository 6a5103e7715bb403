"""MemoryOrder and OpType, with the atomics package's values."""
from enum import IntEnum


class MemoryOrder(IntEnum):
    RELAXED = 0
    ACQUIRE = 2
    RELEASE = 3
    ACQ_REL = 4
    SEQ_CST = 5

    def is_valid_store_order(self) -> bool:
        return self not in (MemoryOrder.ACQUIRE, MemoryOrder.ACQ_REL)

    def is_valid_load_order(self) -> bool:
        return self not in (MemoryOrder.RELEASE, MemoryOrder.ACQ_REL)

    def is_valid_fail_order(self, succ: "MemoryOrder") -> bool:
        # The atomics package's rule: a load order no stronger (by value)
        # than the success order. It admits (RELEASE, ACQUIRE), which C11
        # does not; cmpxchg then runs as ACQ_REL, valid and stronger.
        return self <= succ and self.is_valid_load_order()


class OpType(IntEnum):
    """The operations, numbered as the atomics package numbers them. Each
    member has the package's ``fname`` (e.g. "fp_fetch_add") and ``cname``
    (its patomic table: "xchg_ops", "bitwise_ops", "binary_ops",
    "arithmetic_ops" or None)."""

    def __init__(self, value: int) -> None:
        fname = self.name.lower()
        if fname.startswith("bit"):
            fname = fname[len("bit_"):]
        fname = "fp_" + fname
        if "xch" in fname:
            cname = "xchg_ops"
        elif "test" in fname:
            cname = "bitwise_ops"
        elif fname.endswith(("or", "xor", "and", "not")):
            cname = "binary_ops"
        elif fname not in ("fp_store", "fp_load"):
            cname = "arithmetic_ops"
        else:
            cname = None
        self.fname = fname
        self.cname = cname

    STORE = 1
    LOAD = 2
    EXCHANGE = 3
    CMPXCHG_WEAK = 4
    CMPXCHG_STRONG = 5
    BIT_TEST = 6
    BIT_TEST_COMPL = 7
    BIT_TEST_SET = 8
    BIT_TEST_RESET = 9
    OR = 10
    XOR = 11
    AND = 12
    NOT = 13
    FETCH_OR = 14
    FETCH_XOR = 15
    FETCH_AND = 16
    FETCH_NOT = 17
    ADD = 18
    SUB = 19
    INC = 20
    DEC = 21
    NEG = 22
    FETCH_ADD = 23
    FETCH_SUB = 24
    FETCH_INC = 25
    FETCH_DEC = 26
    FETCH_NEG = 27
