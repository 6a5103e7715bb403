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


def growth(fn, settle=None, n=N):
    """Bytes still traced after n more calls. Tracing starts before a full
    warm-up batch: caches and free lists that fill with traced blocks in
    the first thousands of calls are then part of the baseline, while a
    leak keeps growing in the measured batch."""
    tracemalloc.start()
    try:
        for _ in range(n):
            fn()
        if settle:
            settle()
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            fn()
        if settle:
            settle()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def raise_each(cases):
    """Each (fn, exc) of cases: fn() raises exc (error paths must not leak
    either)."""
    for fn, exc in cases:
        try:
            fn()
        except exc:
            pass
        else:
            raise AssertionError(fn)


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
    q.set_context(object(), finalizer=lambda: None)
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


def data_source_cycle():
    done = dk.Semaphore(0)
    s = dk.DataSource(dk.DATA_ADD, done.signal)
    s.start()
    s.merge(3)
    done.wait(10)
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


# ---- dispatchkit.sync -------------------------------------------------------

import mmap  # noqa: E402

import dispatchkit.sync as sync  # noqa: E402

SHM = mmap.mmap(-1, 4096)
FW = sync.FutexWord(memoryview(SHM)[0:4])
A32 = sync.AtomicU32(memoryview(SHM)[64:68])
A64 = sync.AtomicU64(memoryview(SHM)[128:136])
MTX = sync.Mutex(memoryview(SHM)[192:256])
SEM = sync.Semaphore(memoryview(SHM)[256:320], initial=0)
EV = sync.Event(memoryview(SHM)[320:324])


def sync_words_cycle():
    FW.store_release(1)
    FW.load_acquire()
    FW.wait(0, 1000)  # the value differs: returns at once
    FW.wake(1)
    A32.store(3)
    A32.load()
    A32.cas(3, 4)
    A32.cas(0, 1)  # fails
    A64.store(2**40)
    A64.load()
    A64.cas(2**40, 5)
    sync.align_to_cacheline_size(100)


def sync_mutex_cycle():
    MTX.acquire()
    MTX.release()
    MTX.try_acquire()
    MTX.try_acquire()  # held: False
    MTX.release()
    MTX.acquire_ns(1000)
    MTX.owner_died
    MTX.owner_pid()
    MTX.last_acquired_ns()
    MTX.magic()
    MTX.release()
    with MTX:
        pass


def sync_semaphore_cycle():
    SEM.post(2)
    SEM.post1()
    SEM.wait()
    SEM.wait(timeout_ns=1000)
    SEM.wait(blocking=False)
    SEM.wait(timeout_ns=0)  # empty: False
    SEM.value()
    SEM.last_pid()
    SEM.last_acquired_ns()


def sync_event_cycle():
    EV.set()
    EV.is_set()
    EV.wait(1000)
    EV.clear()
    EV.wait(0)  # clear: times out at once


def sync_objects_cycle():
    b = bytearray(128)
    sync.Mutex(memoryview(b)[:64], shared=False)
    sync.Semaphore(memoryview(b)[64:128], initial=1, shared=False)
    sync.FutexWord(memoryview(b)[:4])
    sync.AtomicU64(memoryview(b)[:8])
    sync.Mutex(memoryview(SHM)[1024:1088])  # a second mapping each time


def sync_errors_cycle():
    raise_each((
            (MTX.release, RuntimeError),  # not held
            (lambda: sync.Mutex(bytearray(8)), ValueError),  # too small
            (lambda: sync.Mutex(b"\0" * 64), (ValueError, TypeError)),
            (lambda: sync.Semaphore(memoryview(SHM)[192:256]), ValueError),
            (lambda: SEM.post(-1), OverflowError),
            (lambda: A32.store(2**32), OverflowError),
            (lambda: sync.AtomicU64(memoryview(SHM)[1:9]), ValueError)))


def sync_named_cycle():
    m = sync.NamedMutex(NAMED)
    with m:
        pass
    m.close()
    s = sync.NamedSemaphore(NAMED, initial=1)
    s.post(1)
    s.wait(timeout=0)
    s.close()
    e = sync.NamedEvent(NAMED)
    e.set()
    e.close()


NAMED = f"dkleak{os.getpid()}"

# ---- dispatchkit.zerobuffer -------------------------------------------------

import dispatchkit.zerobuffer as zb  # noqa: E402

