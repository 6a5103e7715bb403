"""Awaitable waits (dispatchkit.asyncio.wait/acquire/locked): dispatch
Group and Semaphore, dispatchkit.sync primitives and their Named forms,
across processes, under asyncio's loop and uvloop's."""
import asyncio
import mmap
import multiprocessing as mp
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import dispatchkit as dk
import dispatchkit.sync as sync
from dispatchkit import asyncio as dkio
from shm_names import fastipc_paths, unlink_all

uvloop = pytest.importorskip("uvloop")

G = dk.Queue.global_queue()


@pytest.fixture(params=["asyncio", "uvloop", "asyncio-watcher",
                        "uvloop-watcher"])
def run(request, monkeypatch):
    # Each loop under both ways of sleeping: the loop's own io_uring
    # (the default where the kernel has futex waits on it) and the futex
    # watcher thread (DK_NO_IO_URING, as on kernels before 6.7).
    watcher = request.param.endswith("-watcher")
    if watcher:
        monkeypatch.setenv("DK_NO_IO_URING", "1")
    lp = (asyncio.new_event_loop() if request.param.startswith("asyncio")
          else uvloop.new_event_loop())

    def go(coro):
        return lp.run_until_complete(coro)

    yield go
    w = dkio._wakers.get(lp)
    w = w() if w is not None else None
    if w is not None and not watcher:
        assert w.uses_ring() is URING
    elif w is not None:
        assert w.uses_ring() is False
    lp.close()


def _ring_available():
    async def probe():
        return dkio._waker_for(asyncio.get_running_loop()).uses_ring()
    return asyncio.run(probe())


# Linux 6.7+ with io_uring allowed (kernel.io_uring_disabled, seccomp).
URING = _ring_available()


@pytest.fixture
def pid_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTIPC_PID_DIR", str(tmp_path / "pids"))


@pytest.fixture
def name():
    n = "dkaio" + uuid.uuid4().hex[:10]
    yield n
    unlink_all(fastipc_paths(n))


@pytest.fixture
def mem():
    buf = mmap.mmap(-1, 4096)
    yield memoryview(buf)


def later(delay, fn):
    threading.Timer(delay, fn).start()


# ---- dispatch Group and Semaphore -------------------------------------------


def test_group(run):
    async def main():
        g = dk.Group()
        assert await dkio.wait(g, 1) is True  # empty: at once
        g.enter()
        t = asyncio.ensure_future(dkio.wait(g))
        await asyncio.sleep(0.02)
        assert not t.done()
        G.run_async(g.leave)
        assert await t is True
        g.enter()
        assert await dkio.wait(g, 0.05) is False
        g.leave()

    run(main())


def test_dispatch_semaphore_take_timeout_cancel(run):
    async def main():
        s = dk.Semaphore(1)
        assert await dkio.wait(s) is True
        assert s.value == 0
        assert await dkio.wait(s, 0.05) is False
        assert s.value == 0  # the timed-out waiter gave its place back
        t = asyncio.ensure_future(dkio.wait(s))
        await asyncio.sleep(0.02)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert s.value == 0
        s.signal()
        assert s.value == 1  # no waiter left counted: the unit stays
        assert s.wait(0) is True
        # Many waiters, each woken by one signal.
        ts = [asyncio.ensure_future(dkio.wait(s, 10)) for _ in range(50)]
        await asyncio.sleep(0.02)
        for _ in range(50):
            s.signal()
        assert all(await asyncio.gather(*ts))
        assert s.value == 0

    run(main())


def test_dispatch_semaphore_signal_from_thread_and_sync_waiter(run):
    s = dk.Semaphore(0)
    got = []
    th = threading.Thread(target=lambda: got.append(s.wait(10)))
    th.start()

    async def main():
        t = asyncio.ensure_future(dkio.wait(s, 10))
        await asyncio.sleep(0.02)
        later(0.01, s.signal)
        later(0.02, s.signal)
        return await t

    assert run(main()) is True
    th.join(10)
    assert got == [True]


# ---- dispatchkit.sync in one process ------------------------------------------


def test_sync_semaphore(run, mem):
    s = sync.Semaphore(mem[:64], initial=0)

    async def main():
        assert await dkio.wait(s, 0) is False
        ts = [asyncio.ensure_future(dkio.wait(s, 10)) for _ in range(200)]
        await asyncio.sleep(0.02)
        s.post(150)
        # 150 resume however loaded the machine is, then no more: the
        # 50 still waiting have no unit to take.
        for _ in range(2000):
            if sum(t.done() for t in ts) >= 150:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        assert sum(t.done() for t in ts) == 150
        s.post(50)
        assert all(await asyncio.gather(*ts))
        assert s.value() == 0

    run(main())


