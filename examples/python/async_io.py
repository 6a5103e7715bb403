"""Asynchronous file read and write."""
import os
import tempfile

import dispatchkit as cygcd

path = os.path.join(tempfile.mkdtemp(), "file.txt")
with open(path, "wb") as f:
    f.write(b"Hello from a file")

fd = os.open(path, os.O_RDONLY)
sem = cygcd.Semaphore(0)


def on_read(data, error):
    if error == 0:
        print(f"Read {len(data)} bytes: {data}")
    sem.signal()


cygcd.read_async(fd, 1024, on_read)
sem.wait()
os.close(fd)

out = os.path.join(os.path.dirname(path), "output.txt")
fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)


def on_write(remaining, error):
    if error == 0:
        print("Write complete")
    sem.signal()


cygcd.write_async(fd, b"Hello!", on_write)
sem.wait()
os.close(fd)
with open(out, "rb") as f:
    print(f.read())
