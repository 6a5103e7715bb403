"""Task groups and notifications."""
import threading

import dispatchkit as cygcd

g = cygcd.Group()
q = cygcd.Queue.global_queue()
results = []
lock = threading.Lock()

for i in range(5):
    g.run_async(q, lambda i=i: (lock.acquire(), results.append(i),
                                lock.release()))

g.wait()
print(f"Completed: {sorted(results)}")

done = cygcd.Semaphore(0)
g.notify(q, lambda: (print("All done!"), done.signal()))
done.wait()