def test_sync_semaphore_cancel_leaves_no_waiter(run, mem):
    s = sync.Semaphore(mem[:64], initial=0)

    async def main():
        ts = [asyncio.ensure_future(dkio.wait(s)) for _ in range(10)]
        await asyncio.sleep(0.02)
        for t in ts:
            t.cancel()
        await asyncio.gather(*ts, return_exceptions=True)
        assert await dkio.wait(s, 0.02) is False

    run(main())
    # `waiters` (+0x18) back to zero: a post makes no wake syscall and
    # the unit stays.
    assert int.from_bytes(mem[0x18:0x1C], "little") == 0
    s.post(1)
    assert s.value() == 1


def test_sync_mutex(run, mem):
    m = sync.Mutex(mem[:64])

    async def main():
        m.acquire()
        t = asyncio.ensure_future(dkio.acquire(m, 10))
        await asyncio.sleep(0.02)
        assert not t.done()
        m.release()
        assert await t is True
        assert m.owner_pid() == os.getpid()
        assert await dkio.acquire(m, 0.05) is False  # we hold it
        m.release()

    run(main())


def test_sync_mutex_released_by_other_thread(run, mem):
    m = sync.Mutex(mem[:64])
    held = threading.Event()
    go = threading.Event()

    def holder():
        m.acquire()
        held.set()
        go.wait(10)
        m.release()

    th = threading.Thread(target=holder)
    th.start()
    held.wait(10)

    async def main():
        t = asyncio.ensure_future(dkio.acquire(m, 10))
        await asyncio.sleep(0.02)
        go.set()
        return await t

    assert run(main()) is True
    th.join(10)
    m.release()


def test_locked_serialises_coroutines(run, mem):
    m = sync.Mutex(mem[:64])
    inside = []

    async def worker(i):
        async with dkio.locked(m, timeout=10):
            inside.append(i)
            assert len(inside) == 1
            await asyncio.sleep(0.002)
            inside.pop()
        return i

    async def main():
        return await asyncio.gather(*[worker(i) for i in range(20)])

    assert run(main()) == list(range(20))
    assert m.try_acquire() is True
    m.release()


def test_locked_cancel_and_timeout_leave_lock_free(run, mem):
    m = sync.Mutex(mem[:64])

    async def main():
        async with dkio.locked(m):
            with pytest.raises(TimeoutError):
                async with dkio.locked(m, timeout=0.02):
                    pass
            t = asyncio.ensure_future(dkio.acquire(m))
            await asyncio.sleep(0.01)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        # A body that raises still releases.
        with pytest.raises(KeyError):
            async with dkio.locked(m):
                raise KeyError
        with pytest.raises(TypeError):
            async with dkio.locked(dk.Group()):
                pass

    run(main())
    assert m.try_acquire() is True
    m.release()


def test_semaphore_locked(run, mem):
    s = sync.Semaphore(mem[:64], initial=2)
    d = dk.Semaphore(1)

    async def main():
        async with dkio.locked(s):
            assert s.value() == 1
            async with dkio.locked(d):
                assert d.value == 0
        assert s.value() == 2 and d.value == 1

    run(main())


def test_async_with_on_the_locks_themselves(run, mem, pid_root, name):
    m = sync.Mutex(mem[:64])
    s = sync.Semaphore(mem[64:128], initial=2)
    d = dk.Semaphore(1)
    nm = sync.NamedMutex(name)
    ns = sync.NamedSemaphore(name, 1)

    async def main():
        async with m as got:
            assert got is m and m.owner_pid() == os.getpid()
            assert m.try_acquire() is False
        async with s as got:
            assert got is True and s.value() == 1
        async with d as got:
            assert got is True and d.value == 0
        async with nm as got:
            assert got is nm and nm.try_acquire() is False
        async with ns as got:
            assert got is True and ns.value() == 0
        # The body raising still releases.
        with pytest.raises(KeyError):
            async with m:
                raise KeyError

    run(main())
    assert m.try_acquire() is True
    m.release()
    assert s.value() == 2 and d.value == 1 and ns.value() == 1
    assert nm.try_acquire() is True
    nm.release()
    nm.close()
    ns.close()


