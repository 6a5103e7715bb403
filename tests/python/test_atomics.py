"""dispatchkit.atomics against the atomics package's documented API:
every operation at every width and signedness against a Python reference,
wrap-around, errors, the view contract, the seed's samples, processes."""
import importlib
import multiprocessing as mp
import sys
import threading
from multiprocessing import shared_memory

import pytest
from hypothesis import given, settings, strategies as st

import dispatchkit.atomics as atomics
from dispatchkit.atomics import MemoryOrder, OpType
from dispatchkit.atomics.exc import (AlignmentError, MemoryOrderError,
                                     UnsupportedOperationException,
                                     UnsupportedWidthException)

WIDTHS = [1, 2, 4, 8, 16]


def bounds(width, signed):
    bits = width * 8
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed \
        else (0, (1 << bits) - 1)


def wrap(v, width, signed):
    bits = width * 8
    v &= (1 << bits) - 1
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v


# ---- construction, types, properties ---------------------------------

def test_seed_construction_examples():
    a = atomics.atomic(width=4, atype=atomics.INT)
    assert str(a) == "AtomicInt(value=0, width=4, readonly=False, signed=True)"
    buf = bytearray(2)
    with atomics.atomicview(buffer=buf, atype=atomics.BYTES) as b:
        assert str(b) == ("AtomicBytesView(value=b'\\x00\\x00', width=2, "
                          "readonly=False)")


def test_class_hierarchy_and_submodules():
    import dispatchkit.atomics.base as base
    import dispatchkit.atomics.ctx as ctx
    import dispatchkit.atomics.view as view
    a = atomics.atomic(width=8, atype=atomics.UINT)
    assert type(a) is base.AtomicUint
    assert isinstance(a, (base.Atomic, base.AtomicIntegral, atomics.UINT,
                          atomics.INTEGRAL, atomics.ANY))
    assert not isinstance(a, atomics.BYTES) and not isinstance(a, atomics.INT)
    b = atomics.atomic(width=2, atype=atomics.BYTES)
    assert isinstance(b, base.AtomicBytes) and isinstance(b, atomics.BYTES)
    assert not hasattr(b, "add")
    c = atomics.atomicview(buffer=bytearray(4), atype=atomics.INT)
    assert isinstance(c, ctx.AtomicIntViewContext)
    with c as v:
        assert isinstance(v, view.AtomicIntView) and isinstance(v, atomics.INT)
    with pytest.raises(TypeError):
        view.AtomicIntView()
    anyobj = atomics.atomic(width=4, atype=atomics.ANY)
    assert anyobj.ops_supported == [] and not hasattr(anyobj, "load")
    integral = atomics.atomic(width=2, atype=atomics.INTEGRAL,
                              is_signed=False)
    assert integral.signed is False
    with pytest.raises(TypeError, match="must be one of"):
        atomics.atomic(width=4, atype=int)
    with pytest.raises(TypeError):
        atomics.atomicview(buffer=bytearray(4), atype="INT")


@pytest.mark.parametrize("width", WIDTHS)
def test_properties(width):
    for atype, signed in ((atomics.INT, True), (atomics.UINT, False)):
        a = atomics.atomic(width=width, atype=atype)
        assert a.width == width and a.readonly is False
        assert a.signed is signed
        assert a.ops_supported == sorted(OpType)
    b = atomics.atomic(width=width, atype=atomics.BYTES)
    assert b.ops_supported == [op for op in OpType if op <= OpType.FETCH_NOT]
    assert bytes(b) == bytes(width)


def test_int_and_bytes_special_methods_and_no_index():
    a = atomics.atomic(width=4, atype=atomics.INT)
    a.store(-5)
    assert int(a) == -5
    with pytest.raises(TypeError):
        [0, 1][a]  # no __index__
    b = atomics.atomic(width=4, atype=atomics.BYTES)
    b.store(b"abcd")
    assert bytes(b) == b"abcd"


# ---- operations against a reference -----------------------------------

