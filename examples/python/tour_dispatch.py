"""A short tour of the dispatch core (used by `make demo`)."""
import threading
import time

import dispatchkit as dk


def tour():
    q = dk.Queue("tour.serial")
    out = []
    for i in range(5):
        q.run_async(lambda i=i: out.append(i))
    q.run_sync(lambda: out.append("sync"))
    print(f"  serial queue, FIFO:          {out}")

    rw = dk.Queue("tour.rw", concurrent=True)
    log = []
    rw.run_async(lambda: log.append("read"))
    rw.run_async(lambda: log.append("read"))
    rw.barrier_async(lambda: log.append("WRITE (exclusive)"))
    rw.barrier_sync(lambda: None)
    print(f"  concurrent queue + barrier:  {log}")

    g = dk.Group()
    total = [0]
    lock = threading.Lock()

    def add(i):
        with lock:
            total[0] += i

    for i in range(1000):
        g.run_async(dk.Queue.global_queue(), lambda i=i: add(i))
    g.wait()
    print(f"  group of 1000 tasks:         sum={total[0]}")

    squares = [0] * 8
    dk.apply(8, lambda i: squares.__setitem__(i, i * i))
    print(f"  apply(8, square):            {squares}")

    once = dk.Once()
    for _ in range(3):
        once(lambda: print("  Once:                        ran once"))

    done = dk.Semaphore(0)
    t = time.monotonic()
    q.after(0.05, done.signal)
    done.wait()
    print(f"  after(0.05):                 fired after "
          f"{(time.monotonic() - t) * 1000:.0f} ms")

    def boom():
        raise ValueError("raised inside run_sync")

    try:
        q.run_sync(boom)
    except ValueError as e:
        print(f"  run_sync re-raises:          ValueError({e})")
    try:
        q.resume()
    except RuntimeError as e:
        print(f"  misuse raises:               RuntimeError({e})")

    ticks = dk.Semaphore(0)
    t = dk.Timer(0.01, ticks.signal)
    t.start()
    for _ in range(3):
        ticks.wait()
    t.cancel()
    print("  Timer:                       3 ticks, then cancelled")

    import os
    import signal
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    got = dk.Semaphore(0)
    src = dk.SignalSource(signal.SIGUSR1, got.signal)
    src.start()
    os.kill(os.getpid(), signal.SIGUSR1)
    got.wait()
    src.cancel()
    print("  SignalSource:                saw SIGUSR1 set to SIG_IGN")

    r, w = os.pipe()
    done = dk.Semaphore(0)
    result = []
    dk.read_async(r, 100, lambda data, err: (result.append(data),
                                             done.signal()))
    os.write(w, b"hello through a pipe")
    done.wait()
    os.close(r)
    os.close(w)
    print(f"  read_async:                  {result[0]!r}")

    d = dk.Data(b"hello ").concat(dk.Data(b"world"))
    print(f"  Data.concat (no copy):       {bytes(d)!r}, {d.regions} regions")

    wl = dk.Workloop("tour.workloop")
    order = []
    gate = dk.Semaphore(0)
    wl.run_async(lambda: gate.wait())
    wl.run_async(lambda: order.append("background"),
                 qos=dk.QOS_CLASS_BACKGROUND)
    wl.run_async(lambda: order.append("interactive"),
                 qos=dk.QOS_CLASS_USER_INTERACTIVE)
    gate.signal()
    fin = dk.Semaphore(0)
    wl.run_async(fin.signal, qos=dk.QOS_CLASS_BACKGROUND)
    fin.wait()
    print(f"  Workloop, by QoS:            {order}")

    dk.Queue.main_queue().run_async(
        lambda: print("  main queue:                  drained on main thread"))
    dk.drain_main_queue()


if __name__ == "__main__":
    tour()