ZBNAME = f"dk-leaks-{os.getpid()}"
ZR = zb.Reader(ZBNAME, zb.BufferConfig(256, 1 << 16))
ZW = zb.Writer(ZBNAME)
ZW.set_metadata(b"leak check")
PAYLOAD = bytes(range(200))


def zb_copy_cycle():
    ZW.write_frame(PAYLOAD)
    f = ZR.read_frame(timeout=5)
    f.data[0]
    f.size
    f.sequence
    f.is_valid
    len(f)
    bytes(f)
    with f:
        pass
    ZW.write_frame(memoryview(PAYLOAD)[:50])
    ZR.release_frame(ZR.read_frame(timeout=5))
    ZW.write_frame_zero_copy(PAYLOAD)
    ZR.read_frame(timeout=5).dispose()
    ZW.write_frame(PAYLOAD)
    ZR.read_frame(timeout=5)  # released by garbage collection


def zb_zero_copy_cycle():
    v = ZW.get_frame_buffer(64)
    v[:4] = b"abcd"
    ZW.commit_frame()
    seq, v = ZW.get_frame_buffer_with_sequence(32)
    v[0] = 1
    ZW.commit_frame()
    with ZR.read_frame(timeout=5) as f:
        f.data
    with ZR.read_frame(timeout=5):
        pass
    ZR.get_metadata()
    ZR.frames_read
    ZW.bytes_written
    ZW.max_frame_size
    ZW.is_reader_connected()
    ZR.is_writer_connected()


def zb_errors_cycle():
    raise_each((
            (lambda: ZW.write_frame(bytes(1 << 17)),
             zb.FrameTooLargeException),
            (lambda: ZW.write_frame(b""), zb.InvalidFrameSizeException),
            (lambda: ZW.set_metadata(b"again"),
             zb.MetadataAlreadyWrittenException),
            (lambda: zb.Writer(ZBNAME), zb.WriterAlreadyConnectedException),
            (lambda: zb.Reader("bad/name"), zb.InvalidBufferNameException)))
    assert ZR.read_frame(timeout=0) is None


def zb_batch_cycle():
    assert ZW.write_frames([PAYLOAD, memoryview(PAYLOAD)[:7],
                            bytearray(b"x")]) == 3
    frames = ZR.read_frames(2, timeout=5)
    frames += ZR.read_frames(8, timeout=5)
    ZR.release_frames(frames)
    ZW.write_frames(iter([PAYLOAD]))
    ZR.read_frames(4, timeout=5)  # released by garbage collection
    raise_each(((lambda: ZW.write_frames([PAYLOAD, b""]),
                 zb.InvalidFrameSizeException),
                (lambda: ZW.write_frames([PAYLOAD, 5]), TypeError),
                (lambda: ZR.read_frames(0), ValueError),
                (lambda: ZR.release_frames(5), TypeError)))
    assert ZR.read_frames(4, timeout=0) == []


def zb_lifecycle_cycle():
    name = ZBNAME + "-lc"
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as r:
        with zb.Writer(name) as w:
            w.write_frame(b"x")
            r.read_frame(timeout=5).dispose()


CASES = {
    "sync_words": (sync_words_cycle, None, N),
    "sync_mutex": (sync_mutex_cycle, None, N),
    "sync_semaphore": (sync_semaphore_cycle, None, N),
    "sync_event": (sync_event_cycle, None, N),
    "sync_objects": (sync_objects_cycle, None, N),
    "sync_errors": (sync_errors_cycle, None, N),
    "sync_named": (sync_named_cycle, None, 500),
    "zb_copy": (zb_copy_cycle, None, N),
    "zb_zero_copy": (zb_zero_copy_cycle, None, N),
    "zb_errors": (zb_errors_cycle, None, N),
    "zb_batch": (zb_batch_cycle, None, N),
    "zb_lifecycle": (zb_lifecycle_cycle, None, 1000),
}

CASES.update({
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
    "data_source": (data_source_cycle, sources_settle),
    "iochannel": (channel_cycle, sources_settle),
    "read_write_async": (async_io_cycle, sources_settle),
})


# ---- executor, futures (test_executor.py has the behaviour) ----------

EX = dk.Executor()
EX1 = dk.Executor(max_workers=1)


def executor_cycle():
    EX.submit(noop).result()
    EX1.submit(noop).result()
    try:
        EX.submit(boom).result()
    except ValueError:
        pass
    list(EX.map(abs, (1, -2)))


