"""`async for frame in reader` against the synchronous read_frame loop
(issue 14): 1 KiB frames written by another process, read and released
one by one; frames/s, both measured in the same run. Under asyncio's loop
and, when installed, uvloop's.

Prints `workload<TAB>impl<TAB>value<TAB>unit` lines; "dispatchkit" is the
async reader, the synchronous loop is its peer (the issue's floor: at
least 50% of its rate).
"""
import asyncio
import multiprocessing as mp
import sys
import time
import uuid

import dispatchkit.zerobuffer as zb

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1
N = max(20_000, 300_000 // SCALE)
SIZE = 1024
CTX = mp.get_context("fork")


def emit(workload, impl, value, unit):
    print(f"{workload}\t{impl}\t{value:.1f}\t{unit}", flush=True)


def _writer(name, go):
    w = zb.Writer(name)
    data = b"x" * SIZE
    go.wait()
    for _ in range(N):
        w.write_frame(data)
    w.close()


def measure(read_all):
    name = "dkbz" + uuid.uuid4().hex[:8]
    with zb.Reader(name, zb.BufferConfig(1024, 4 * 1024 * 1024)) as r:
        go = CTX.Event()
        p = CTX.Process(target=_writer, args=(name, go))
        p.start()
        while not r.is_writer_connected():
            time.sleep(0.001)
        t = time.perf_counter()
        go.set()
        n = read_all(r)
        secs = time.perf_counter() - t
        p.join(60)
    assert n == N, n
    return N / secs


def sync_loop(r):
    n = 0
    while True:
        try:
            f = r.read_frame(timeout=10)
        except zb.WriterDeadException:
            return n
        if f is None:
            return n
        f.dispose()
        n += 1


def async_loop(new_loop):
    def read_all(r):
        async def main():
            n = 0
            async for f in r:
                f.dispose()
                n += 1
            return n
        loop = new_loop()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()
    return read_all


def best(fn, runs=3):
    return max(fn() for _ in range(runs))


def main():
    loops = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop
        loops.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        pass
    sync_rate = best(lambda: measure(sync_loop))
    for loop_name, new_loop in loops:
        w = "aio_async_for_1KiB_rate" + (
            "" if loop_name == "asyncio" else f"[{loop_name}]")
        emit(w, "dispatchkit", best(lambda: measure(async_loop(new_loop))),
             "frames/s")
        emit(w, "sync read_frame loop", sync_rate, "frames/s")


if __name__ == "__main__":
    main()
