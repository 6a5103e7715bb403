"""Cross-process wake-up of an awaiting coroutine (issue 14), peers in the
same run: another process sets a NamedEvent / posts a NamedSemaphore and a
coroutine awaiting it with dispatchkit.asyncio.wait resumes. Peers: the
same signal as a byte through a pipe watched with loop.add_reader, and a
multiprocessing.Event awaited with asyncio.to_thread(event.wait).

Latency = CLOCK_MONOTONIC when the coroutine awaiting the signal resumes
(each case awaits in a task of its own, stamping on resumption) minus the
one the other process read just before signalling (the clock is
system-wide).
Each round the other process waits to be told the coroutine is waiting,
sleeps 0.3 ms so the loop is really asleep, then signals. The cases run
interleaved, in turns of ROUNDS / 10 rounds each (every case keeps its
loop and its process across turns), so a change of the machine's load
during the run weighs on all of them alike.

Our waits sleep in the loop's own io_uring where the kernel has futex
waits on it (6.7+); the row "(watcher thread)" is the fallback for older
kernels, measured in the same run.

Prints `workload<TAB>impl<TAB>value<TAB>unit` lines (p50 and p99, us).
"""
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid

import dispatchkit.sync as sync
from dispatchkit import asyncio as dkio

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1
BLOCKS = 10
ROUNDS = max(200, 2000 // SCALE) // BLOCKS * BLOCKS
NAME = "dkbw" + uuid.uuid4().hex[:8]


def emit(workload, impl, value, unit):
    print(f"{workload}\t{impl}\t{value:.1f}\t{unit}", flush=True)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def child(kind, ready_name, stamp_name, wfd, mp_event):
    ready = sync.NamedSemaphore(ready_name)
    stamp = sync.NamedSemaphore(stamp_name)  # its `last_ns` field unused
    del stamp
    ev = sync.NamedEvent(NAME) if kind == "event" else None
    sem = sync.NamedSemaphore(NAME) if kind == "sem" else None
    shm = mp_event[1]
    for _ in range(ROUNDS):
        ready.wait()
        time.sleep(0.0003)
        shm[0] = time.monotonic_ns()
        if kind == "event":
            ev.set()
        elif kind == "sem":
            sem.post(1)
        elif kind == "pipe":
            os.write(wfd, b"x")
        else:
            mp_event[0].set()


async def measure(case, rounds):
    kind = case["kind"]
    ready, shm, rfd = case["ready"], case["shm"], case["rfd"]
    mp_ev, ev, sem = case["mp_ev"], case["ev"], case["sem"]
    loop = asyncio.get_running_loop()
    lat = []
    pipe_fut = None

    def on_pipe():
        os.read(rfd, 1)
        if pipe_fut is not None and not pipe_fut.done():
            pipe_fut.set_result(None)

    async def waiter(awaitable):
        # The coroutine that awaits the signal stamps when it resumes.
        await awaitable
        return time.monotonic_ns()

    if kind == "pipe":
        loop.add_reader(rfd, on_pipe)
    for _ in range(rounds):
        if kind == "event":
            ev.clear()
            aw = dkio.wait(ev)
        elif kind == "sem":
            aw = dkio.wait(sem)
        elif kind == "pipe":
            pipe_fut = loop.create_future()
            aw = pipe_fut
        else:
            mp_ev.clear()
            aw = asyncio.to_thread(mp_ev.wait)
        t = asyncio.ensure_future(waiter(aw))
        await asyncio.sleep(0)
        ready.post(1)
        resumed = await t
        lat.append((resumed - shm[0]) / 1000)
    if kind == "pipe":
        loop.remove_reader(rfd)
    return lat


def start(kind, new_loop, watcher=False):
    """One case: its loop, its signalling process and their channels."""
    ready_name = NAME + "r" + kind + ("w" if watcher else "")
    stamp_name = NAME + "s"
    case = {
        "kind": kind,
        "ready": sync.NamedSemaphore(ready_name, initial=0),
        "ev": sync.NamedEvent(NAME),
        "sem": sync.NamedSemaphore(NAME, initial=0),
        "s2": sync.NamedSemaphore(stamp_name, initial=0),
        "lat": [],
    }
    ctx = mp.get_context("fork")
    case["shm"] = shm = ctx.Array("q", 1, lock=False)
    case["mp_ev"] = ctx.Event()
    case["rfd"], case["wfd"] = os.pipe()
    case["proc"] = ctx.Process(
        target=child,
        args=(kind, ready_name, stamp_name, case["wfd"],
              (case["mp_ev"], shm)))
    case["proc"].start()
    case["loop"] = loop = new_loop()
    if watcher:
        # The fallback (kernels before 6.7): the futex watcher thread.
        os.environ["DK_NO_IO_URING"] = "1"
    try:
        uses_ring = loop.run_until_complete(_uses_ring())
    finally:
        os.environ.pop("DK_NO_IO_URING", None)
    assert uses_ring is not watcher or not _RING, uses_ring
    return case


def stop(case):
    loop = case["loop"]
    try:
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
        case["proc"].join(60)
        os.close(case["rfd"])
        os.close(case["wfd"])
        for k in ("ready", "ev", "sem", "s2"):
            case[k].close()


def run_cases(specs, new_loop):
    """Every case in the same run, interleaved: BLOCKS turns, each case
    taking ROUNDS // BLOCKS rounds per turn, so that a change in the
    machine's load (other processes, frequency) falls on all of them
    alike. Returns each case's latencies, the first turn dropped (the
    warm-up)."""
    cases = [start(kind, new_loop, watcher) for kind, _, watcher in specs]
    try:
        for turn in range(BLOCKS):
            for case in cases:
                lat = case["loop"].run_until_complete(
                    measure(case, ROUNDS // BLOCKS))
                if turn > 0:
                    case["lat"] += lat
    finally:
        # Every signalling process gone before any case closes: a child
        # forked after a case's names were opened is registered for them
        # too (PID files), and one still exiting when the last handle
        # closes would keep that segment in /dev/shm after the run.
        for case in cases:
            case["proc"].join(60)
        for case in cases:
            stop(case)
    return [case["lat"] for case in cases]


async def _uses_ring():
    return dkio._waker_for(asyncio.get_running_loop()).uses_ring()


_RING = asyncio.run(_uses_ring())


def main():
    os.environ.setdefault("FASTIPC_PID_DIR", tempfile.mkdtemp())
    loops = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop
        loops.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        pass
    for loop_name, new_loop in loops:
        suffix = "" if loop_name == "asyncio" else f"[{loop_name}]"
        specs = (("event", "dispatchkit NamedEvent", False),
                 ("sem", "dispatchkit NamedSemaphore", False),
                 ("event", "dispatchkit NamedEvent (watcher thread)", True),
                 ("pipe", "pipe + loop.add_reader", False),
                 ("mp", "multiprocessing.Event + to_thread", False))
        results = dict(zip((impl for _, impl, _ in specs),
                           run_cases(specs, new_loop)))
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            w = f"aio_cross_process_wake_{label}{suffix}"
            for impl, lat in results.items():
                name = ("dispatchkit" if impl == "dispatchkit NamedEvent"
                        else impl)
                emit(w, name, pct(lat, q), "us")


if __name__ == "__main__":
    main()