OPS = ["store", "exchange", "add", "sub", "inc", "dec", "neg", "fetch_add",
       "fetch_sub", "fetch_inc", "fetch_dec", "fetch_neg", "bin_or",
       "bin_xor", "bin_and", "bin_not", "bin_fetch_or", "bin_fetch_xor",
       "bin_fetch_and", "bin_fetch_not", "bit_test", "bit_test_set",
       "bit_test_reset", "bit_test_compl", "cmpxchg_strong", "cmpxchg_weak"]


def reference(op, cur, arg, width, signed):
    """(new value, return value) of op on cur."""
    mask = (1 << (width * 8)) - 1
    w = lambda v: wrap(v, width, signed)  # noqa: E731
    u = cur & mask
    if op == "store":
        return arg, None
    if op == "exchange":
        return arg, cur
    table = {
        "add": lambda: w(cur + arg), "sub": lambda: w(cur - arg),
        "inc": lambda: w(cur + 1), "dec": lambda: w(cur - 1),
        "neg": lambda: w(-cur), "bin_or": lambda: w(u | (arg & mask)),
        "bin_xor": lambda: w(u ^ (arg & mask)),
        "bin_and": lambda: w(u & (arg & mask)), "bin_not": lambda: w(~u),
    }
    base = op.replace("fetch_", "").replace("bin_fetch_", "bin_")
    if op.startswith("bit_"):
        bit = arg
        old = bool((u >> bit) & 1)
        if op == "bit_test":
            return cur, old
        new = {"bit_test_set": u | (1 << bit),
               "bit_test_reset": u & ~(1 << bit),
               "bit_test_compl": u ^ (1 << bit)}[op]
        return w(new), old
    if op.startswith("cmpxchg"):
        expected, desired = arg
        if expected == cur:
            return desired, (True, expected)
        return cur, (False, cur)
    new = table[base]()
    fetch = op.startswith("fetch_") or op.startswith("bin_fetch_")
    return new, (cur if fetch else None)


_ALIGNED = memoryview(bytearray(64))


def _aligned_view(width):
    """A `width`-byte slice of a buffer, aligned to `width`."""
    from dispatchkit._dk import _buffer_address
    addr, _ = _buffer_address(_ALIGNED)
    off = (-addr) % 16
    return _ALIGNED[off:off + width]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(WIDTHS), st.booleans(), st.sampled_from(OPS),
       st.booleans(), st.data())
def test_every_operation_matches_reference(width, signed, op, view, data):
    lo, hi = bounds(width, signed)
    start = data.draw(st.integers(lo, hi))
    atype = atomics.INT if signed else atomics.UINT
    if view:
        ctx = atomics.atomicview(buffer=_aligned_view(width), atype=atype)
        a = ctx.__enter__()
    else:
        ctx, a = None, atomics.atomic(width=width, atype=atype)
    a.store(start)
    if op.startswith("bit_"):
        arg = data.draw(st.integers(0, width * 8 - 1))
        result = getattr(a, op)(arg)
    elif op.startswith("cmpxchg"):
        expected = data.draw(st.one_of(st.just(start), st.integers(lo, hi)))
        desired = data.draw(st.integers(lo, hi))
        arg = (expected, desired)
        r = getattr(a, op)(expected=expected, desired=desired)
        if op == "cmpxchg_weak" and not r.success and expected == start:
            r = a.cmpxchg_strong(expected, desired)  # spurious failure
        result = (r.success, r.expected)
    elif op in ("inc", "dec", "neg", "fetch_inc", "fetch_dec", "fetch_neg",
                "bin_not", "bin_fetch_not"):
        arg = None
        result = getattr(a, op)()
    else:
        arg = data.draw(st.integers(0 if op.startswith("bin") or not signed
                                    else lo, hi))
        if op in ("add", "sub", "fetch_add", "fetch_sub") and signed:
            arg = data.draw(st.integers(lo, hi))
        result = getattr(a, op)(arg)
    new, expect = reference(op, start, arg, width, signed)
    assert a.load() == new
    assert result == expect
    if ctx is not None:
        ctx.__exit__(None, None, None)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(WIDTHS), st.binary(min_size=16, max_size=16),
       st.binary(min_size=16, max_size=16))