def test_async_with_waits_on_the_watcher_and_cancels_cleanly(run, mem,
                                                            pid_root, name):
    m = sync.Mutex(mem[:64])
    s = sync.Semaphore(mem[64:128], initial=0)
    d = dk.Semaphore(0)
    nm = sync.NamedMutex(name)
    ns = sync.NamedSemaphore(name, 0)
    threads_before = threading.active_count()

    async def enter(lock, log):
        async with lock:
            log.append(lock)

    async def main():
        log = []
        # Held elsewhere (or no unit): every entry waits, with no thread
        # parked for it, and a cancelled entry leaves nothing behind.
        m.acquire()
        nm.acquire()
        locks = [m, s, d, nm, ns]
        ts = [asyncio.ensure_future(enter(x, log)) for x in locks]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in ts) and log == []
        assert threading.active_count() <= threads_before + 1  # the watcher
        for t in ts:
            t.cancel()
        res = await asyncio.gather(*ts, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in res)
        assert log == []
        # The locks are as they were: still held by us / no unit taken.
        m.release()
        nm.release()
        assert m.try_acquire() is True
        m.release()
        assert nm.try_acquire() is True
        nm.release()
        assert s.value() == 0 and d.value == 0 and ns.value() == 0
        # And a later entry is woken by a release from another thread.
        m.acquire()
        t = asyncio.ensure_future(enter(s, log))
        t2 = asyncio.ensure_future(enter(d, log))
        await asyncio.sleep(0.02)
        later(0.01, lambda: (s.post(1), d.signal()))
        await asyncio.wait_for(asyncio.gather(t, t2), 10)
        assert log == [s, d] or log == [d, s]
        m.release()

    run(main())
    assert s.value() == 1 and d.value == 1
    # A sync waiter in this process sees no leftover waiter count.
    assert int.from_bytes(mem[64 + 0x18:64 + 0x1C], "little") == 0
    nm.close()
    ns.close()


def test_event(run, mem):
    ev = sync.Event(mem[:4])

    async def main():
        assert await dkio.wait(ev, 0.02) is False
        ts = [asyncio.ensure_future(dkio.wait(ev, 10)) for _ in range(30)]
        later(0.02, ev.set)
        assert all(await asyncio.gather(*ts))
        assert await dkio.wait(ev, 0) is True  # already set

    run(main())


def test_many_distinct_words(run):
    # More words than one futex_waitv call takes: several watcher shards.
    bufs = [mmap.mmap(-1, 4096) for _ in range(300)]
    evs = [sync.Event(memoryview(b)[:4]) for b in bufs]

    async def main():
        ts = [asyncio.ensure_future(dkio.wait(e, 20)) for e in evs]
        await asyncio.sleep(0.05)
        for e in evs:
            e.set()
        return await asyncio.gather(*ts)

    assert all(run(main()))


def test_more_completions_than_the_ring_holds(run, mem):
    # 1,500 waits with deadlines complete at once: two completions each
    # (the wait and its linked timeout), more than the loop's ring has
    # room for; the kernel holds the rest until they are reaped, and no
    # wait is lost.
    ev = sync.Event(mem[:4])
    s = sync.Semaphore(mem[64:128], initial=0)

    async def main():
        ts = [asyncio.ensure_future(dkio.wait(ev, 20)) for _ in range(1500)]
        us = [asyncio.ensure_future(dkio.wait(s, 20)) for _ in range(500)]
        await asyncio.sleep(0.1)
        ev.set()
        s.post(500)
        return await asyncio.gather(*ts, *us)

    assert all(run(main()))
    assert s.value() == 0


def test_waiting_loop_does_not_spin(run, mem):
    ev = sync.Event(mem[:4])

    async def main():
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        assert await dkio.wait(ev, 0.5) is False
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        return (t1.ru_utime + t1.ru_stime) - (t0.ru_utime + t0.ru_stime)

    # A spinning waiter would burn ~0.5 s of CPU.
    assert run(main()) < 0.2


# ---- bad input ------------------------------------------------------------------


def test_bad_input(run, mem, pid_root, name):
    async def main():
        with pytest.raises(TypeError, match="cannot wait"):
            await dkio.wait(object())
        with pytest.raises(TypeError):
            await dkio.wait(sync.FutexWord(mem[:4]))
        with pytest.raises(ValueError):
            await dkio.wait(sync.Event(mem[:4]), float("nan"))
        n = sync.NamedEvent(name)
        n.close()
        with pytest.raises(ValueError, match="closed"):
            await dkio.wait(n)

    run(main())


