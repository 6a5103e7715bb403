"""dispatchkit.sync against fastipc, threading, multiprocessing and
posix_ipc, in one run: uncontended mutex acquire+release and semaphore
post+wait pairs, a cross-process ping-pong through two semaphores, and two
processes contending for one mutex (1M acquisitions in total with nothing
in the loop, 200k with a little work in it; pass a divisor as the first
argument to scale every workload down)."""
import importlib
import multiprocessing as mp
import multiprocessing.connection
import os
import statistics
import sys
import threading
import time
import timeit
from multiprocessing import shared_memory

import dispatchkit.sync as sync

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def emit(workload, impl, value, unit):
    print(f"{workload}\t{impl}\t{value:.1f}\t{unit}", flush=True)


def per_op(stmt, n, **g):
    return min(timeit.repeat(stmt, globals=g, number=n, repeat=5)) / n * 1e9


def uncontended(shm):
    n = 200_000 // SCALE
    m = sync.Mutex(shm.buf[:64])
    emit("mutex_pair_uncontended", "dispatchkit",
         per_op("m.acquire(); m.release()", n, m=m), "ns")
    emit("mutex_pair_uncontended", "dispatchkit (with)",
         per_op("with m: pass", n, m=m), "ns")
    try:
        from fastipc._primitives import Mutex as FMutex
        fm = FMutex(shm.buf[64:128])
        emit("mutex_pair_uncontended", "fastipc",
             per_op("fm.acquire(); fm.release()", n // 10, fm=fm), "ns")
        del fm
    except ImportError:
        pass
    # What any pair of method calls costs from Python: two calls of a C
    # method that does nothing (list.clear on an empty list).
    emit("mutex_pair_uncontended", "floor: two no-op C method calls",
         per_op("x.clear(); x.clear()", n, x=[]), "ns")
    lk = threading.Lock()
    emit("mutex_pair_uncontended", "threading.Lock",
         per_op("lk.acquire(); lk.release()", n, lk=lk), "ns")
    ml = mp.Lock()
    emit("mutex_pair_uncontended", "multiprocessing.Lock",
         per_op("ml.acquire(); ml.release()", n, ml=ml), "ns")
    try:
        import posix_ipc
        ps = posix_ipc.Semaphore(f"/dkbench{os.getpid()}",
                                 posix_ipc.O_CREX, initial_value=1)
        emit("mutex_pair_uncontended", "posix_ipc.Semaphore",
             per_op("ps.acquire(); ps.release()", n, ps=ps), "ns")
        ps.unlink()
    except ImportError:
        pass

    s = sync.Semaphore(shm.buf[128:192], initial=0)
    emit("semaphore_post_wait", "dispatchkit",
         per_op("s.post(); s.wait()", n, s=s), "ns")
    try:
        from fastipc._primitives import Semaphore as FSem
        fs = FSem(shm.buf[192:256], initial=0)
        emit("semaphore_post_wait", "fastipc",
             per_op("fs.post(); fs.wait()", n // 10, fs=fs), "ns")
        del fs
    except ImportError:
        pass
    ts = threading.Semaphore(0)
    emit("semaphore_post_wait", "threading.Semaphore",
         per_op("ts.release(); ts.acquire()", n, ts=ts), "ns")
    ms = mp.Semaphore(0)
    emit("semaphore_post_wait", "multiprocessing.Semaphore",
         per_op("ms.release(); ms.acquire()", n, ms=ms), "ns")
    try:
        import posix_ipc
        ps = posix_ipc.Semaphore(f"/dkbenchs{os.getpid()}",
                                 posix_ipc.O_CREX, initial_value=0)
        emit("semaphore_post_wait", "posix_ipc.Semaphore",
             per_op("ps.release(); ps.acquire()", n, ps=ps), "ns")
        ps.unlink()
    except ImportError:
        pass
    del m, s


def uncontended_named():
    """fastipc's top-level classes, which its users import: NamedMutex
    acquire+release and `with`, NamedSemaphore post+wait, NamedEvent
    set+clear and is_set, each against fastipc's class of the same name
    and against our unnamed primitive (on fresh shared memory too) that
    the Named* class is a subclass of."""
    n = 200_000 // SCALE
    shm = shared_memory.SharedMemory(create=True, size=256)
    tag = f"dkbench{os.getpid()}"
    try:
        import fastipc
    except ImportError:
        fastipc = None
    rows = (
        ("named_mutex_pair_uncontended", "NamedMutex", "Mutex",
         shm.buf[:64], "x.acquire(); x.release()"),
        ("named_mutex_with_uncontended", "NamedMutex", "Mutex",
         shm.buf[:64], "with x: pass"),
        ("named_semaphore_post_wait", "NamedSemaphore", "Semaphore",
         shm.buf[64:128], "x.post(); x.wait()"),
        ("named_event_set_clear", "NamedEvent", "Event", shm.buf[128:132],
         "x.set(); x.clear()"),
        ("named_event_is_set", "NamedEvent", "Event", shm.buf[128:132],
         "x.is_set()"),
    )
    for workload, named, unnamed, buf, stmt in rows:
        ours = getattr(sync, named)(tag)
        emit(workload, "dispatchkit", per_op(stmt, n, x=ours), "ns")
        prim = getattr(sync, unnamed)(buf)
        emit(workload, f"dispatchkit sync.{unnamed} (unnamed)",
             per_op(stmt, n, x=prim), "ns")
        if fastipc is not None:
            # fastipc's named classes have no close(): its segments go
            # at exit (GuardedSharedMemory's atexit hook).
            theirs = getattr(fastipc, named)(tag + "f")
            emit(workload, "fastipc", per_op(stmt, n // 10, x=theirs), "ns")
            del theirs
        ours.close()
        del prim
    del rows, buf
    shm.close()
    shm.unlink()


def _ponger(kind, name, rounds, pipe_fds):
    if kind == "pipe":
        r, w = pipe_fds
        for _ in range(rounds):
            os.read(r, 1)
            os.write(w, b"x")
        return
    if kind == "mp":
        ping, pong = name
        for _ in range(rounds):
            ping.acquire()
            pong.release()
        return
    if kind == "posix_ipc":
        import posix_ipc
        ping = posix_ipc.Semaphore(name + "a")
        pong = posix_ipc.Semaphore(name + "b")
        for _ in range(rounds):
            ping.acquire()
            pong.release()
        return
    m = shared_memory.SharedMemory(name=name)
    if kind == "fastipc":
        from fastipc._primitives import Semaphore as S
        ping, pong = S(m.buf[:64]), S(m.buf[64:128])
    else:
        ping, pong = sync.Semaphore(m.buf[:64]), sync.Semaphore(m.buf[64:128])
    for _ in range(rounds):
        ping.wait()
        pong.post()
    del ping, pong
    m.close()


def ping_pong():
    rounds = 20_000 // SCALE
    ctx = mp.get_context("fork")
    kinds = ["dispatchkit", "fastipc", "mp", "pipe", "posix_ipc"]
    for kind in kinds:
        shm = shared_memory.SharedMemory(create=True, size=128)
        try:
            if kind == "dispatchkit":
                ping = sync.Semaphore(shm.buf[:64], initial=0)
                pong = sync.Semaphore(shm.buf[64:128], initial=0)
                post, wait, arg = ping.post, pong.wait, shm.name
            elif kind == "fastipc":
                try:
                    from fastipc._primitives import Semaphore as S
                except ImportError:
                    continue
                ping, pong = S(shm.buf[:64], 0), S(shm.buf[64:128], 0)
                post, wait, arg = ping.post, pong.wait, shm.name
            elif kind == "mp":
                ping, pong = ctx.Semaphore(0), ctx.Semaphore(0)
                post, wait, arg = ping.release, pong.acquire, (ping, pong)
            elif kind == "posix_ipc":
                try:
                    import posix_ipc
                except ImportError:
                    continue
                base = f"/dkpp{os.getpid()}"
                ping = posix_ipc.Semaphore(base + "a", posix_ipc.O_CREX)
                pong = posix_ipc.Semaphore(base + "b", posix_ipc.O_CREX)
                post, wait, arg = ping.release, pong.acquire, base
            else:
                r1, w1 = os.pipe()
                r2, w2 = os.pipe()
                post = lambda: os.write(w1, b"x")  # noqa: E731
                wait = lambda: os.read(r2, 1)  # noqa: E731
                arg = None
            fds = (r1, w2) if kind == "pipe" else None
            p = ctx.Process(target=_ponger, args=(kind, arg, rounds, fds))
            p.start()
            t = time.perf_counter()
            for _ in range(rounds):
                post()
                wait()
            el = time.perf_counter() - t
            p.join(60)
            name = {"mp": "multiprocessing.Semaphore", "pipe": "os.pipe pair",
                    "posix_ipc": "posix_ipc.Semaphore"}.get(kind, kind)
            emit("pingpong_roundtrip", name, el / rounds * 1e9, "ns")
            if kind == "posix_ipc":
                ping.unlink()
                pong.unlink()
            if kind in ("dispatchkit", "fastipc"):
                del ping, pong, post, wait
        finally:
            shm.close()
            shm.unlink()


def _contend(kind, arg, n, work, start, out, slot):
    if kind == "mp":
        lk = arg
    elif kind == "posix_ipc":
        import posix_ipc
        lk = posix_ipc.Semaphore(arg)
    else:
        m = shared_memory.SharedMemory(name=arg)
        if kind == "fastipc":
            from fastipc._primitives import Mutex
        else:
            Mutex = sync.Mutex
        lk = Mutex(m.buf[:64])
    acquire, release = lk.acquire, lk.release
    # fastipc's release() clears the owner pid after unlocking, so it can
    # erase the pid of a process that took the lock in between (its defect
    # F2, docs/sync.md); that process's release() then raises
    # RuntimeError and leaves the lock held, and the other process waits
    # forever. It does hold the lock: force_release() does what release()
    # should have done, and the run goes on (counted, and reported). The
    # try costs nothing while nothing is raised (CPython 3.11+), and every
    # implementation runs the same loop.
    force = lk.force_release if kind == "fastipc" else None
    races = 0
    start.wait()
    cpu = time.process_time()
    if work:
        for _ in range(n):
            acquire()
            sum(range(30))
            try:
                release()
            except RuntimeError:
                if force is None:
                    raise
                force()
                races += 1
            sum(range(30))
    else:
        for _ in range(n):
            acquire()
            try:
                release()
            except RuntimeError:
                if force is None:
                    raise
                force()
                races += 1
    out[3 * slot] = time.perf_counter()
    out[3 * slot + 1] = time.process_time() - cpu
    out[3 * slot + 2] = races
    if kind in ("dispatchkit", "fastipc"):
        del lk, acquire, release, force
        m.close()


def contended_run(ctx, kind, total, work=False, nprocs=2):
    """One run of nprocs processes sharing `total` acquisitions, timed
    from a barrier they all pass to the last one's end: (acquisitions per
    second, CPU ns per acquisition summed over the processes, fastipc
    release races recovered from), or None if a child failed or hung (then
    all are killed)."""
    shm = shared_memory.SharedMemory(create=True, size=64)
    ps = None
    try:
        if kind == "dispatchkit":
            sync.Mutex(shm.buf[:64])
            arg = shm.name
        elif kind == "fastipc":
            from fastipc._primitives import Mutex
            Mutex(shm.buf[:64])
            arg = shm.name
        elif kind == "mp":
            arg = ctx.Lock()
        else:
            import posix_ipc
            arg = f"/dkcont{os.getpid()}"
            ps = posix_ipc.Semaphore(arg, posix_ipc.O_CREX, initial_value=1)
        start = ctx.Barrier(nprocs + 1)
        out = ctx.Array("d", 3 * nprocs, lock=False)
        procs = [ctx.Process(target=_contend,
                             args=(kind, arg, total // nprocs, work, start,
                                   out, i))
                 for i in range(nprocs)]
        for p in procs:
            p.start()
        try:
            start.wait(60)
        except threading.BrokenBarrierError:
            pass
        t = time.perf_counter()
        running = {p.sentinel: p for p in procs}
        while running and time.perf_counter() - t < 120:
            for s in mp.connection.wait(list(running), 1.0):
                p = running.pop(s)
                p.join()  # the sentinel closes before the exit status exists
                if p.exitcode != 0:
                    running.clear()  # the others would wait forever
                    break
        codes = [p.exitcode for p in procs]
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
        if codes != [0] * nprocs:
            return None
        el = max(out[3 * i] for i in range(nprocs)) - t
        cpu = sum(out[3 * i + 1] for i in range(nprocs))
        races = int(sum(out[3 * i + 2] for i in range(nprocs)))
        n = total // nprocs * nprocs
        return n / el, cpu / n * 1e9, races
    finally:
        if ps is not None:
            ps.unlink()
        shm.close()
        shm.unlink()


CONTENDED_KINDS = ("dispatchkit", "fastipc", "mp", "posix_ipc")
CONTENDED_NAMES = {"mp": "multiprocessing.Lock",
                   "posix_ipc": "posix_ipc.Semaphore"}


def contended_kinds():
    peer = {"fastipc": "fastipc._primitives", "posix_ipc": "posix_ipc"}
    kinds = []
    for kind in CONTENDED_KINDS:
        try:
            if kind in peer:
                importlib.import_module(peer[kind])
        except ImportError:
            continue
        kinds.append(kind)
    return kinds


def contended_medians(ctx, kinds, total, work, nprocs=2, runs=5):
    """runs rounds in which each implementation runs once, in turn (the
    machine's load hits all alike): {kind: (median rate, median CPU ns per
    acquisition, runs that counted, runs that failed, slowest rate,
    fastest rate, fastipc release races recovered from in all runs)}. A
    failed run is reported and dropped; three failures end an
    implementation's turns."""
    rates = {k: [] for k in kinds}
    cpus = {k: [] for k in kinds}
    races = dict.fromkeys(kinds, 0)
    failures = dict.fromkeys(kinds, 0)
    for _ in range(runs + 3):
        for kind in kinds:
            if len(rates[kind]) >= runs or failures[kind] >= 3:
                continue
            r = contended_run(ctx, kind, total, work, nprocs)
            if r is None:
                failures[kind] += 1
                continue
            rates[kind].append(r[0])
            cpus[kind].append(r[1])
            races[kind] += r[2]
    return {k: (statistics.median(rates[k]), statistics.median(cpus[k]),
                len(rates[k]), failures[k], min(rates[k]), max(rates[k]),
                races[k])
            for k in kinds if rates[k]}


def with_work_bounds(shm):
    """What the rate with work in the loop can reach, from this process's
    CPU time (not wall time, so that other load on the machine does not
    count): the lock held back to back, each holder doing nothing but
    return from acquire(), sum(range(30)) and call release() (1 / the
    sum and an uncontended acquire+release pair), and two processes each
    running the loop alone on a CPU of its own (2 / one uncontended
    iteration). The real bound is below both: every hand-over also moves
    the lock's cache line and returns from acquire() to Python."""
    m = sync.Mutex(shm.buf[:64])
    acquire, release = m.acquire, m.release
    n = 100_000 // SCALE

    def cpu_per(stmt):
        t = timeit.Timer(stmt, timer=time.process_time,
                         globals={"acquire": acquire, "release": release})
        return min(t.repeat(number=n, repeat=5)) / n

    inside = cpu_per("acquire(); sum(range(30)); release()")
    loop = cpu_per("acquire(); sum(range(30)); release(); sum(range(30))")
    del m, acquire, release
    return 1 / inside, 2 / loop


def contended():
    """Two processes sharing 1M acquisitions with nothing in the loop, and
    200k with a little work (sum(range(30))) inside the lock and as much
    outside it: the median of five alternating runs per implementation,
    as a rate and as CPU time per acquisition (all processes' CPU, over
    the acquisitions), and the slowest and fastest of the five rates. A failed run is reported; three failures end the
    implementation's turn. With work, two upper bounds follow
    (with_work_bounds). (fastipc's release clears the owner field after
    unlocking, erasing the next owner's pid, so that owner's release()
    raises and would leave the other child waiting forever: docs/sync.md,
    defect F2. Its children finish such a release with force_release()
    and count it; the count is reported beside its rows.)"""
    ctx = mp.get_context("fork")
    kinds = contended_kinds()
    for workload, total, work in (
            ("mutex_2proc_contended", 1_000_000 // SCALE, False),
            ("mutex_2proc_contended_with_work", 200_000 // SCALE, True)):
        got = contended_medians(ctx, kinds, total, work)
        for kind in kinds:
            name = CONTENDED_NAMES.get(kind, kind)
            if kind not in got:
                print(f"{workload}\t{name}\tfailed\tevery run failed or "
                      "hung", flush=True)
                continue
            rate, cpu, n, failed, slowest, fastest, races = got[kind]
            label = name if failed == 0 else f"{name} ({n} runs, {failed} failed)"
            emit(workload, label, rate, "acq/s")
            emit(workload + "_cpu", label, cpu, "ns CPU/acq")
            emit(workload + "_slowest_run", label, slowest, "acq/s")
            emit(workload + "_fastest_run", label, fastest, "acq/s")
            if kind == "fastipc":
                emit(workload + "_fastipc_release_races",
                     "release() raised, force_release() instead", races,
                     f"times in {n} runs")
        if work:
            shm = shared_memory.SharedMemory(create=True, size=64)
            try:
                held, alone = with_work_bounds(shm)
            finally:
                shm.close()
                shm.unlink()
            emit(workload + "_bound", "lock always held: 1 / (sum + pair)",
                 held, "acq/s")
            emit(workload + "_bound", "2 CPUs, no hand-over: 2 / one loop",
                 alone, "acq/s")


if __name__ == "__main__":
    m = shared_memory.SharedMemory(create=True, size=256)
    try:
        uncontended(m)
    finally:
        m.close()
        m.unlink()
    uncontended_named()
    ping_pong()
    contended()
