"""Timer lateness, read-source wake-up latency and IOChannel throughput,
against asyncio, threading and plain reads, in one run. Latencies: five
rounds of a batch per implementation, in turn; the medians of the
batches' p50 and p99."""
import asyncio
import os
import selectors
import statistics
import sys
import tempfile
import threading
import time

import dispatchkit as dk

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def emit(workload, impl, value, unit):
    print(f"{workload}\t{impl}\t{value:.1f}\t{unit}", flush=True)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def lateness_ours(delay, n):
    late = []
    done = dk.Semaphore(0)
    q = dk.Queue("timer-bench")
    for _ in range(n):
        due = time.perf_counter() + delay
        t = dk.Timer(delay, lambda due=due: (late.append(
            time.perf_counter() - due), done.signal()), queue=q,
            repeating=False)
        t.start()
        done.wait()
        t.cancel()
    return late


def lateness_asyncio(delay, n):
    late = []

    async def run():
        loop = asyncio.get_running_loop()
        for _ in range(n):
            fut = loop.create_future()
            due = time.perf_counter() + delay
            loop.call_later(delay, lambda due=due: (late.append(
                time.perf_counter() - due), fut.set_result(None)))
            await fut

    asyncio.run(run())
    return late


def lateness_threading(delay, n):
    late = []
    for _ in range(n):
        ev = threading.Event()
        due = time.perf_counter() + delay
        t = threading.Timer(delay, lambda due=due: (late.append(
            time.perf_counter() - due), ev.set()))
        t.start()
        ev.wait()
        t.join()
    return late


ROUNDS = 5  # each implementation measured this many times, in turn


def alternate(impls, measure):
    """ROUNDS rounds in which each implementation's batch runs once, in
    turn, so the machine's load hits all alike: per implementation, the
    median over the rounds of each batch's p50 and p99 (seconds)."""
    got = {name: ([], []) for name, _ in impls}
    for _ in range(ROUNDS):
        for name, fn in impls:
            xs = measure(fn)
            got[name][0].append(pct(xs, 50))
            got[name][1].append(pct(xs, 99))
    return {name: (statistics.median(a), statistics.median(b))
            for name, (a, b) in got.items()}


def bench_timers():
    # Enough samples per batch that p99 is not the batch's single worst.
    for delay, n in ((0.001, 500 // SCALE), (0.010, 200 // SCALE)):
        name = f"timer_{int(delay * 1000)}ms_lateness"
        got = alternate((("dispatchkit", lateness_ours),
                         ("asyncio call_later", lateness_asyncio),
                         ("threading.Timer", lateness_threading)),
                        lambda fn: fn(delay, n))
        for impl, (p50, p99) in got.items():
            emit(name + "_p50", impl, p50 * 1e6, "us")
        for impl, (p50, p99) in got.items():
            emit(name + "_p99", impl, p99 * 1e6, "us")


def read_wakeups_ours(r, w, n):
    # The writer waits for each handler with a threading.Event, as it does
    # for the selectors thread below, so the row compares the two wake-up
    # paths and not two ways of waiting for the handler.
    lat = []
    ready = threading.Event()
    stamp = [0.0]

    def on_read():
        os.read(r, 1)
        lat.append(time.perf_counter() - stamp[0])
        ready.set()

    src = dk.ReadSource(r, on_read)
    src.start()
    for _ in range(n):
        ready.clear()
        stamp[0] = time.perf_counter()
        os.write(w, b"x")
        ready.wait()
    src.cancel()
    return lat


def read_wakeups_selectors(r, w, n):
    lat = []
    ready = threading.Event()
    stop = [False]
    stamp = [0.0]

    def selector_thread():
        sel = selectors.DefaultSelector()
        sel.register(r, selectors.EVENT_READ)
        while not stop[0]:
            for _ in sel.select(0.1):
                os.read(r, 1)
                lat.append(time.perf_counter() - stamp[0])
                ready.set()
        sel.close()

    th = threading.Thread(target=selector_thread)
    th.start()
    for _ in range(n):
        ready.clear()
        stamp[0] = time.perf_counter()
        os.write(w, b"x")
        ready.wait()
    stop[0] = True
    th.join()
    return lat


def bench_read_wakeup():
    n = 1000 // SCALE
    r, w = os.pipe()
    try:
        got = alternate((("dispatchkit", read_wakeups_ours),
                         ("selectors in a thread", read_wakeups_selectors)),
                        lambda fn: fn(r, w, n))
    finally:
        os.close(r)
        os.close(w)
    for impl, (p50, p99) in got.items():
        emit("read_wakeup_latency_p50", impl, p50 * 1e6, "us")
    for impl, (p50, p99) in got.items():
        emit("read_wakeup_latency_p99", impl, p99 * 1e6, "us")


def bench_iochannel():
    size = (256 << 20) // SCALE
    fd, path = tempfile.mkstemp()
    block = os.urandom(1 << 20)
    for _ in range(size >> 20):
        os.write(fd, block)
    os.close(fd)
    try:
        def ours():
            fd = os.open(path, os.O_RDONLY)
            ch = dk.IOChannel(fd)
            ch.set_high_water(1 << 20)
            total = [0]
            done = threading.Event()

            def h(d, data, err):
                total[0] += len(data)
                if d:
                    done.set()

            t = time.perf_counter()
            ch.read(size, h)
            done.wait()
            el = time.perf_counter() - t
            ch.close()
            os.close(fd)
            assert total[0] == size
            return size / el / 1e9

        def os_read():
            fd = os.open(path, os.O_RDONLY)
            t = time.perf_counter()
            total = 0
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                total += len(b)
            el = time.perf_counter() - t
            os.close(fd)
            return size / el / 1e9

        def readinto():
            buf = bytearray(1 << 20)
            with open(path, "rb", buffering=0) as f:
                t = time.perf_counter()
                while f.readinto(buf):
                    pass
                el = time.perf_counter() - t
            return size / el / 1e9

        # The three take turns, round by round, so that a burst of load
        # from elsewhere on the machine lands on all of them alike; each
        # reports its best round.
        impls = (("dispatchkit", ours), ("os.read loop", os_read),
                 ("readinto one buffer", readinto))
        best = {name: 0.0 for name, _ in impls}
        for _ in range(3):
            for name, fn in impls:
                best[name] = max(best[name], fn())
        for name, _ in impls:
            emit("iochannel_read_256MiB", name, best[name], "GB/s")
    finally:
        os.unlink(path)


if __name__ == "__main__":
    bench_timers()
    bench_read_wakeup()
    bench_iochannel()
