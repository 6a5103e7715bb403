"""Soak: 10 million dispatched tasks (serial, concurrent, groups, sync,
after) with resident memory sampled every million. Prints the samples and
fails if memory keeps growing after warm-up.

DK_SOAK_TASKS overrides the total (default 10,000,000)."""
import os
import sys
import time

import dispatchkit as dk

TOTAL = int(os.environ.get("DK_SOAK_TASKS", "10000000"))
STEP = 1_000_000 if TOTAL >= 2_000_000 else max(TOTAL // 10, 1)


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def noop():
    pass


def main():
    serial = dk.Queue("soak.s")
    conc = dk.Queue("soak.c", concurrent=True)
    child = dk.Queue("soak.child", target=serial)
    g = dk.Group()
    gq = dk.Queue.global_queue()
    samples = []
    done = 0
    t0 = time.perf_counter()
    while done < TOTAL:
        n = min(STEP, TOTAL - done)
        for i in range(n // 10):
            serial.run_async(noop)
            conc.run_async(noop)
            child.run_async(noop)
            g.run_async(gq, noop)
            conc.barrier_async(noop) if i % 64 == 0 else conc.run_async(noop)
            serial.run_async(noop)
            g.run_async(conc, noop)
            child.run_async(noop)
            conc.run_async(noop)
            serial.run_sync(noop) if i % 128 == 0 else serial.run_async(noop)
        serial.after(0, noop)
        g.wait()
        serial.run_sync(noop)
        conc.barrier_sync(noop)
        child.run_sync(noop)
        done += n
        samples.append(rss_kib())
        print(f"soak: {done:>10,} tasks  rss {samples[-1]:>8,} KiB", flush=True)
    el = time.perf_counter() - t0
    warm = samples[min(2, len(samples) - 1)]
    peak_after = max(samples[min(2, len(samples) - 1):])
    print(f"soak: {TOTAL:,} tasks in {el:.1f} s ({el / TOTAL * 1e9:.0f} ns "
          f"each); rss after warm-up {warm:,} KiB, peak {peak_after:,} KiB, "
          f"end {samples[-1]:,} KiB")
    # Flat: no more than 8 MiB above the warm-up level.
    if peak_after - warm > 8 * 1024:
        print("soak: FAILED: resident memory kept growing", file=sys.stderr)
        return 1
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
