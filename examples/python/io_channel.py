"""High-performance I/O with chunking and flow control."""
import os
import tempfile

import dispatchkit as cygcd

path = os.path.join(tempfile.mkdtemp(), "large_file.bin")
with open(path, "wb") as f:
    f.write(os.urandom(200_000))

fd = os.open(path, os.O_RDONLY)
channel = cygcd.IOChannel(fd, cygcd.IO_STREAM)
channel.set_high_water(65536)  # 64KB chunks

chunks = []
sem = cygcd.Semaphore(0)


def on_read(done, data, error):
    if error:
        print(f"Error: {error}")
    if data:
        chunks.append(data)
    if done:
        sem.signal()


channel.read(10 * 1024 * 1024, on_read)
sem.wait()
print(f"{len(chunks)} chunks, {sum(map(len, chunks))} bytes, "
      f"largest {max(map(len, chunks))}")

barrier_done = cygcd.Semaphore(0)
channel.barrier(lambda: (print("All I/O complete"), barrier_done.signal()))
barrier_done.wait()
channel.close()
os.close(fd)
