"""dispatchkit.Executor and dispatchkit.asyncio against the stdlib, in one run.

Prints `workload<TAB>impl<TAB>value<TAB>unit` lines; impl "dispatchkit" is
ours. Workloads (from issue 14):
- executor_submit: submit n no-op tasks, then collect every result; per task.
  Peer: ThreadPoolExecutor(os.cpu_count()).
- executor_map: list(executor.map(f, range(100_000))); per item.
- aio_run_one: `await dkio.run(q, f)` one at a time; per call.
  Peer: `await asyncio.to_thread(f)` (its default ThreadPoolExecutor).
- aio_run_gather: 10,000 of them gathered at once; per item.
The asyncio workloads alternate ours and the peer run by run and report
the median of each (the machine may be shared).
Under uvloop too when it is installed (impl names carry the loop).
"""
import asyncio
import concurrent.futures as cf
import os
import statistics
import sys
import time

import dispatchkit as dk
from dispatchkit import asyncio as dkio

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def emit(workload, impl, value, unit):
    print(f"{workload}\t{impl}\t{value:.1f}\t{unit}", flush=True)


def best_of(runs, fn):
    return min(fn() for _ in range(runs))


def f(*_):
    return None


def bench_submit():
    n = 100_000 // SCALE

    def run(ex, m):
        def once():
            submit = ex.submit
            t = time.perf_counter()
            fs = [submit(f) for _ in range(m)]
            for x in fs:
                x.result()
            return (time.perf_counter() - t) / m * 1e9
        return once

    with dk.Executor() as ex:
        emit("executor_submit", "dispatchkit", best_of(5, run(ex, n)),
             "ns/task")
    with cf.ThreadPoolExecutor(os.cpu_count()) as ex:
        emit("executor_submit", f"ThreadPoolExecutor({os.cpu_count()})",
             best_of(3, run(ex, n // 5)), "ns/task")


def bench_map():
    n = 100_000 // SCALE

    def run(ex, m):
        def once():
            t = time.perf_counter()
            for _ in ex.map(f, range(m)):
                pass
            return (time.perf_counter() - t) / m * 1e9
        return once

    with dk.Executor() as ex:
        emit("executor_map", "dispatchkit", best_of(5, run(ex, n)), "ns/item")
    with cf.ThreadPoolExecutor(os.cpu_count()) as ex:
        emit("executor_map", f"ThreadPoolExecutor({os.cpu_count()})",
             best_of(3, run(ex, n)), "ns/item")


def bench_aio(loop_name, new_loop):
    q = dk.Queue.global_queue()
    n_one = 5_000 // SCALE
    n_gather = 10_000

    async def one_ours():
        t = time.perf_counter()
        for _ in range(n_one):
            await dkio.run(q, f)
        return (time.perf_counter() - t) / n_one * 1e9

    async def one_peer():
        m = n_one // 4
        t = time.perf_counter()
        for _ in range(m):
            await asyncio.to_thread(f)
        return (time.perf_counter() - t) / m * 1e9

    async def gather_ours():
        t = time.perf_counter()
        await asyncio.gather(*[dkio.run(q, f) for _ in range(n_gather)])
        return (time.perf_counter() - t) / n_gather * 1e9

    async def gather_peer():
        t = time.perf_counter()
        await asyncio.gather(*[asyncio.to_thread(f) for _ in range(n_gather)])
        return (time.perf_counter() - t) / n_gather * 1e9

    def once(coro_fn):
        loop = new_loop()
        try:
            return loop.run_until_complete(coro_fn())
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def alternate(ours, peer, runs):
        # Ours and the peer take turns, so a neighbour's load on a shared
        # machine falls on both; the median of each side is reported.
        a, b = [], []
        for _ in range(runs):
            a.append(once(ours))
            b.append(once(peer))
        return statistics.median(a), statistics.median(b)

    suffix = "" if loop_name == "asyncio" else f"[{loop_name}]"
    ours, peer = alternate(one_ours, one_peer, 7)
    emit(f"aio_run_one{suffix}", "dispatchkit", ours, "ns/call")
    emit(f"aio_run_one{suffix}", "asyncio.to_thread", peer, "ns/call")
    ours, peer = alternate(gather_ours, gather_peer, 3)
    emit(f"aio_run_gather{suffix}", "dispatchkit", ours, "ns/item")
    emit(f"aio_run_gather{suffix}", "asyncio.to_thread", peer, "ns/item")


def main():
    bench_submit()
    bench_map()
    bench_aio("asyncio", asyncio.new_event_loop)
    try:
        import uvloop
    except ImportError:
        return
    bench_aio("uvloop", uvloop.new_event_loop)


if __name__ == "__main__":
    main()
