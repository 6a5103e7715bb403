"""Growth curves, each beside a peer, in one run: how cost grows with the
number of dispatch queues and of pending items, with the number of armed
timers, with the zerobuffer frame size, and with the number of processes
contending for one mutex. Every run is short (a fraction of a second); a
point is the median of three runs, ours and the peer's alternating.

Each point is printed as
    curve<TAB>name<TAB>implementation<TAB>x<TAB>value<TAB>unit
and bench/run.py stores it in build/bench/results.json and draws it."""
import asyncio
import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import sys
import time

import dispatchkit as dk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sync  # noqa: E402
import bench_zerobuffer  # noqa: E402

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1
RUNS = 3


def point(name, impl, x, value, unit):
    print(f"curve\t{name}\t{impl}\t{x}\t{value:.6g}\t{unit}", flush=True)


def median_of(fn, *args):
    return statistics.median(fn(*args) for _ in range(RUNS))


def alternate(curve, unit, xs, impls):
    """For each x, RUNS rounds of (each implementation once, in turn);
    the median per implementation. impls: (name, fn(x) or None to skip
    that x). Returns {x: {name: median}}."""
    out = {}
    for x in xs:
        got = {name: [] for name, _ in impls}
        for _ in range(RUNS):
            for name, fn in impls:
                v = fn(x)
                if v is not None:
                    got[name].append(v)
        out[x] = {}
        for name, vs in got.items():
            if vs:
                out[x][name] = statistics.median(vs)
                point(curve, name, x, out[x][name], unit)
    return out


def noop():
    pass


# ---- dispatch: queues and pending items -------------------------------------

ITEMS = 100_000 // SCALE


def dk_over_queues(nq):
    """ITEMS no-op blocks spread round-robin over nq serial queues, all
    waited for with one group: ns per block."""
    qs = [dk.Queue(f"curve{i}") for i in range(nq)]
    g = dk.Group()
    ra = g.run_async
    t = time.perf_counter()
    for i in range(ITEMS):
        ra(qs[i % nq], noop)
    g.wait()
    return (time.perf_counter() - t) / ITEMS * 1e9


def tpe_flat(_x):
    """The peer has no queues: ThreadPoolExecutor() running the same
    number of no-op calls (the same at every x)."""
    n = ITEMS // 5
    with cf.ThreadPoolExecutor() as ex:
        t = time.perf_counter()
        for _ in range(n):
            ex.submit(noop)
        ex.shutdown(wait=True)
        return (time.perf_counter() - t) / n * 1e9


def dk_pending(n):
    """n no-op blocks queued on one serial queue, then drained: ns per
    block, submission included."""
    q = dk.Queue("curve-pending")
    ra = q.run_async
    t = time.perf_counter()
    for _ in range(n):
        ra(noop)
    q.barrier_sync(noop)
    return (time.perf_counter() - t) / n * 1e9


def tpe_pending(n):
    if n > 100_000:
        return None  # a few us each: too slow for the run's budget
    with cf.ThreadPoolExecutor(max_workers=1) as ex:
        t = time.perf_counter()
        for _ in range(n):
            ex.submit(noop)
        ex.shutdown(wait=True)
        return (time.perf_counter() - t) / n * 1e9


# ---- timers ------------------------------------------------------------------

FAR = 3600.0
TIMER_OPS = 2000


def dk_timers(armed):
    """With `armed` timers due in an hour, arm and cancel TIMER_OPS more
    (also due in an hour): ns per arm+cancel."""
    q = dk.Queue("curve-timers")
    held = [dk.Timer(FAR, noop, queue=q, repeating=False)
            for _ in range(armed)]
    for t in held:
        t.start()
    extra = [dk.Timer(FAR, noop, queue=q, repeating=False)
             for _ in range(TIMER_OPS)]
    t0 = time.perf_counter()
    for t in extra:
        t.start()
        t.cancel()
    el = time.perf_counter() - t0
    for t in held:
        t.cancel()
    return el / TIMER_OPS * 1e9


def asyncio_timers(armed):
    async def run():
        loop = asyncio.get_running_loop()
        held = [loop.call_later(FAR, noop) for _ in range(armed)]
        t0 = time.perf_counter()
        for _ in range(TIMER_OPS):
            loop.call_later(FAR, noop).cancel()
        el = time.perf_counter() - t0
        for h in held:
            h.cancel()
        return el / TIMER_OPS * 1e9
    return asyncio.run(run())


# ---- zerobuffer frame size ------------------------------------------------------

KiB, MiB = 1 << 10, 1 << 20
BYTES_PER_RUN = 256 * MiB


def zb_copy(size):
    """One writer process, this process reading, frames copied in by the
    writer (write_frame): GB/s over about BYTES_PER_RUN // SCALE (at least
    20 frames, at most 20,000)."""
    n = min(20_000, max(20, BYTES_PER_RUN // SCALE // size))
    secs = bench_zerobuffer.run_dk(size, n, "copy")
    return n * size / secs / 1e9


def memcpy(size):
    return bench_zerobuffer.memcpy_bw(size)


# ---- mutex processes ---------------------------------------------------------

def mutex_rate(kind):
    ctx = mp.get_context("fork")

    def run(nprocs):
        r = bench_sync.contended_run(ctx, kind, 1_000_000 // SCALE, False,
                                     nprocs)
        return None if r is None else r[0]
    return run


def main():
    alternate("dispatch_vs_queues", "ns/block", (1, 10, 100, 1000, 10000),
              (("dispatchkit", dk_over_queues),
               ("ThreadPoolExecutor() (no queues)", tpe_flat)))
    alternate("dispatch_vs_pending", "ns/block",
              (100, 1000, 10_000, 100_000, 1_000_000),
              (("dispatchkit", dk_pending),
               ("ThreadPoolExecutor(1)", tpe_pending)))
    alternate("timer_vs_armed", "ns/arm+cancel",
              (1, 10, 100, 1000, 10_000, 100_000),
              (("dispatchkit", dk_timers),
               ("asyncio call_later", asyncio_timers)))
    sizes = (64, 1 * KiB, 16 * KiB, 256 * KiB, 4 * MiB, 64 * MiB)
    bw = alternate("zerobuffer_vs_frame_size", "GB/s", sizes,
                   (("dispatchkit", zb_copy),
                    ("memcpy (one process)", memcpy)))
    # The same runs as time per frame (a frame's share of a stream, not a
    # request's round trip: see bench_zerobuffer's duplex rows for that).
    for size, got in bw.items():
        for name, gbps in got.items():
            point("zerobuffer_time_per_frame_vs_frame_size", name, size,
                  size / (gbps * 1e9) * 1e6, "us/frame")
    alternate("mutex_vs_processes", "acq/s", (2, 4, 6, 8),
              (("dispatchkit", mutex_rate("dispatchkit")),
               ("multiprocessing.Lock", mutex_rate("mp"))))


if __name__ == "__main__":
    main()