def test_no_running_loop():
    coro = dkio.wait(dk.Group())
    with pytest.raises(RuntimeError, match="running event loop"):
        coro.send(None)
    coro.close()


def test_fallback_without_futex_waitv(tmp_path):
    code = textwrap.dedent("""
        import asyncio, mmap, threading
        import dispatchkit as dk, dispatchkit.sync as sync
        from dispatchkit import asyncio as dkio
        assert dk._dk._uses_futex_waitv() is False
        bufs = [mmap.mmap(-1, 4096) for _ in range(5)]
        evs = [sync.Event(memoryview(b)[:4]) for b in bufs]
        s = dk.Semaphore(0)
        async def main():
            ts = [asyncio.ensure_future(dkio.wait(e, 20)) for e in evs]
            t = asyncio.ensure_future(dkio.wait(s, 20))
            c = asyncio.ensure_future(dkio.wait(s))
            await asyncio.sleep(0.05)
            c.cancel()
            for e in evs:
                e.set()
            s.signal()
            assert all(await asyncio.gather(*ts)) and await t
            assert await dkio.wait(s, 0.02) is False
        asyncio.run(main())
        print("ok")
    """)
    env = dict(os.environ, DK_NO_FUTEX_WAITV="1", DK_NO_IO_URING="1")
    r = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr


