"""Semaphore coordination. The consumer is submitted before the producer
and blocks in wait(); the pool grows so the producer still runs."""
import dispatchkit as cygcd

items = []
available = cygcd.Semaphore(0)
q = cygcd.Queue.global_queue()
g = cygcd.Group()
consumed = []


def consumer():
    for _ in range(5):
        available.wait()
        consumed.append(items.pop(0))


def producer():
    for i in range(5):
        items.append(i)
        available.signal()


g.run_async(q, consumer)
g.run_async(q, producer)
g.wait()
print(f"consumed: {consumed}")
