"""A short tour of dispatchkit.sync (used by `make demo`)."""
import multiprocessing as mp
import os
import signal
import time
from multiprocessing import shared_memory

import dispatchkit.sync as sync


def _hold(name, q):
    m = shared_memory.SharedMemory(name=name)
    mtx = sync.Mutex(m.buf[:64])
    mtx.acquire()
    q.put(os.getpid())
    time.sleep(60)


def tour():
    shm = shared_memory.SharedMemory(create=True, size=128)
    try:
        mtx = sync.Mutex(shm.buf[:64])
        with mtx:
            print(f"  Mutex held by pid:           {mtx.owner_pid()}")
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_hold, args=(shm.name, q))
        p.start()
        holder = q.get(timeout=30)
        os.kill(holder, signal.SIGKILL)
        p.join()
        ok = mtx.acquire_ns(5_000_000_000)
        print(f"  holder {holder} SIGKILLed:     acquired={ok}, "
              f"owner_died={mtx.owner_died}")
        mtx.release()
        sem = sync.Semaphore(shm.buf[64:128], initial=0)
        sem.post(2)
        print(f"  Semaphore post(2), 2 waits:  {sem.wait()}, {sem.wait()}, "
              f"then {sem.wait(blocking=False)}")
        del mtx, sem
    finally:
        shm.close()
        shm.unlink()
    # By name, as fastipc's helpers (any process, either library).
    name = f"dk-tour-{os.getpid()}"
    with sync.NamedMutex(name) as m:
        print(f"  NamedMutex {name!r}: owner {m.owner_pid()}")
    ev = sync.NamedEvent(name)
    ev.set()
    print(f"  NamedEvent set, wait:        {ev.wait(1_000_000_000)}")
    ns = sync.NamedSemaphore(name, initial=1)
    print(f"  NamedSemaphore value:        {ns.value()}")
    for obj in (m, ev, ns):
        obj.close()


if __name__ == "__main__":
    tour()
