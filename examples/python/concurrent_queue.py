"""Concurrent queue with a barrier: the reader-writer pattern."""
import dispatchkit as cygcd

q = cygcd.Queue("rw", concurrent=True)
data = {"value": 0}
log = []


def read():
    log.append(f"Read: {data['value']}")


def write():
    data["value"] += 1
    log.append(f"Write: {data['value']}")


q.run_async(read)
q.run_async(read)
q.barrier_async(write)
q.run_async(read)
q.barrier_sync(lambda: None)  # wait for all
print("\n".join(log[:2]))
print(log[2])
print(log[3])
