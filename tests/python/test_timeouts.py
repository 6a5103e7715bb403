"""The three timeout rules of the binding, one per seed (binding.h's
dkpy_deadline_cygcd, dkpy_deadline_zerobuffer, dkpy_deadline_fastipc), at
their edges: 0, negatives, NaN, infinity and values past the clock's range.
A wait that must not end on its own is ended by another thread, so "waits
forever" is shown by the wait returning True, never by a duration."""
import math
import os
import threading
import time

import pytest

import dispatchkit
import dispatchkit.sync as sync
import dispatchkit.zerobuffer as zb


def later(fn, delay=0.2):
    """Run fn on another thread after delay seconds (joined by the test)."""
    t = threading.Timer(delay, fn)
    t.start()
    return t


# ---- cygcd: seconds; None, negative or inf wait forever; 0 polls ----------

@pytest.mark.parametrize("timeout", [0, 0.0])
def test_cygcd_zero_polls(timeout):
    s = dispatchkit.Semaphore(0)
    assert s.wait(timeout) is False
    s.signal()
    assert s.wait(timeout) is True
    g = dispatchkit.Group()
    g.enter()
    assert g.wait(timeout) is False
    g.leave()
    assert g.wait(timeout) is True


@pytest.mark.parametrize("timeout", [None, -1, -0.5, -1e300, math.inf,
                                     -math.inf, 1e300, 2.0**64])
def test_cygcd_forever(timeout):
    s = dispatchkit.Semaphore(0)
    t = later(s.signal)
    try:
        assert s.wait(timeout) is True
    finally:
        t.join()
    g = dispatchkit.Group()
    g.enter()
    t = later(g.leave)
    try:
        assert g.wait(timeout) is True
    finally:
        t.join()


def test_cygcd_nan_is_a_value_error():
    with pytest.raises(ValueError, match="timeout must not be NaN"):
        dispatchkit.Semaphore(0).wait(math.nan)
    with pytest.raises(ValueError, match="timeout must not be NaN"):
        dispatchkit.Group().wait(math.nan)


def test_cygcd_not_a_number_is_a_type_error():
    with pytest.raises(TypeError):
        dispatchkit.Semaphore(0).wait("1")


def test_cygcd_semaphore_with_blocks_until_signalled():
    # `with sem:` on an exhausted semaphore sleeps until a signal comes
    # (its blocking path once handed the wait the wrong object).
    s = dispatchkit.Semaphore(0)
    t = later(s.signal)
    try:
        with s:
            pass
    finally:
        t.join()
    assert s.wait(0) is True  # __exit__ gave the unit back


# ---- zerobuffer: seconds; None forever; 0 and negatives poll ------------

@pytest.fixture
def reader(request):
    name = f"dkzb-timeouts-{os.getpid()}-{request.node.name[-32:]}"
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as r:
        yield name, r


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -1e300, -math.inf])
def test_zerobuffer_zero_and_negative_poll(reader, timeout):
    _, r = reader
    assert r.read_frame(timeout=timeout) is None


@pytest.mark.parametrize("timeout", [None, math.inf, 1e300, 2.0**64])
def test_zerobuffer_forever(reader, timeout):
    name, r = reader
    with zb.Writer(name) as w:
        t = later(lambda: w.write_frame(b"late"))
        try:
            f = r.read_frame(timeout=timeout)
        finally:
            t.join()
        assert bytes(f.data) == b"late"
        f.dispose()


def test_zerobuffer_nan_is_a_value_error(reader):
    _, r = reader
    with pytest.raises(ValueError, match="timeout must be a number"):
        r.read_frame(timeout=math.nan)


# ---- fastipc: int nanoseconds; negative forever; 0 polls ----------------

@pytest.fixture
def mem():
    return bytearray(256)


def test_fastipc_zero_polls(mem):
    fw = sync.FutexWord(memoryview(mem)[:4], shared=False)
    assert fw.wait(0, timeout_ns=0) is False
    s = sync.Semaphore(memoryview(mem)[64:128], initial=0, shared=False)
    assert s.wait(timeout_ns=0) is False
    e = sync.Event(memoryview(mem)[128:132], shared=False)
    assert e.wait(timeout_ns=0) is False
    e.set()
    assert e.wait(timeout_ns=0) is True


@pytest.mark.parametrize("timeout_ns", [-1, -2**63])
def test_fastipc_negative_waits_forever(mem, timeout_ns):
    s = sync.Semaphore(memoryview(mem)[64:128], initial=0, shared=False)
    t = later(s.post1)
    try:
        assert s.wait(timeout_ns=timeout_ns) is True
    finally:
        t.join()
    e = sync.Event(memoryview(mem)[128:132], shared=False)
    t = later(e.set)
    try:
        assert e.wait(timeout_ns=timeout_ns) is True
    finally:
        t.join()
    fw = sync.FutexWord(memoryview(mem)[:4], shared=False)

    def bump():
        fw.store_release(1)
        fw.wake()

    t = later(bump)
    try:
        # True if woken in a sleep, False if the store landed between two
        # of the binding's slices (the word no longer held 0): either way
        # the wait lasted until the store.
        fw.wait(0, timeout_ns=timeout_ns)
        assert fw.load_acquire() == 1
    finally:
        t.join()


def test_fastipc_largest_timeout_waits(mem):
    # 2**63 - 1 ns is about 292 years: no wrap to a deadline in the past.
    s = sync.Semaphore(memoryview(mem)[64:128], initial=0, shared=False)
    t = later(s.post1)
    try:
        assert s.wait(timeout_ns=2**63 - 1) is True
    finally:
        t.join()


@pytest.mark.parametrize("timeout_ns", [2**63, -2**63 - 1, 2**64])
def test_fastipc_out_of_range_is_an_overflow_error(mem, timeout_ns):
    s = sync.Semaphore(memoryview(mem)[64:128], initial=0, shared=False)
    with pytest.raises(OverflowError):
        s.wait(timeout_ns=timeout_ns)
    e = sync.Event(memoryview(mem)[128:132], shared=False)
    with pytest.raises(OverflowError):
        e.wait(timeout_ns=timeout_ns)
    fw = sync.FutexWord(memoryview(mem)[:4], shared=False)
    with pytest.raises(OverflowError):
        fw.wait(0, timeout_ns=timeout_ns)


@pytest.mark.parametrize("timeout_ns", [math.nan, 1.5, "1"])
def test_fastipc_not_an_int_is_a_type_error(mem, timeout_ns):
    e = sync.Event(memoryview(mem)[128:132], shared=False)
    with pytest.raises(TypeError):
        e.wait(timeout_ns=timeout_ns)


def test_fastipc_mutex_zero_and_negative(mem):
    m = sync.Mutex(memoryview(mem)[192:256], shared=False)
    assert m.acquire_ns(0) is True
    got = []
    th = threading.Thread(target=lambda: got.append(m.acquire_ns(0, 0)))
    th.start()
    th.join()
    assert got == [False]
    th = threading.Thread(target=lambda: got.append(m.acquire_ns(-1)))
    th.start()
    time.sleep(0.2)  # most likely asleep in acquire_ns by now
    m.release()  # ownership is per thread: the holder releases
    th.join()
    assert got == [False, True]
