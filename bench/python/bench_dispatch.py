"""Dispatch benchmarks against the Python peers, measured in one run.

Prints `workload<TAB>impl<TAB>value<TAB>unit` lines; impl "dispatchkit" is
ours. Per-task figures include submission and execution (wall time of the
whole batch divided by the batch size).
"""
import concurrent.futures as cf
import sys
import threading
import time

import dispatchkit as dk

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def emit(workload, impl, value, unit):
    print(f"{workload}\t{impl}\t{value:.1f}\t{unit}", flush=True)


def best_of(runs, fn):
    return min(fn() for _ in range(runs))


def noop():
    pass


def bench_run_async(concurrent):
    n = 1_000_000 // SCALE
    q = dk.Queue("bench", concurrent=concurrent)

    def ours():
        t = time.perf_counter()
        ra = q.run_async
        for _ in range(n):
            ra(noop)
        q.barrier_sync(noop)
        return (time.perf_counter() - t) / n * 1e9

    m = 100_000 // SCALE

    def tpe(workers):
        def run():
            with cf.ThreadPoolExecutor(max_workers=workers) as ex:
                t = time.perf_counter()
                submit = ex.submit
                for _ in range(m):
                    submit(noop)
                ex.shutdown(wait=True)
                return (time.perf_counter() - t) / m * 1e9
        return run

    name = "run_async_concurrent" if concurrent else "run_async_serial"
    emit(name, "dispatchkit", best_of(3, ours), "ns/task")
    emit(name, "ThreadPoolExecutor(1)" if not concurrent
         else "ThreadPoolExecutor()", best_of(2, tpe(1 if not concurrent
                                                       else None)),
         "ns/task")


def bench_run_sync():
    n = 200_000 // SCALE
    q = dk.Queue("sync")

    def ours():
        t = time.perf_counter()
        rs = q.run_sync
        for _ in range(n):
            rs(noop)
        return (time.perf_counter() - t) / n * 1e9

    m = 20_000 // SCALE

    def tpe():
        with cf.ThreadPoolExecutor(max_workers=1) as ex:
            t = time.perf_counter()
            for _ in range(m):
                ex.submit(noop).result()
            return (time.perf_counter() - t) / m * 1e9

    emit("run_sync_roundtrip", "dispatchkit", best_of(3, ours), "ns/op")
    emit("run_sync_roundtrip", "ThreadPoolExecutor.submit().result()",
         best_of(2, tpe), "ns/op")


def bench_group_fanout():
    n = 100_000 // SCALE
    q = dk.Queue.global_queue()

    def ours():
        g = dk.Group()
        t = time.perf_counter()
        ra = g.run_async
        for _ in range(n):
            ra(q, noop)
        g.wait()
        return (time.perf_counter() - t) / n * 1e9

    def futures():
        with cf.ThreadPoolExecutor() as ex:
            t = time.perf_counter()
            fs = [ex.submit(noop) for _ in range(n)]
            cf.wait(fs)
            return (time.perf_counter() - t) / n * 1e9

    emit("group_fanout_100k", "dispatchkit", best_of(3, ours), "ns/task")
    emit("group_fanout_100k", "ThreadPoolExecutor+futures.wait",
         best_of(2, futures), "ns/task")


def bench_apply():
    n = 1_000_000 // SCALE
    acc = [0]

    def f(i):
        pass

    def ours():
        t = time.perf_counter()
        dk.apply(n, f)
        return (time.perf_counter() - t) / n * 1e9

    def loop():
        t = time.perf_counter()
        for i in range(n):
            f(i)
        return (time.perf_counter() - t) / n * 1e9

    emit("apply_1M", "dispatchkit", best_of(3, ours), "ns/iter")
    emit("apply_1M", "for loop", best_of(3, loop), "ns/iter")
    del acc


def bench_semaphore_pingpong():
    n = 20_000 // SCALE

    def ours():
        ping, pong = dk.Semaphore(0), dk.Semaphore(0)
        a, b = dk.Queue("a"), dk.Queue("b")

        def ponger():
            for _ in range(n):
                ping.wait()
                pong.signal()

        done = dk.Semaphore(0)

        def pinger():
            t = time.perf_counter()
            for _ in range(n):
                ping.signal()
                pong.wait()
            out.append((time.perf_counter() - t) / n * 1e9)
            done.signal()

        out = []
        b.run_async(ponger)
        a.run_async(pinger)
        done.wait()
        return out[0]

    def threads():
        ping, pong = threading.Semaphore(0), threading.Semaphore(0)

        def ponger():
            for _ in range(n):
                ping.acquire()
                pong.release()

        th = threading.Thread(target=ponger)
        th.start()
        t = time.perf_counter()
        for _ in range(n):
            ping.release()
            pong.acquire()
        r = (time.perf_counter() - t) / n * 1e9
        th.join()
        return r

    emit("semaphore_pingpong", "dispatchkit", best_of(3, ours),
         "ns/roundtrip")
    emit("semaphore_pingpong", "threading.Semaphore", best_of(3, threads),
         "ns/roundtrip")


if __name__ == "__main__":
    bench_run_async(False)
    bench_run_async(True)
    bench_run_sync()
    bench_group_fanout()
    bench_apply()
    bench_semaphore_pingpong()