@pytest.mark.skipif(not URING, reason="no io_uring futex waits here")
def test_ring_waits_need_no_watcher_thread(tmp_path):
    # With io_uring, the other side's wake completes the wait in the
    # loop's own ring: no watcher thread is started, across processes
    # too, and cancelling and timing out work without it.
    code = textwrap.dedent("""
        import asyncio, os, subprocess, sys, uuid
        import dispatchkit.sync as sync
        from dispatchkit import asyncio as dkio
        name = "dkring" + uuid.uuid4().hex[:10]
        ev = sync.NamedEvent(name)
        sem = sync.NamedSemaphore(name, initial=0)
        peer = ("import dispatchkit.sync as s, sys; sys.stdin.readline(); "
                f"s.NamedEvent({name!r}).set()")
        async def main():
            loop = asyncio.get_running_loop()
            assert dkio._waker_for(loop).uses_ring()
            p = subprocess.Popen([sys.executable, "-c", peer],
                                 stdin=subprocess.PIPE)
            t = asyncio.ensure_future(dkio.wait(ev, 20))
            c = asyncio.ensure_future(dkio.wait(sem))
            await asyncio.sleep(0.05)
            c.cancel()
            p.stdin.write(b"\\n"); p.stdin.close()
            assert await t is True
            assert await dkio.wait(sem, 0.05) is False
            sem.post(1)
            assert await dkio.wait(sem, 5) is True
            assert sem.value() == 0
            p.wait(20)
        asyncio.run(main())
        for x in (ev, sem):
            x.close()
        names = set()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.add(f.read().strip())
        assert "dk-watch" not in names, names
        print("ok")
    """)
    env = dict(os.environ, FASTIPC_PID_DIR=str(tmp_path / "pids"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.stdout.strip() == "ok", r.stderr


@pytest.mark.skipif(not URING, reason="no io_uring futex waits here")
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_ring_wake_reaches_the_loop_through_the_ring_fd(loop_name):
    # The loop watches the ring's own fd: a wait completed by the other
    # side's wake resumes even with the waker's eventfd unwatched (before,
    # the ring signalled that eventfd and the wait never resumed without
    # it). Across processes, and a timeout still comes through.
    lp = (asyncio.new_event_loop() if loop_name == "asyncio"
          else uvloop.new_event_loop())
    name = "dkrfd" + uuid.uuid4().hex[:10]
    ev = sync.NamedEvent(name)
    peer = ("import dispatchkit.sync as s, sys; sys.stdin.readline(); "
            f"s.NamedEvent({name!r}).set()")

    async def main():
        loop = asyncio.get_running_loop()
        w = dkio._waker_for(loop)
        assert w.uses_ring()
        loop.remove_reader(w.fileno())
        assert await dkio.wait(ev, 0.05) is False
        p = subprocess.Popen([sys.executable, "-c", peer],
                             stdin=subprocess.PIPE)
        t = asyncio.ensure_future(dkio.wait(ev, 30))
        await asyncio.sleep(0.05)
        p.stdin.write(b"\n")
        p.stdin.close()
        assert await t is True
        p.wait(20)

    try:
        lp.run_until_complete(main())
    finally:
        lp.close()
        ev.close()


# ---- across processes -------------------------------------------------------


PEER = """
import sys, time
import dispatchkit.sync as sync
name, what = sys.argv[1], sys.argv[2]
if what == "event":
    e = sync.NamedEvent(name)
    sys.stdin.readline()
    e.set()
elif what == "sem":
    s = sync.NamedSemaphore(name, initial=0)
    sys.stdin.readline()
    s.post(3)
elif what == "hold":
    m = sync.NamedMutex(name)
    m.acquire()
    print("held", flush=True)
    sys.stdin.readline()
    m.release()
    print("released", flush=True)
    sys.stdin.readline()
elif what == "hold-forever":
    m = sync.NamedMutex(name)
    m.acquire()
    print("held", flush=True)
    time.sleep(120)
print("done", flush=True)
"""


def peer(name, what):
    return subprocess.Popen([sys.executable, "-c", PEER, name, what],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def poke(p):
    p.stdin.write("\n")
    p.stdin.flush()


def test_named_event_set_by_another_process(run, pid_root, name):
    e = sync.NamedEvent(name)
    p = peer(name, "event")

    async def main():
        ts = [asyncio.ensure_future(dkio.wait(e, 30)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in ts)
        poke(p)
        return await asyncio.gather(*ts)

    try:
        assert all(run(main()))
    finally:
        p.communicate(timeout=30)
        e.close()


def test_named_semaphore_posted_by_another_process(run, pid_root, name):
    s = sync.NamedSemaphore(name, initial=0)
    p = peer(name, "sem")

    async def main():
        ts = [asyncio.ensure_future(dkio.wait(s, 30)) for _ in range(3)]
        await asyncio.sleep(0.05)
        poke(p)
        return await asyncio.gather(*ts)

    try:
        assert all(run(main()))
        assert s.value() == 0
    finally:
        p.communicate(timeout=30)
        s.close()


def test_named_mutex_released_by_another_process(run, pid_root, name):
    m = sync.NamedMutex(name)
    p = peer(name, "hold")
    assert p.stdout.readline().strip() == "held"

    async def main():
        t = asyncio.ensure_future(dkio.acquire(m, 30))
        await asyncio.sleep(0.05)
        assert not t.done()
        poke(p)
        return await t

    try:
        assert run(main()) is True
        assert m.owner_pid() == os.getpid() and not m.owner_died
        m.release()
    finally:
        poke(p)
        p.communicate(timeout=30)
        m.close()


def test_named_mutex_holder_killed_while_awaited(run, pid_root, name):
    m = sync.NamedMutex(name)
    p = peer(name, "hold-forever")
    assert p.stdout.readline().strip() == "held"

    async def main():
        t = asyncio.ensure_future(dkio.acquire(m, 30))
        await asyncio.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        return await t

    try:
        assert run(main()) is True
        assert m.owner_died is True
        m.release()
    finally:
        p.kill()
        p.communicate(timeout=30)
        m.close()


def _post_later(name, q):
    s = sync.NamedSemaphore(name)
    q.get(timeout=30)
    s.post(1)


def test_sync_waiter_in_other_process_woken_by_our_post(run, pid_root,
                                                        name):
    # The other direction: our post wakes a blocking waiter elsewhere.
    s = sync.NamedSemaphore(name, initial=0)
    code = ("import sys; import dispatchkit.sync as sync;"
            "s = sync.NamedSemaphore(sys.argv[1]);"
            "print('waiting', flush=True);"
            "print(s.wait(timeout=30), flush=True)")
    p = subprocess.Popen([sys.executable, "-c", code, name],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"

    async def main():
        # An awaiting coroutine here too; one post for each.
        t = asyncio.ensure_future(dkio.wait(s, 30))
        await asyncio.sleep(0.1)
        s.post(2)
        return await t

    try:
        assert run(main()) is True
        assert p.stdout.readline().strip() == "True"
    finally:
        p.kill()
        p.wait(30)
        s.close()


def test_fastipc_peer_sets_event(pid_root, name):
    pytest.importorskip("fastipc")
    e = sync.NamedEvent(name)
    code = ("import sys; from fastipc import NamedEvent;"
            "e = NamedEvent(sys.argv[1]); sys.stdin.readline(); e.set()")
    p = subprocess.Popen([sys.executable, "-c", code, name],
                         stdin=subprocess.PIPE, text=True)

    async def main():
        t = asyncio.ensure_future(dkio.wait(e, 30))
        await asyncio.sleep(0.05)
        poke(p)
        return await t

    try:
        assert asyncio.run(main()) is True
    finally:
        p.wait(30)
        e.close()


def test_loop_closed_with_waits_pending(mem, unraisable):
    import gc
    import weakref
    ev = sync.Event(mem[:4])
    s = dk.Semaphore(0)
    lp = asyncio.new_event_loop()

    async def main():
        t1 = asyncio.ensure_future(dkio.wait(ev))
        t2 = asyncio.ensure_future(dkio.wait(s))
        await asyncio.sleep(0.02)
        return t1, t2

    t1, t2 = lp.run_until_complete(main())
    ref = weakref.ref(lp)
    lp.close()
    ev.set()      # fires into a waker nobody drains
    s.signal()    # counted for the orphaned waiter
    time.sleep(0.05)
    del t1, t2, lp
    gc.collect()
    assert ref() is None  # nothing keeps the closed loop alive
    assert unraisable == []
    # Closing the orphaned coroutine abandoned its wait, passing the
    # unit on: it is there for the next taker, and nothing more is.
    assert s.wait(1) is True
    assert s.wait(0) is False


PINGPONG = """
import asyncio, sys
import dispatchkit.sync as sync
from dispatchkit import asyncio as dkio
ping = sync.NamedSemaphore(sys.argv[1] + "a")
pong = sync.NamedSemaphore(sys.argv[1] + "b")
n = int(sys.argv[2])
async def main():
    for _ in range(n):
        if not await dkio.wait(ping, 20):
            return False
        pong.post(1)
    return True
print(asyncio.run(main()), flush=True)
"""


def test_async_ping_pong_across_processes_loses_no_wakeup(run, pid_root,
                                                          name):
    # Both sides await (no thread parked on either): a lost wake-up would
    # stall a round until its 20 s timeout and fail the test.
    n = 1000
    ping = sync.NamedSemaphore(name + "a", initial=0)
    pong = sync.NamedSemaphore(name + "b", initial=0)
    p = subprocess.Popen([sys.executable, "-c", PINGPONG, name, str(n)],
                         stdout=subprocess.PIPE, text=True)

    async def main():
        for _ in range(n):
            ping.post(1)
            if not await dkio.wait(pong, 20):
                return False
        return True

    try:
        assert run(main()) is True
        assert p.communicate(timeout=60)[0].strip() == "True"
    finally:
        p.kill()
        p.wait(30)
        for s in (ping, pong):
            s.close()
        for suffix in ("a", "b"):
            try:
                os.unlink(f"/dev/shm/__pyfastipc_sema_{name}{suffix}")
            except FileNotFoundError:
                pass


MUTEX_COUNTER = """
import asyncio, mmap, sys
import dispatchkit.sync as sync
from dispatchkit import asyncio as dkio
m = sync.NamedMutex(sys.argv[1])
with open(sys.argv[2], "r+b") as f:
    buf = mmap.mmap(f.fileno(), 8)
n, mode = int(sys.argv[3]), sys.argv[4]
def bump():
    v = int.from_bytes(buf[:8], "little")
    buf[:8] = (v + 1).to_bytes(8, "little")
async def main():
    for _ in range(n):
        async with dkio.locked(m, timeout=20):
            v = int.from_bytes(buf[:8], "little")
            await asyncio.sleep(0)  # let the others try meanwhile
            buf[:8] = (v + 1).to_bytes(8, "little")
if mode == "async":
    asyncio.run(main())
else:
    for _ in range(n):
        with m:
            bump()
print("done", flush=True)
"""


def test_named_mutex_contended_by_async_and_blocking_processes(pid_root,
                                                               name,
                                                               tmp_path):
    counter = tmp_path / "counter"
    counter.write_bytes(bytes(8))
    m = sync.NamedMutex(name)
    n = 300
    ps = [subprocess.Popen([sys.executable, "-c", MUTEX_COUNTER, name,
                            str(counter), str(n), mode],
                           stdout=subprocess.PIPE, text=True)
          for mode in ("async", "async", "blocking")]
    try:
        for p in ps:
            assert p.communicate(timeout=120)[0].strip() == "done"
        assert int.from_bytes(counter.read_bytes(), "little") == 3 * n
        assert m.try_acquire() is True  # nobody left it held
        m.release()
    finally:
        for p in ps:
            p.kill()
            p.wait(30)
        m.close()
