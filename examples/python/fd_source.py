"""File descriptor monitoring."""
import os

import dispatchkit as cygcd

r, w = os.pipe()
got = cygcd.Semaphore(0)


def on_readable():
    data = os.read(r, 1024)
    print(f"Received: {data}")
    got.signal()


reader = cygcd.ReadSource(r, on_readable)
reader.start()
os.write(w, b"Hello!")
got.wait()
reader.cancel()
