"""`make demo`: a short tour of every dispatchkit module that exists, then a
small side-by-side benchmark table (ours vs the peer, same run)."""
import concurrent.futures as cf
import importlib
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

TOURS = [
    ("dispatchkit (GCD dispatch)", "tour_dispatch"),
    ("dispatchkit.sync (futex primitives)", "tour_sync"),
    ("dispatchkit.atomics (atomic buffers)", "tour_atomics"),
    ("dispatchkit.zerobuffer (shared-memory frames)", "tour_zerobuffer"),
]


def quick_table():
    import dispatchkit as dk

    def noop():
        pass

    n = 200_000
    q = dk.Queue("demo")
    t = time.perf_counter()
    for _ in range(n):
        q.run_async(noop)
    q.run_sync(noop)
    ours = (time.perf_counter() - t) / n * 1e9

    m = 20_000
    with cf.ThreadPoolExecutor(max_workers=1) as ex:
        t = time.perf_counter()
        for _ in range(m):
            ex.submit(noop)
        ex.shutdown(wait=True)
        peer = (time.perf_counter() - t) / m * 1e9

    rows = [("run_async no-op (per task)", ours, "ThreadPoolExecutor.submit",
             peer, "ns")]

    n = 200_000
    t = time.perf_counter()
    dk.apply(n, lambda i: None)
    ours = (time.perf_counter() - t) / n * 1e9
    f = lambda i: None  # noqa: E731
    t = time.perf_counter()
    for i in range(n):
        f(i)
    peer = (time.perf_counter() - t) / n * 1e9
    rows.append(("apply (per iteration)", ours, "plain for loop", peer,
                 "ns"))

    print("\nworkload                        dispatchkit        peer"
          "                         peer/ours")
    for name, a, pname, b, unit in rows:
        print(f"{name:<31} {a:>8.0f} {unit}   {pname:<26}{b:>9.0f} {unit}"
              f"   {b / a:>6.1f}x")
    print("(full benchmarks: make bench)")


def main():
    for title, mod in TOURS:
        try:
            tour = importlib.import_module(mod).tour
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue  # that module's tour is not there yet
        print(f"\n== {title} ==")
        tour()
    quick_table()


if __name__ == "__main__":
    main()
