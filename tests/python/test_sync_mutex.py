"""dispatchkit.sync Mutex and Semaphore: real processes over shared
memory, a SIGKILLed holder, fastipc from the registry on the same memory at
the same time, threads, Ctrl-C, bad input."""
import importlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import shared_memory

import pytest

import dispatchkit
import dispatchkit.sync as sync


@pytest.fixture
def shm():
    m = shared_memory.SharedMemory(create=True, size=256)
    yield m
    m.close()
    m.unlink()


def test_sync_names_do_not_shadow_dispatch():
    assert dispatchkit.Semaphore is not sync.Semaphore
    s = dispatchkit.Semaphore(1)
    assert s.wait(0) is True


def _count(name, n, use_fastipc):
    m = shared_memory.SharedMemory(name=name)
    if use_fastipc:
        from fastipc._primitives import Mutex
    else:
        from dispatchkit.sync import Mutex
    mtx = Mutex(m.buf[:64], shared=True)
    counter = m.buf[64:72].cast("Q")
    for _ in range(n):
        with mtx:
            counter[0] += 1  # not atomic: only the mutex protects it
    del counter, mtx
    m.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_times_increments_lose_nothing(shm, method):
    mtx = sync.Mutex(shm.buf[:64])
    ctx = mp.get_context(method)
    procs = [ctx.Process(target=_count, args=(shm.name, 2000, False))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert shm.buf[64:72].cast("Q")[0] == 8000
    assert mtx.owner_pid() == 0
    del mtx


def test_fastipc_and_dispatchkit_share_one_mutex_at_once(shm):
    importlib.import_module("fastipc")
    sync.Mutex(shm.buf[:64])  # initialise
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_count, args=(shm.name, 2000, fastipc))
             for fastipc in (True, False, True, False)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert shm.buf[64:72].cast("Q")[0] == 8000


def test_mutex_initialised_by_fastipc_is_usable(shm):
    fastipc = importlib.import_module("fastipc._primitives")
    theirs = fastipc.Mutex(shm.buf[:64])
    ours = sync.Mutex(shm.buf[:64])
    assert ours.magic() == theirs.magic() == 0x4D555458
    theirs.acquire()
    assert ours.try_acquire() is False
    assert ours.owner_pid() == os.getpid()
    theirs.release()
    assert ours.acquire_ns(1_000_000) is True
    assert theirs.owner_pid() == os.getpid()
    ours.release()
    del ours, theirs


def _hold_forever(name, q):
    m = shared_memory.SharedMemory(name=name)
    mtx = sync.Mutex(m.buf[:64])
    mtx.acquire()
    q.put(os.getpid())
    time.sleep(60)


def test_holder_killed_is_detected(shm):
    mtx = sync.Mutex(shm.buf[:64])
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_hold_forever, args=(shm.name, q))
    p.start()
    holder = q.get(timeout=30)
    assert mtx.owner_pid() == holder
    assert mtx.acquire_ns(100_000_000) is False  # alive: times out
    os.kill(holder, signal.SIGKILL)
    p.join(30)
    assert mtx.acquire_ns(10_000_000_000) is True  # within the timeout
    assert mtx.owner_died is True
    assert mtx.owner_pid() == os.getpid()
    mtx.release()
    assert mtx.acquire_ns(0) is True and mtx.owner_died is False
    mtx.release()
    del mtx


def _hold_until_told(name, held, let_go, turn_over, rounds):
    m = shared_memory.SharedMemory(name=name)
    mtx = sync.Mutex(m.buf[:64])
    for _ in range(rounds):
        mtx.acquire()
        held.put(os.getpid())
        let_go.get(timeout=60)
        mtx.release()
        turn_over.get(timeout=60)  # the parent has had its turn
    del mtx
    m.close()


def test_waiter_on_a_long_hold_sleeps_instead_of_spinning(shm):
    # A waiter watches a held word for a bounded time (2 us with the GIL,
    # then up to 20 us without it, less once such watches have failed)
    # and then sleeps on the futex: while another process holds the mutex
    # for 100 ms the waiting thread must use next to no CPU. Asserted on
    # the waiting thread's own CPU time, with a wide margin (under 10% of
    # the hold; a spinning waiter would use about all of it).
    mtx = sync.Mutex(shm.buf[:64])
    ctx = mp.get_context("fork")
    held, let_go, turn_over = ctx.Queue(), ctx.Queue(), ctx.Queue()
    rounds, hold = 3, 0.1
    p = ctx.Process(target=_hold_until_told,
                    args=(shm.name, held, let_go, turn_over, rounds))
    p.start()
    try:
        for _ in range(rounds):
            holder = held.get(timeout=60)
            assert mtx.owner_pid() == holder
            timer = threading.Timer(hold, let_go.put, args=(None,))
            timer.start()  # the holder lets go only after `hold`
            cpu = time.thread_time()
            assert mtx.acquire() is True
            cpu = time.thread_time() - cpu
            timer.join()
            assert cpu < hold / 10, f"waiter used {cpu * 1e3:.1f} ms of CPU"
            mtx.release()
            turn_over.put(None)
        p.join(60)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    del mtx