def test_bytes_operations(width, x, y):
    x, y = x[:width], y[:width]
    b = atomics.atomic(width=width, atype=atomics.BYTES)
    b.store(x)
    assert b.load() == x
    assert b.exchange(y) == x
    b.bin_or(x)
    want = bytes(p | q for p, q in zip(x, y))
    assert b.load() == want
    assert b.bin_fetch_not() == want
    assert b.load() == bytes((~p) & 0xFF for p in want)
    r = b.cmpxchg_strong(expected=x, desired=y, succ=MemoryOrder.SEQ_CST,
                         fail=MemoryOrder.RELAXED)
    assert bool(r) == (b.load() == y and r.success)
    success, expected = r  # iterable
    assert success is r.success and expected == r.expected


def test_wraparound_boundaries():
    u8 = atomics.atomic(width=1, atype=atomics.UINT)
    u8.store(255)
    u8.inc()
    assert u8.load() == 0
    i8 = atomics.atomic(width=1, atype=atomics.INT)
    i8.store(127)
    i8.inc()
    assert i8.load() == -128
    i8.neg()
    assert i8.load() == -128
    u16 = atomics.atomic(width=2, atype=atomics.UINT)
    u16.dec()
    assert u16.load() == 65535
    u128 = atomics.atomic(width=16, atype=atomics.UINT)
    u128.dec()
    assert u128.load() == 2**128 - 1
    i128 = atomics.atomic(width=16, atype=atomics.INT)
    i128.store(2**127 - 1)
    assert i128.fetch_inc() == 2**127 - 1
    assert i128.load() == -2**127


def test_inputs_do_not_wrap():
    u8 = atomics.atomic(width=1, atype=atomics.UINT)
    for bad in (256, -1):
        with pytest.raises(OverflowError):
            u8.store(bad)
    with pytest.raises(OverflowError):
        u8.add(-1)
    i8 = atomics.atomic(width=1, atype=atomics.INT)
    with pytest.raises(OverflowError):
        i8.store(128)
    i8.fetch_sub(-1)
    assert i8.load() == 1
    with pytest.raises(OverflowError):
        atomics.atomic(width=16, atype=atomics.UINT).store(2**128)
    with pytest.raises(TypeError):
        u8.store("1")
    b = atomics.atomic(width=2, atype=atomics.BYTES)
    with pytest.raises(ValueError):
        b.store(b"abc")


# ---- memory orders ------------------------------------------------------

def test_memory_order_validators():
    M = MemoryOrder
    assert [m for m in M if m.is_valid_store_order()] == \
        [M.RELAXED, M.RELEASE, M.SEQ_CST]
    assert [m for m in M if m.is_valid_load_order()] == \
        [M.RELAXED, M.ACQUIRE, M.SEQ_CST]
    assert M.ACQUIRE.is_valid_fail_order(M.SEQ_CST)
    assert not M.SEQ_CST.is_valid_fail_order(M.ACQUIRE)
    assert not M.RELEASE.is_valid_fail_order(M.SEQ_CST)


def test_invalid_orders_raise():
    a = atomics.atomic(width=4, atype=atomics.INT)
    with pytest.raises(MemoryOrderError):
        a.load(order=MemoryOrder.RELEASE)
    with pytest.raises(MemoryOrderError):
        a.store(1, order=MemoryOrder.ACQUIRE)
    with pytest.raises(MemoryOrderError):
        a.bit_test(0, order=MemoryOrder.RELEASE)  # a test is a load
    with pytest.raises(MemoryOrderError) as e:
        a.cmpxchg_strong(0, 1, success=MemoryOrder.ACQUIRE,
                         failure=MemoryOrder.SEQ_CST)
    assert e.value.is_fail is True
    a.load(order=MemoryOrder.ACQUIRE)
    a.store(1, MemoryOrder.RELEASE)
    a.fetch_add(1, order=MemoryOrder.RELAXED)
    assert a.load(MemoryOrder.RELAXED) == 2


# ---- errors, alignment, views --------------------------------------------

