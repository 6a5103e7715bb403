"""dispatchkit.sync word primitives (FutexWord, AtomicU32, AtomicU64)
with fastipc's API: real processes over shared memory, interop with
fastipc from the registry, Ctrl-C, bad input."""
import importlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
from multiprocessing import shared_memory

import pytest

import dispatchkit.atomics as atomics
import dispatchkit.sync as sync


@pytest.fixture
def shm():
    m = shared_memory.SharedMemory(create=True, size=64)
    yield m
    m.close()
    m.unlink()


def test_futexword_wait_wake_between_threads(shm):
    fw = sync.FutexWord(shm.buf, shared=False)
    assert fw.load_acquire() == 0
    assert fw.wait(1, 1000) is False  # value differs: returns at once
    assert fw.wait(0, 1_000_000) is False  # times out
    seen = []

    def waiter():
        # Without a wake-up this thread would sleep for good.
        while fw.load_acquire() == 0:
            fw.wait(0)
        seen.append(fw.load_acquire())

    t = threading.Thread(target=waiter)
    t.start()
    t.join(0.1)
    assert t.is_alive()  # asleep in wait()
    fw.store_release(1)
    fw.wake(1)
    t.join(10)
    assert not t.is_alive() and seen == [1]
    assert "FutexWord" in repr(fw)
    del fw


def _waiter(name, q):
    m = shared_memory.SharedMemory(name=name)
    fw = sync.FutexWord(m.buf, shared=True)
    q.put("ready")
    while fw.load_acquire() == 0:
        fw.wait(0, 5_000_000_000)
    q.put(fw.load_acquire())
    del fw
    m.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_futexword_wakes_another_process(shm, method):
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_waiter, args=(shm.name, q))
    p.start()
    assert q.get(timeout=30) == "ready"
    fw = sync.FutexWord(shm.buf, shared=True)
    fw.store_release(7)
    fw.wake(1)
    assert q.get(timeout=30) == 7
    p.join(30)
    assert p.exitcode == 0
    del fw


def test_atomic_words_share_memory_with_dispatchkit_atomics(shm):
    u32 = sync.AtomicU32(shm.buf[:4])
    u64 = sync.AtomicU64(shm.buf[8:16])
    u32.store(41)
    assert u32.cas(41, 42) is True and u32.cas(41, 0) is False
    u64.store(2**64 - 1)
    with atomics.atomicview(buffer=shm.buf[8:16], atype=atomics.UINT) as v:
        v.inc()  # wraps to 0 through the same C atomics
    assert u64.load() == 0
    assert u32.load() == 42
    del u32, u64


def test_interop_with_fastipc(shm):
    fastipc = importlib.import_module("fastipc._primitives")
    ours = sync.AtomicU32(shm.buf[:4])
    theirs = fastipc.AtomicU32(shm.buf[:4])
    ours.store(10)
    assert theirs.load() == 10
    assert theirs.cas(10, 11)
    assert ours.load() == 11
    fw_ours = sync.FutexWord(shm.buf[4:8])
    fw_theirs = fastipc.FutexWord(shm.buf[4:8], shared=True)
    fw_theirs.store_release(3)
    assert fw_ours.load_acquire() == 3
    del ours, theirs, fw_ours, fw_theirs


def test_bad_input(shm):
    with pytest.raises(ValueError, match="4-byte aligned >=4"):
        sync.FutexWord(bytearray(3))
    with pytest.raises(ValueError, match="4-byte aligned"):
        sync.AtomicU32(shm.buf[1:5])
    with pytest.raises(ValueError, match="8-byte aligned >=8"):
        sync.AtomicU64(shm.buf[4:12])
    with pytest.raises(ValueError, match="writable"):
        sync.AtomicU32(bytes(4))
    with pytest.raises(TypeError):
        sync.FutexWord(42)
    a = sync.AtomicU32(bytearray(4))
    with pytest.raises(OverflowError):
        a.store(2**32)
    with pytest.raises(OverflowError):
        a.store(-1)
    with pytest.raises(OverflowError):
        sync.AtomicU64(bytearray(8)).store(-1)
    with pytest.raises(ValueError):
        sync.FutexWord(bytearray(4)).wake(-1)


def test_buffer_is_pinned_while_in_use():
    buf = bytearray(8)
    a = sync.AtomicU64(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    del a
    buf.extend(b"x")


def test_seed_example_closes_shared_memory_under_live_primitives():
    # fastipc's README closes the SharedMemory while the primitives are
    # still referenced; that must not raise BufferError. Our objects keep a
    # mapping of their own, so they stay usable (fastipc's would crash).
    shm = shared_memory.SharedMemory(create=True, size=4)
    try:
        fw = sync.FutexWord(shm.buf, shared=True)
    finally:
        shm.close(); shm.unlink()
    shm = shared_memory.SharedMemory(create=True, size=128)
    try:
        mtx = sync.Mutex(shm.buf[:64])
        sem = sync.Semaphore(shm.buf[64:], initial=0)
        with mtx:
            pass
    finally:
        shm.close(); shm.unlink()
    fw.store_release(7)
    assert fw.load_acquire() == 7
    assert fw.wait(6, timeout_ns=0) is False  # the word is 7: no sleep
    assert mtx.acquire() is True
    assert mtx.owner_pid() == os.getpid()
    mtx.release()
    sem.post(2)
    assert sem.wait(timeout_ns=0) and sem.value() == 1


def test_aliased_memory_is_the_same_memory():
    # The second mapping shares the pages: writes through the caller's
    # buffer and through the object meet, in this process and in a child.
    shm = shared_memory.SharedMemory(create=True, size=4096 + 64)
    try:
        a = sync.AtomicU32(shm.buf[4060:4064])  # just before m
        m = sync.Mutex(shm.buf[4064:4128])        # straddles two pages
        shm.buf[4060:4064] = (41).to_bytes(4, "little")
        assert a.load() == 41
        a.store(42)
        assert int.from_bytes(shm.buf[4060:4064], "little") == 42
        assert m.acquire() is True
        assert int.from_bytes(shm.buf[4064 + 12:4064 + 16], "little") \
            == os.getpid()
        pid = os.fork()
        if pid == 0:
            ok = a.load() == 42 and m.try_acquire() is False
            a.store(43)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert int.from_bytes(shm.buf[4060:4064], "little") == 43
        m.release()
        del a, m
    finally:
        shm.close()
        shm.unlink()


def test_ctrl_c_interrupts_futex_wait():
    code = textwrap.dedent("""
        import os, signal, threading
        import dispatchkit.sync as sync
        # Installed explicitly: a shell's background job starts with SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fw = sync.FutexWord(bytearray(4), shared=False)
        threading.Timer(0.2, lambda: os.kill(os.getpid(),
                                             signal.SIGINT)).start()
        try:
            fw.wait(0)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "interrupted"
