"""Scheduled tasks with Queue.after."""
import time

import dispatchkit as cygcd

q = cygcd.Queue("timer")
start = time.time()
done = cygcd.Semaphore(0)
order = []

q.after(0.2, lambda: (order.append(2), done.signal()))
q.after(0.1, lambda: (order.append(1), done.signal()))
done.wait()
done.wait()
print(f"order: {order}, elapsed >= 0.2s: {time.time() - start >= 0.2}")
