"""Reference leak checks: each entry point runs 10,000 times and the
memory tracemalloc sees must not grow with it (a leak of one small object
per call would be at least 10,000 x 32 bytes)."""
import gc
import os
import signal
import tracemalloc

import pytest

import dispatchkit as dk

N = 10_000
LIMIT = 64 * 1024


def growth(fn, settle=None):
    """Bytes still traced after N more calls. Tracing starts before a full
    warm-up batch: caches and free lists that fill with traced blocks in
    the first thousands of calls are then part of the baseline, while a
    leak keeps growing in the measured batch."""
    tracemalloc.start()
    try:
        for _ in range(N):
            fn()
        if settle:
            settle()
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(N):
            fn()
        if settle:
            settle()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


Q = dk.Queue("leaks")
C = dk.Queue("leaks-c", concurrent=True)


def noop():
    pass


def boom():
    raise ValueError("x")


def drain():
    Q.barrier_sync(noop)
    C.barrier_sync(noop)
    g = dk.Group()
    g.run_async(dk.Queue.global_queue(), noop)
    g.wait(10)


def sync_raises():
    try:
        Q.run_sync(boom)
    except ValueError:
        pass


def group_cycle():
    g = dk.Group()
    g.run_async(C, noop)
    g.notify(Q, noop)
    g.wait(10)


def semaphore_cycle():
    s = dk.Semaphore(1)
    s.wait(0)
    s.signal()
    s.wait(0.0)


def once_cycle():
    o = dk.Once()
    o(noop)
    o(noop)


def queue_cycle():
    q = dk.Queue("tmp", concurrent=True, qos=dk.QOS_CLASS_UTILITY)
    q.set_context(object(), finalizer=lambda v: None)
    q.set_specific("k", object())
    q.run_async(noop)


def specific_cycle():
    Q.set_specific("key", object())
    Q.get_specific("key")
    dk.get_specific("key")


def timer_cycle():
    t = dk.Timer(100, noop)
    t.start()
    t.cancel()


def signal_cycle():
    s = dk.SignalSource(signal.SIGUSR2, noop)
    s.start()
    s.cancel()


R, W = os.pipe()


def read_source_cycle():
    s = dk.ReadSource(R, noop)
    s.start()
    s.cancel()


def channel_cycle():
    ch = dk.IOChannel(W)
    done = dk.Semaphore(0)
    ch.write(b"x" * 10, lambda d, r, e: d and done.signal())
    done.wait(10)
    os.read(R, 100)
    ch.close()


def async_io_cycle():
    done = dk.Semaphore(0)
    dk.write_async(W, b"abc", lambda r, e: done.signal())
    done.wait(10)
    dk.read_async(R, 3, lambda d, e: done.signal())
    done.wait(10)


def sources_settle():
    # Cancel handlers drop the started-source references asynchronously.
    g = dk.Group()
    g.run_async(dk.Queue.global_queue(), noop)
    g.wait(10)
    import time
    time.sleep(0.05)


import dispatchkit.atomics as atomics  # noqa: E402

ATOM = atomics.atomic(width=8, atype=atomics.INT)
ATOM16 = atomics.atomic(width=16, atype=atomics.UINT)


def atomics_cycle():
    ATOM.inc()
    ATOM.fetch_add(3)
    ATOM.load()
    ATOM.cmpxchg_strong(0, 1)
    ATOM.bit_test_set(3)
    ATOM16.fetch_inc()
    ATOM16.cmpxchg_weak(0, 0)


def atomics_objects_cycle():
    a = atomics.atomic(width=4, atype=atomics.UINT)
    a.store(5)
    with atomics.atomicview(buffer=bytearray(8), atype=atomics.BYTES) as v:
        v.bin_fetch_xor(b"\x01" * 8)
    try:
        a.store(-1)
    except OverflowError:
        pass


CASES = {
    "atomics_ops": (atomics_cycle, None),
    "atomics_objects": (atomics_objects_cycle, None),
    "run_async": (lambda: Q.run_async(noop), drain),
    "run_async_concurrent": (lambda: C.run_async(noop), drain),
    "barrier_async": (lambda: C.barrier_async(noop), drain),
    "run_sync_inline": (lambda: Q.run_sync(noop), None),
    "run_sync_raises": (sync_raises, None),
    "barrier_sync": (lambda: C.barrier_sync(noop), None),
    "after": (lambda: Q.after(0, noop), drain),
    "group": (group_cycle, drain),
    "semaphore": (semaphore_cycle, None),
    "once": (once_cycle, None),
    "apply": (lambda: dk.apply(3, lambda i: None), None),
    "queue_lifecycle": (queue_cycle, drain),
    "specifics": (specific_cycle, None),
    "time": (lambda: (dk.time_from_now(1.0), dk.walltime()), None),
    "main_queue": (lambda: (dk.Queue.main_queue().run_async(noop),
                            dk.drain_main_queue()), None),
    "timer": (timer_cycle, sources_settle),
    "signal_source": (signal_cycle, sources_settle),
    "read_source": (read_source_cycle, sources_settle),
    "iochannel": (channel_cycle, sources_settle),
    "read_write_async": (async_io_cycle, sources_settle),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_leak(name):
    fn, settle = CASES[name]
    grew = growth(fn, settle)
    assert grew < LIMIT, f"{name}: {grew} bytes after {N} calls"


def test_async_exceptions_do_not_leak(unraisable):
    def settle():
        drain()
        reported.append(len(unraisable))
        unraisable.clear()  # the hook's own list is not a leak

    reported = []
    grew = growth(lambda: Q.run_async(boom), settle)
    assert grew < LIMIT, grew
    assert sum(reported) == 2 * N  # every one was reported