def test_threads_of_one_process_share_the_mutex(shm):
    # fastipc raises RuntimeError here (ownership per process, defect F1).
    mtx = sync.Mutex(shm.buf[:64], shared=False)
    count = [0]

    def work():
        for _ in range(2000):
            with mtx:
                v = count[0]
                count[0] = v + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert count[0] == 8000
    del mtx


def test_mutex_misuse(shm):
    mtx = sync.Mutex(shm.buf[:64])
    with pytest.raises(RuntimeError, match="not owned"):
        mtx.release()
    mtx.acquire()
    with pytest.raises(RuntimeError, match="already owned by this thread"):
        mtx.acquire()
    mtx.release()
    mtx.acquire()
    mtx.force_release()
    assert mtx.owner_pid() == 0
    with pytest.raises(ValueError, match=">=64"):
        sync.Mutex(bytearray(32))
    with pytest.raises(ValueError, match="aligned"):
        sync.Mutex(shm.buf[1:65])
    with pytest.raises(ValueError, match="writable"):
        sync.Mutex(bytes(64))
    shm.buf[128:132] = b"JUNK"
    with pytest.raises(ValueError, match="wrong magic"):
        sync.Mutex(shm.buf[128:192])
    with pytest.raises(ValueError, match="wrong magic"):
        sync.Semaphore(shm.buf[:64])  # a Mutex is there
    del mtx


def test_semaphore_counts_and_bad_values(shm):
    s = sync.Semaphore(shm.buf[:64], initial=2)
    assert s.magic() == 0x53454D41
    assert s.wait() and s.wait()
    assert s.wait(timeout_ns=1_000_000) is False
    assert s.wait(blocking=False) is False
    s.post(3)
    assert s.value() == 3 and s.last_pid() == os.getpid()
    s.post1()
    assert s.value() == 4
    attached = sync.Semaphore(shm.buf[:64])  # initial=None: attach only
    assert attached.value() == 4
    with pytest.raises(OverflowError):
        sync.Semaphore(shm.buf[64:128], initial=-1)
    with pytest.raises(OverflowError):
        sync.Semaphore(shm.buf[64:128], initial=2**32)
    with pytest.raises(OverflowError):
        s.post(-1)
    with pytest.raises(OverflowError):
        s.post(2**32)
    with pytest.raises(OverflowError, match="overflow"):
        s.post(2**32 - 1)
    del s, attached


def test_post_n_wakes_every_waiter(shm):
    # fastipc wakes only on a 0 -> n transition and loses the second of
    # two sleepers (defect F3); every waiter here must get its unit.
    s = sync.Semaphore(shm.buf[:64], initial=0, shared=False)
    got = []
    threads = [threading.Thread(target=lambda: got.append(
        s.wait(timeout_ns=20_000_000_000))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # all three asleep
    s.post1()
    time.sleep(0.05)
    s.post1()
    s.post1()
    for t in threads:
        t.join(30)
    assert got == [True, True, True]
    assert s.value() == 0
    del s


def _sem_ping(name, rounds):
    m = shared_memory.SharedMemory(name=name)
    ping = sync.Semaphore(m.buf[:64])
    pong = sync.Semaphore(m.buf[64:128])
    for _ in range(rounds):
        assert ping.wait(timeout_ns=10_000_000_000)
        pong.post()
    del ping, pong
    m.close()


def test_semaphore_ping_pong_between_processes(shm):
    ping = sync.Semaphore(shm.buf[:64], initial=0)
    pong = sync.Semaphore(shm.buf[64:128], initial=0)
    p = mp.get_context("spawn").Process(target=_sem_ping,
                                        args=(shm.name, 500))
    p.start()
    for _ in range(500):
        ping.post()
        assert pong.wait(timeout_ns=10_000_000_000)
    p.join(60)
    assert p.exitcode == 0
    del ping, pong


@pytest.mark.parametrize("what", ["mutex", "semaphore"])
def test_ctrl_c_interrupts_waits(what):
    code = textwrap.dedent(f"""
        import os, signal, threading
        import dispatchkit.sync as sync
        # Installed explicitly: a shell's background job starts with SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        buf = bytearray(64)
        threading.Timer(0.3, lambda: os.kill(os.getpid(),
                                             signal.SIGINT)).start()
        try:
            if {what!r} == "mutex":
                m = sync.Mutex(buf, shared=False)
                t = threading.Thread(target=m.acquire)
                t.start(); t.join()   # another thread holds it
                m.acquire()
            else:
                sync.Semaphore(buf, initial=0).wait()
        except KeyboardInterrupt:
            print("interrupted")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "interrupted"


def test_align_to_cacheline_size():
    assert sync.align_to_cacheline_size(1) == 64
    assert sync.align_to_cacheline_size(64) == 64
    assert sync.align_to_cacheline_size(65) == 128
