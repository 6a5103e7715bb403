"""A short tour of dispatchkit.atomics (used by `make demo`)."""
import threading
from multiprocessing import shared_memory

import dispatchkit.atomics as atomics
import dispatchkit.atomics.exc  # noqa: F401 (atomics.exc)


def tour():
    a = atomics.atomic(width=4, atype=atomics.INT)
    threads = [threading.Thread(target=lambda: [a.inc() for _ in range(5000)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"  4 threads x 5000 inc():      {a.load()}")
    u8 = atomics.atomic(width=1, atype=atomics.UINT)
    u8.store(255)
    u8.inc()
    print(f"  uint8 255 + 1 wraps to:      {u8.load()}")
    r = a.cmpxchg_strong(expected=20000, desired=1)
    print(f"  cmpxchg_strong:              {r}")
    big = atomics.atomic(width=16, atype=atomics.UINT)
    big.store(2**100)
    big.fetch_add(1)
    print(f"  16-byte atomic:              {big.load() == 2**100 + 1}")
    try:
        a.load(order=atomics.MemoryOrder.RELEASE)
    except atomics.exc.MemoryOrderError as e:
        print(f"  a release load:              {e}")
    shm = shared_memory.SharedMemory(create=True, size=8)
    try:
        buf = shm.buf[:8]
        with atomics.atomicview(buffer=buf, atype=atomics.UINT) as v:
            v.store(42)
            print(f"  view on shared memory:       {v}")
        del buf
    finally:
        shm.close()
        shm.unlink()


if __name__ == "__main__":
    tour()