def executor_errors_cycle():
    for bad in (lambda: EX.submit(42), lambda: EX.map(None, [1]),
                lambda: dk.Executor(0)):
        try:
            bad()
        except (TypeError, ValueError):
            pass
    closed = dk.Executor()
    closed.shutdown()
    try:
        closed.submit(noop)
    except RuntimeError:
        pass


def executor_cancel_cycle():
    gate = dk.Semaphore(0)
    e = dk.Executor(max_workers=1)
    first = e.submit(gate.wait, 10)
    second = e.submit(noop)
    second.cancel()
    gate.signal()
    first.result()
    e.shutdown(cancel_futures=True)


import asyncio  # noqa: E402

from dispatchkit import asyncio as dkio  # noqa: E402

LOOP = asyncio.new_event_loop()


async def _cancel(aw, started):
    """Run aw as a task and cancel it, before it starts or (started) once
    it waits, and swallow its CancelledError."""
    t = asyncio.ensure_future(aw)
    if started:
        await asyncio.sleep(0)
    t.cancel()
    try:
        await t
    except asyncio.CancelledError:
        pass


async def _aio_body():
    await dkio.run(C, noop)
    try:
        await dkio.run(C, boom)
    except ValueError:
        pass
    await _cancel(dkio.run(Q, noop), started=False)
    try:
        dkio.run(C, 42)
    except TypeError:
        pass


def aio_cycle():
    LOOP.run_until_complete(_aio_body())


def aio_no_loop_cycle():
    try:
        dkio.run(C, noop)
    except RuntimeError:
        pass


AIO_MEM = mmap.mmap(-1, 4096)
AIO_SEM = sync.Semaphore(memoryview(AIO_MEM)[:64], initial=0)
AIO_MUTEX = sync.Mutex(memoryview(AIO_MEM)[64:128])
AIO_DSEM = dk.Semaphore(0)


async def _aio_wait_body():
    AIO_SEM.post(1)
    await dkio.wait(AIO_SEM, 1)
    await dkio.wait(AIO_SEM, 0.0001)  # times out
    await _cancel(dkio.wait(AIO_DSEM), started=True)
    async with dkio.locked(AIO_MUTEX):
        pass
    try:
        await dkio.wait(object())
    except TypeError:
        pass


def aio_wait_cycle():
    LOOP.run_until_complete(_aio_wait_body())


AIO_ZB_NAME = "dkleakaio%d" % os.getpid()
AIO_ZB_READER = zb.Reader(AIO_ZB_NAME, zb.BufferConfig(1024, 64 * 1024))
AIO_ZB_WRITER = zb.Writer(AIO_ZB_NAME)


async def _aio_zb_body():
    await dkio.write_frame(AIO_ZB_WRITER, b"frame")
    f = await dkio.read_frame(AIO_ZB_READER, timeout=1)
    f.dispose()
    assert await dkio.read_frame(AIO_ZB_READER, timeout=0.0001) is None
    await _cancel(dkio.read_frame(AIO_ZB_READER), started=True)


def aio_zb_cycle():
    LOOP.run_until_complete(_aio_zb_body())


CASES.update({
    "aio_zerobuffer": (aio_zb_cycle, None, 1000),
    "aio_wait": (aio_wait_cycle, None, 1000),
    "aio_run": (aio_cycle, drain, 2000),
    "aio_no_loop": (aio_no_loop_cycle, None),
    "executor": (executor_cycle, None),
    "executor_errors": (executor_errors_cycle, None),
    "executor_cancel": (executor_cancel_cycle, None, 2000),
    "queue_submit": (lambda: Q.submit(noop).result(), None),
})


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_leak(name, shm_pid_dir, monkeypatch):
    monkeypatch.setenv("FASTIPC_PID_DIR", shm_pid_dir)
    fn, settle, *n = CASES[name]
    n = n[0] if n else N
    grew = growth(fn, settle, n)
    # Fewer calls (the costly cases): a proportionally lower limit, so
    # one small object leaked per call still fails.
    limit = LIMIT * n // N
    print(f"{name}: {grew} bytes after {n} calls")
    assert grew < limit, f"{name}: {grew} bytes after {n} calls"


def test_async_exceptions_do_not_leak(unraisable):
    def settle():
        drain()
        reported.append(len(unraisable))
        unraisable.clear()  # the hook's own list is not a leak

    reported = []
    grew = growth(lambda: Q.run_async(boom), settle)
    assert grew < LIMIT, grew
    assert sum(reported) == 2 * N  # every one was reported
