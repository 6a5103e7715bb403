"""The atomics seed's "Incorrect" sample, unchanged: a plain int modified
from two threads has a data race, so `a` need not equal `total` (on
CPython with a GIL the lost updates are rare but allowed)."""
from threading import Thread


a = 0


def fn(n: int) -> None:
    global a
    for _ in range(n):
        a += 1


if __name__ == "__main__":
    # setup
    total = 10_000_000
    # run threads to completion
    t1 = Thread(target=fn, args=(total // 2,))
    t2 = Thread(target=fn, args=(total // 2,))
    t1.start(), t2.start()
    t1.join(), t2.join()
    # print results
    print(f"a[{a}] != total[{total}]")