@pytest.mark.parametrize("width", [0, 3, 5, 7, 9, 17, 32])
def test_unsupported_widths(width):
    with pytest.raises(UnsupportedWidthException):
        atomics.atomic(width=width, atype=atomics.INT)
    with pytest.raises(UnsupportedWidthException):
        atomics.atomicview(buffer=bytearray(width), atype=atomics.BYTES)
    with pytest.raises(UnsupportedWidthException):
        atomics.Alignment(width)


def test_alignment():
    buf = bytearray(16)
    mv = memoryview(buf)
    align = atomics.Alignment(8)
    assert align.is_valid(mv[:8]) and align.is_valid_recommended(mv[:8])
    assert not align.is_valid(mv[1:9])
    assert not align.is_valid_minimum(mv[1:9])
    with pytest.raises(ValueError):
        align.is_valid(mv[:4])
    with pytest.raises(TypeError):
        align.is_valid(42)
    with pytest.raises(AlignmentError):
        atomics.atomicview(buffer=mv[1:9], atype=atomics.INT)


def test_readonly_buffers_give_readonly_views():
    with atomics.atomicview(buffer=b"\x05\x00\x00\x00",
                            atype=atomics.UINT) as a:
        assert a.readonly is True
        assert a.ops_supported == [OpType.LOAD, OpType.BIT_TEST]
        assert a.load() == 5 and a.bit_test(0) is True
        with pytest.raises(UnsupportedOperationException):
            a.store(1)
        with pytest.raises(UnsupportedOperationException):
            a.inc()


def test_readonly_16_byte_views():
    from dispatchkit._dk import _ATOMIC16_READONLY
    data = (2**100 + 5).to_bytes(16, sys.byteorder)
    if not _ATOMIC16_READONLY:
        # No 16-byte load that leaves memory untouched: refused, since a
        # compare-and-swap load would write into read-only memory.
        with pytest.raises(UnsupportedWidthException,
                           match="readonly objects with a width of 16"):
            atomics.atomicview(buffer=data, atype=atomics.UINT)
        return
    with atomics.atomicview(buffer=data, atype=atomics.UINT) as a:
        assert a.readonly is True and a.width == 16
        assert a.ops_supported == [OpType.LOAD, OpType.BIT_TEST]
        assert a.load() == 2**100 + 5 and int(a) == 2**100 + 5
        assert a.bit_test(100) is True and a.bit_test(99) is False
        with pytest.raises(UnsupportedOperationException):
            a.store(1)
    assert data == (2**100 + 5).to_bytes(16, sys.byteorder)


def test_view_contract_messages():
    buf = bytearray(4)
    ctx = atomics.atomicview(buffer=buf, atype=atomics.INT)
    with pytest.raises(BufferError):
        buf.extend(b"x")  # pinned until release
    with ctx as a:
        with pytest.raises(ValueError, match="Cannot call 'release' while "
                                             "context is open."):
            ctx.release()
        with pytest.raises(ValueError, match="Cannot open context multiple "
                                             "times."):
            ctx.__enter__()
        a.store(7)
    assert int.from_bytes(buf, sys.byteorder) == 7
    with pytest.raises(ValueError, match="released"):
        a.load()
    with pytest.raises(ValueError, match="after calling 'release'"):
        ctx.__enter__()
    buf.extend(b"x")  # no longer pinned
    ctx2 = atomics.atomicview(buffer=bytearray(4), atype=atomics.INT)
    ctx2.release()
    ctx2.release()  # repeatable
    with pytest.raises(ValueError, match="Cannot open context after calling "
                                         "'release'."):
        ctx2.__enter__()
    ctx2.__exit__(None, None, None)


def test_cmpxchg_result_and_seed_atomic_mul():
    def atomic_mul(a, operand):
        res = atomics.CmpxchgResult(success=False, expected=a.load())
        while not res:
            desired = res.expected * operand
            res = a.cmpxchg_weak(expected=res.expected, desired=desired)

    a = atomics.atomic(width=8, atype=atomics.INT)
    a.store(3)
    atomic_mul(a, 7)
    assert a.load() == 21
    r = atomics.CmpxchgResult(success=True, expected=5)
    assert bool(r) and list(r) == [True, 5]
    assert repr(r) == "CmpxchgResult(success=True, expected=5)"
    assert atomics.CmpxchgResult[int] is not None


