"""Parallel loop execution."""
import threading

import dispatchkit as cygcd

results = []
lock = threading.Lock()


def process(index):
    result = index * index
    with lock:
        results.append(result)


cygcd.apply(10, process)
print(sorted(results))  # [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
