"""Resource limiting: at most 2 tasks run at once."""
import threading
import time

import dispatchkit as cygcd

sem = cygcd.Semaphore(2)
q = cygcd.Queue.global_queue()
g = cygcd.Group()
lock = threading.Lock()
active = [0]
peak = [0]


def limited_task(task_id):
    sem.wait()
    with lock:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
    time.sleep(0.05)
    with lock:
        active[0] -= 1
    sem.signal()


for i in range(5):
    g.run_async(q, lambda i=i: limited_task(i))
g.wait()
print(f"max concurrent: {peak[0]}")