def test_bytes_cmpxchg_does_not_mutate_expected():
    # The atomics package wrote the observed value into the caller's
    # immutable bytes (defect A1); ours must not.
    b = atomics.atomic(width=1, atype=atomics.BYTES)
    b.store(b"\x05")
    expected = b"\x00"
    r = b.cmpxchg_strong(expected, b"\x01")
    assert not r and r.expected == b"\x05"
    assert expected == b"\x00" and bytes([0]) == b"\x00"


# ---- the seed's samples: threads and processes ----------------------------

def test_seed_multithreading_sample():
    def fn(ai, n):
        for _ in range(n):
            ai.inc()

    a = atomics.atomic(width=4, atype=atomics.INT)
    total = 100_000
    t1 = threading.Thread(target=fn, args=(a, total // 2))
    t2 = threading.Thread(target=fn, args=(a, total // 2))
    t1.start(), t2.start()
    t1.join(), t2.join()
    assert a.load() == total


def _proc_inc(shmem_name, width, n):
    import dispatchkit.atomics as atomics
    shmem = shared_memory.SharedMemory(name=shmem_name)
    buf = shmem.buf[:width]
    with atomics.atomicview(buffer=buf, atype=atomics.INT) as a:
        for _ in range(n):
            a.inc()
    del buf
    shmem.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_seed_multiprocessing_sample(method):
    mpc = mp.get_context(method)
    width = 8
    shmem = shared_memory.SharedMemory(create=True, size=width)
    try:
        buf = shmem.buf[:width]
        total = 40_000
        procs = [mpc.Process(target=_proc_inc,
                             args=(shmem.name, width, total // 4))
                 for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        with atomics.atomicview(buffer=buf, atype=atomics.INT) as a:
            assert a.load() == total  # no increment lost
        del buf
    finally:
        shmem.close()
        shmem.unlink()


def _peer_inc(shmem_name, n):
    import atomics as peer
    shmem = shared_memory.SharedMemory(name=shmem_name)
    buf = shmem.buf[:8]
    with peer.atomicview(buffer=buf, atype=peer.INT) as a:
        for _ in range(n):
            a.inc()
    del buf
    shmem.close()


def test_interop_with_the_atomics_package_on_shared_memory():
    peer = importlib.import_module("atomics")
    shmem = shared_memory.SharedMemory(create=True, size=8)
    try:
        buf = shmem.buf[:8]
        p = mp.get_context("fork").Process(target=_peer_inc,
                                           args=(shmem.name, 2000))
        p.start()
        with atomics.atomicview(buffer=buf, atype=atomics.INT) as a:
            for _ in range(20000):
                a.inc()
        p.join(120)
        assert p.exitcode == 0
        with peer.atomicview(buffer=buf, atype=peer.INT) as b:
            assert b.load() == 22000
        with atomics.atomicview(buffer=buf, atype=atomics.INT) as a:
            a.store(-12345)
        with peer.atomicview(buffer=buf, atype=peer.INT) as b:
            assert b.load() == -12345  # same encoding
        del buf
    finally:
        shmem.close()
        shmem.unlink()


# ---- fidelity details: messages, precedence, results -----------------------

def test_value_errors_name_the_argument():
    b = atomics.atomic(width=4, atype=atomics.BYTES)
    with pytest.raises(ValueError, match="^'desired' object length does not "
                                         "match width.$"):
        b.store(b"abc")
    with pytest.raises(ValueError, match="^'desired' object length"):
        b.exchange(b"abcde")
    with pytest.raises(ValueError, match="^'value' object length"):
        b.bin_or(b"")
    with pytest.raises(ValueError, match="^'expected' object length"):
        b.cmpxchg_strong(b"ab", b"abcd")
    with pytest.raises(ValueError, match="^'desired' object length"):
        b.cmpxchg_weak(b"abcd", b"ab")
    with pytest.raises(ValueError, match="^'index' value out of range.$"):
        b.bit_test(32)
    with pytest.raises(ValueError, match="^'index' value out of range.$"):
        b.bit_test_set(-1)
    u = atomics.atomic(width=2, atype=atomics.UINT)
    with pytest.raises(OverflowError, match="^int too big to convert$"):
        u.store(65536)
    with pytest.raises(OverflowError, match="can't convert negative int"):
        u.fetch_add(-1)
    i = atomics.atomic(width=8, atype=atomics.INT)
    with pytest.raises(OverflowError, match="^int too big to convert$"):
        i.store(2**63)
    with pytest.raises(OverflowError, match="^int too big to convert$"):
        i.store(-2**200)
    with pytest.raises(TypeError, match="width' must have type 'int'"):
        atomics.atomic(width=4.0, atype=atomics.INT)
    with pytest.raises(ValueError, match="Negative width"):
        atomics.atomic(width=-4, atype=atomics.INT)
    with pytest.raises(TypeError, match="'buffer' must support the buffer"):
        atomics.atomicview(buffer=object(), atype=atomics.INT)


def test_integral_arguments_are_checked_before_the_operation():
    # As in the package: an integral object converts its arguments first,
    # so an out-of-range value on a read-only view is an OverflowError;
    # a bytes object reports the unsupported operation first.
    with atomics.atomicview(buffer=bytes(4), atype=atomics.UINT) as a:
        with pytest.raises(OverflowError):
            a.store(-1)
        with pytest.raises(UnsupportedOperationException):
            a.store(1, order=MemoryOrder.ACQUIRE)
    with atomics.atomicview(buffer=bytes(4), atype=atomics.BYTES) as b:
        with pytest.raises(UnsupportedOperationException):
            b.store(b"x")


def test_exception_messages():
    e = UnsupportedOperationException(OpType.STORE, 4, readonly=True)
    assert str(e) == ("Operation STORE is not supported on readonly objects "
                      "with a width of 4.")
    assert repr(e) == ("UnsupportedOperationException(optype=OpType.STORE, "
                       "width=4, readonly=True)")
    e = MemoryOrderError(OpType.EXCHANGE, MemoryOrder.ACQUIRE, is_fail=False)
    assert str(e) == ("ACQUIRE is not a valid  memory order for an EXCHANGE "
                      "operation.")
    e = MemoryOrderError(OpType.LOAD, MemoryOrder.RELEASE, is_fail=True)
    assert str(e) == ("RELEASE is not a valid fail memory order for a LOAD "
                      "operation.")
    e = AlignmentError(8, 0x1001, using_recommended=True)
    assert str(e) == ("The alignment of address 0x1001 does not meet the "
                      "recommended alignment requirements for atomic "
                      "operations on objects with a width of 8.")
    e = UnsupportedWidthException(3, readonly=False)
    assert str(e) == "No operations are supported on objects with a width " \
        "of 3."
    assert OpType.FETCH_ADD.fname == "fp_fetch_add"
    assert OpType.FETCH_ADD.cname == "arithmetic_ops"
    assert OpType.BIT_TEST_SET.fname == "fp_test_set"
    assert OpType.LOAD.cname is None


def test_cmpxchg_orders_follow_the_packages_rule():
    a = atomics.atomic(width=4, atype=atomics.UINT)
    # release/acquire: the package accepts it (C11 would not); it works.
    r = a.cmpxchg_strong(0, 5, success=MemoryOrder.RELEASE,
                         failure=MemoryOrder.ACQUIRE)
    assert r.success and a.load() == 5
    assert MemoryOrder.ACQUIRE.is_valid_fail_order(MemoryOrder.RELEASE)
    for succ, fail in ((MemoryOrder.ACQUIRE, MemoryOrder.SEQ_CST),
                       (MemoryOrder.SEQ_CST, MemoryOrder.RELEASE),
                       (MemoryOrder.SEQ_CST, MemoryOrder.ACQ_REL)):
        with pytest.raises(MemoryOrderError, match="fail memory order"):
            a.cmpxchg_weak(5, 6, success=succ, failure=fail)
    assert a.load() == 5


def test_cmpxchg_expected_is_a_fresh_value_of_the_right_type():
    a = atomics.atomic(width=1, atype=atomics.UINT)
    a.store(1)
    r = a.cmpxchg_strong(True, 2)  # bool is an int: compared as 1
    assert r.success and type(r.expected) is int and r.expected == 1
    b = atomics.atomic(width=2, atype=atomics.BYTES)
    exp = bytearray(2)
    r = b.cmpxchg_strong(exp, b"zz")
    assert r.success and type(r.expected) is bytes and r.expected == b"\0\0"
    exp[0] = 9  # the result does not alias the caller's buffer
    assert r.expected == b"\0\0"


def test_cmpxchg_results_are_independent_objects():
    # Results are recycled after they die; live ones must never be reused.
    a = atomics.atomic(width=8, atype=atomics.INT)
    keep = []
    for i in range(100):
        keep.append(a.cmpxchg_strong(i, i + 1))
        a.cmpxchg_strong(-1, 0)  # a failing result, dropped at once
    assert [tuple(r) for r in keep] == [(True, i) for i in range(100)]
    assert len({id(r) for r in keep}) == 100
    r = atomics.CmpxchgResult(0, 1)
    assert r.success == 0 and not r  # stored as given, as in the package
    r.success = True
    assert r


def test_released_objects_refuse_everything():
    ctx = atomics.atomicview(buffer=bytearray(8), atype=atomics.UINT)
    with ctx as v:
        pass
    msg = "Operation forbidden on released AtomicCore object."
    for use in (v.load, lambda: v.store(1), v.inc, lambda: v.bit_test(0),
                lambda: v.cmpxchg_strong(0, 1), lambda: v.width,
                lambda: v.readonly, lambda: v.ops_supported,
                lambda: v.signed, lambda: str(v), lambda: int(v)):
        with pytest.raises(ValueError, match=msg):
            use()


def test_alignment_messages_and_str():
    al = atomics.Alignment(4)
    assert str(al) == ("Alignment(width=4, recommended=4, minimum=4, "
                       "size_within=0)")
    with pytest.raises(ValueError, match="does not have matching width of "
                                         "4."):
        al.is_valid(bytearray(8))
    with pytest.raises(TypeError, match="must support the buffer protocol"):
        al.is_valid(3)


_RO_MMAP_16 = """
import mmap
import dispatchkit.atomics as atomics
ro = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ)
with atomics.atomicview(buffer=memoryview(ro)[:16], atype=atomics.UINT) as a:
    assert a.readonly and a.load() == 0 and a.bit_test(127) is False
print("ok")
"""


def test_readonly_16_byte_load_never_writes():
    """A read-only mapping: a load that wrote (a CAS) would segfault."""
    import subprocess
    from dispatchkit._dk import _ATOMIC16_READONLY
    if not _ATOMIC16_READONLY:
        pytest.skip("no pure 16-byte load on this CPU (refused instead)")
    out = subprocess.run([sys.executable, "-c", _RO_MMAP_16],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16])
def test_threads_hammering_every_width_lose_nothing(width):
    a = atomics.atomic(width=width, atype=atomics.UINT)
    b = atomics.atomic(width=width, atype=atomics.BYTES)
    n, k = 4, 5000

    def work():
        for _ in range(k):
            a.fetch_inc()
            a.add(2)
            a.sub(2)
            b.bit_test_compl(0)

    ts = [threading.Thread(target=work) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
        assert not t.is_alive()
    assert a.load() == (n * k) % (1 << (8 * width))
    assert b.bit_test(0) is False  # an even number of flips


def test_extension_needs_no_libatomic():
    """16-byte operations are inlined (cmpxchg16b), never libatomic calls,
    whose 16-byte path may take a lock that is not address-free."""
    import shutil
    import subprocess
    import dispatchkit._dk as ext
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run(["nm", "-D", "--undefined-only", ext.__file__],
                         capture_output=True, text=True, timeout=30).stdout
    assert "__atomic_" not in out and "__sync_" not in out
