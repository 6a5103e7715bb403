"""read_async, write_async and IOChannel with real pipes and files."""
import ctypes
import errno
import os
import threading
import time

import pytest

import dispatchkit as dk


def collect():
    """A handler for channel reads, returning (handler, result dict)."""
    res = {"chunks": [], "error": None, "done": threading.Event(),
           "calls": 0, "inside": 0, "overlap": 0, "after_done": False}
    lock = threading.Lock()

    def handler(done, data, error):
        with lock:
            res["inside"] += 1
            if res["inside"] > 1:
                res["overlap"] += 1
        if res["done"].is_set():
            res["after_done"] = True
        res["calls"] += 1
        if data:
            res["chunks"].append(data)
        if done:
            res["error"] = error
            res["done"].set()
        with lock:
            res["inside"] -= 1

    return handler, res


def test_read_async_from_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 5000)
    fd = os.open(p, os.O_RDONLY)
    try:
        got = []
        done = dk.Semaphore(0)
        dk.read_async(fd, 1024, lambda d, e: (got.append((d, e)),
                                              done.signal()))
        assert done.wait(5)
        assert got == [(b"x" * 1024, 0)]
    finally:
        os.close(fd)


def test_read_async_on_empty_pipes_does_not_park_workers():
    pipes = [os.pipe() for _ in range(8)]  # more than there are workers
    try:
        results = []
        done = dk.Semaphore(0)
        for r, _ in pipes:
            dk.read_async(r, 100, lambda d, e: (results.append(d),
                                                done.signal()))
        # Workers are free: other work still runs promptly.
        ran = dk.Semaphore(0)
        for _ in range(4):
            dk.Queue.global_queue().run_async(ran.signal)
        for _ in range(4):
            assert ran.wait(5)
        for i, (_, w) in enumerate(pipes):
            os.write(w, b"msg%d" % i)
        for _ in pipes:
            assert done.wait(5)
        assert sorted(results) == sorted(b"msg%d" % i for i in range(8))
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_write_async_continues_partial_writes():
    r, w = os.pipe()
    try:
        payload = os.urandom(1 << 20)  # far more than a pipe holds
        done = dk.Semaphore(0)
        result = []
        dk.write_async(w, payload, lambda rem, e: (result.append((rem, e)),
                                                   done.signal()),
                       queue=dk.Queue("w"))
        got = bytearray()
        while len(got) < len(payload):
            got += os.read(r, 1 << 16)
        assert done.wait(5)
        assert result == [(b"", 0)]
        assert bytes(got) == payload
    finally:
        os.close(r)
        os.close(w)


def test_write_async_error_reports_remaining():
    r, w = os.pipe()
    os.close(r)  # EPIPE on write
    import signal
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        done = dk.Semaphore(0)
        result = []
        dk.write_async(w, bytearray(b"abc"), handler=lambda rem, e: (
            result.append((rem, e)), done.signal()))
        assert done.wait(5)
        assert result == [(b"abc", errno.EPIPE)]
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(w)


def test_async_io_bad_input():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        dk.read_async(r, 10, lambda d, e: None)
    with pytest.raises(OSError):
        dk.write_async(w, b"x", lambda d, e: None)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError):
            dk.read_async(r, -1, lambda d, e: None)
        with pytest.raises(TypeError, match="callable"):
            dk.read_async(r, 10, None)
        with pytest.raises(TypeError):
            dk.write_async(w, "text", lambda d, e: None)
        with pytest.raises(TypeError):
            dk.read_async(r, 10, lambda d, e: None, queue=5)
    finally:
        os.close(r)
        os.close(w)


def test_channel_reads_in_high_water_chunks_in_order(tmp_path):
    data = os.urandom(10_000)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        ch = dk.IOChannel(fd, dk.IO_STREAM)
        assert ch.fd == fd and ch.is_closed is False
        ch.set_high_water(1024)
        handler, res = collect()
        ch.read(len(data) + 100, handler,
                queue=dk.Queue("c", concurrent=True))
        assert res["done"].wait(5)
        assert res["error"] == 0
        assert len(res["chunks"]) >= 10
        assert max(map(len, res["chunks"])) <= 1024
        assert b"".join(res["chunks"]) == data
        assert res["overlap"] == 0 and not res["after_done"]
        ch.close()
        assert ch.is_closed
    finally:
        os.close(fd)


def test_channel_low_water_batches_small_pipe_writes():
    r, w = os.pipe()
    try:
        ch = dk.IOChannel(r)
        ch.set_low_water(6)
        handler, res = collect()
        ch.read(12, handler)
        os.write(w, b"abc")

        def later():  # one thread: the writes keep their order under load
            time.sleep(0.05)
            os.write(w, b"def")
            time.sleep(0.05)
            os.write(w, b"ghijkl")

        writer = threading.Thread(target=later)
        writer.start()
        assert res["done"].wait(5)
        assert b"".join(res["chunks"]) == b"abcdefghijkl"
        assert all(len(c) >= 6 for c in res["chunks"])
        writer.join()
        ch.close()
    finally:
        os.close(r)
        os.close(w)


def test_channel_random_access(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 40)
    fd = os.open(p, os.O_RDWR)
    try:
        ch = dk.IOChannel(fd, dk.IO_RANDOM)
        wh, wres = collect()
        ch.write(b"WXYZ", wh, offset=8192)
        assert wres["done"].wait(5) and wres["error"] == 0
        rh, rres = collect()
        ch.read(8, rh, offset=8190)
        assert rres["done"].wait(5)
        assert b"".join(rres["chunks"]) == bytes([254, 255]) + b"WXYZ" + \
            bytes([4, 5])
        ch.close()
    finally:
        os.close(fd)


def test_channel_barrier_and_cleanup(tmp_path):
    r, w = os.pipe()
    try:
        cleaned = []
        cdone = dk.Semaphore(0)
        ch = dk.IOChannel(w, cleanup_handler=lambda e: (cleaned.append(e),
                                                        cdone.signal()))
        order = []
        wh, wres = collect()
        ch.write(b"first", lambda d, rem, e: (order.append("write"),
                                              wh(d, rem, e)))
        bdone = dk.Semaphore(0)
        ch.barrier(lambda: (order.append(os.read(r, 100)), bdone.signal()))
        assert bdone.wait(5)
        # The barrier ran after the write completed (it read its bytes);
        # the write handler's own delivery is not ordered with it (GCD).
        assert b"first" in order
        assert wres["done"].wait(5)
        ch.close()
        assert cdone.wait(5)
        assert cleaned == [0]
    finally:
        os.close(r)
        os.close(w)


def test_channel_close_stop_cancels_pending():
    r, w = os.pipe()
    try:
        ch = dk.IOChannel(r)
        h1, res1 = collect()
        h2, res2 = collect()
        ch.read(100, h1)
        ch.read(100, h2)
        ch.close(stop=True)
        assert res1["done"].wait(5) and res2["done"].wait(5)
        assert res1["error"] == errno.ECANCELED
        assert res2["error"] == errno.ECANCELED
    finally:
        os.close(r)
        os.close(w)


def test_channel_barrier_behind_a_stop_still_runs_and_drops_its_handler():
    # libdispatch runs a barrier even once the channel is stopped; before,
    # a barrier skipped by close(stop=True) kept its handler forever.
    import gc
    import weakref
    r, w = os.pipe()
    try:
        ch = dk.IOChannel(r)
        h1, res1 = collect()
        ch.read(100, h1)  # waits for data that never comes
        ran = dk.Semaphore(0)

        class Handler:
            def __call__(self):
                ran.signal()

        handler = Handler()
        gone = weakref.ref(handler)
        ch.barrier(handler)
        del handler
        ch.close(stop=True)
        assert res1["done"].wait(5) and res1["error"] == errno.ECANCELED
        assert ran.wait(5)
        deadline = time.monotonic() + 5
        while gone() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
        assert gone() is None
    finally:
        os.close(r)
        os.close(w)


def test_channel_stop_racing_a_write_to_a_full_pipe_cancels_it():
    # close(stop=True) landing while the write's step is between its stop
    # check and the one in its wait for readiness: the step used to go on
    # to a blocking write(2) to the full pipe and never return. The close
    # comes a different few microseconds after each write, so over the
    # turns it lands all along the step's way to its wait.
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        with pytest.raises(BlockingIOError):
            while True:
                os.write(w, bytes(4096))
        os.set_blocking(w, True)  # the channel's fd blocks, as the race needs
        for turn in range(5000):
            ch = dk.IOChannel(w)
            h, res = collect()
            ch.write(b"x", h)
            until = time.perf_counter_ns() + turn * 373 % 6000
            while time.perf_counter_ns() < until:
                pass
            ch.close(stop=True)
            assert res["done"].wait(5), f"turn {turn}: the write never ended"
            assert res["error"] == errno.ECANCELED
    finally:
        os.close(r)
        os.close(w)


def test_channel_misuse():
    r, w = os.pipe()
    try:
        with pytest.raises(OSError):
            dk.IOChannel(r, dk.IO_RANDOM)  # a pipe cannot seek
        with pytest.raises(ValueError):
            dk.IOChannel(r, 7)
        with pytest.raises(TypeError, match="callable"):
            dk.IOChannel(r, cleanup_handler=42)
        ch = dk.IOChannel(r)
        with pytest.raises(TypeError, match="callable"):
            ch.read(10, None)
        with pytest.raises(ValueError):
            ch.read(-1, lambda d, x, e: None)
        with pytest.raises(ValueError):
            ch.set_high_water(-1)
        ch.close()
        ch.close()  # idempotent
        for call in (lambda: ch.read(10, lambda *a: None),
                     lambda: ch.write(b"x", lambda *a: None),
                     lambda: ch.barrier(lambda: None),
                     lambda: ch.set_high_water(10),
                     lambda: ch.set_low_water(10),
                     lambda: ch.set_interval(1000)):
            with pytest.raises(RuntimeError, match="Channel is closed"):
                call()
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(OSError):
        dk.IOChannel(r)  # closed fd


# A chunk whose handler let go of it is reused for a later read of the same
# size (no fresh pages per chunk); these pin down that reuse never shows a
# handler anything but its own bytes.

def _file(tmp_path, size):
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    return data, os.open(p, os.O_RDONLY)


def _read_all(fd, length, handler, high=4096, io_type=dk.IO_STREAM):
    ch = dk.IOChannel(fd, io_type)
    ch.set_high_water(high)
    done = threading.Event()

    def h(d, data, error):
        handler(d, data, error)
        if d:
            done.set()

    ch.read(length, h)
    assert done.wait(10)
    ch.close()


@pytest.mark.parametrize("io_type", [dk.IO_STREAM, dk.IO_RANDOM])
def test_channel_chunks_exact_when_handler_drops_each(tmp_path, io_type):
    data, fd = _file(tmp_path, 200 * 4096 + 123)
    seen = []
    errors = []

    def handler(done, chunk, error):
        off = sum(seen)
        if chunk != data[off:off + len(chunk)]:
            errors.append(off)
        seen.append(len(chunk))
        if done:
            errors.append(error) if error else None

    try:
        _read_all(fd, len(data) + 10, handler, io_type=io_type)
    finally:
        os.close(fd)
    assert errors == []
    assert sum(seen) == len(data)
    assert all(n == 4096 for n in seen[:200])
    assert seen[200:] in ([123], [123, 0])


def test_channel_chunks_kept_alive_stay_intact(tmp_path):
    data, fd = _file(tmp_path, 300 * 4096)
    kept = []

    def handler(done, chunk, error):
        assert error == 0
        # Every other chunk is held through a memoryview only.
        kept.append(memoryview(chunk) if len(kept) % 2 else chunk)

    try:
        _read_all(fd, len(data), handler)
    finally:
        os.close(fd)
    assert b"".join(bytes(c) for c in kept) == data
    objs = [c.obj if isinstance(c, memoryview) else c for c in kept if c]
    assert len({id(o) for o in objs}) == len(objs)


def _stepped_pipe_read(handler, n=20, size=4096):
    """Feed a channel on a pipe one chunk at a time, each after the previous
    handler call has fully returned, so a dropped chunk is free for reuse
    by the next read. Returns the data written."""
    r, w = os.pipe()
    q = dk.Queue("stepped")
    called = threading.Semaphore(0)
    written = []
    try:
        ch = dk.IOChannel(r, dk.IO_STREAM)
        ch.set_high_water(size)

        def h(done, chunk, error):
            handler(done, chunk, error)
            called.release()

        ch.read(n * size, h, queue=q)
        for _ in range(n):
            block = os.urandom(size)
            written.append(block)
            os.write(w, block)
            assert called.acquire(timeout=10)
            q.run_sync(lambda: None)  # that delivery has returned
        ch.close()
    finally:
        os.close(w)
        os.close(r)
    return b"".join(written)


def test_channel_reused_chunk_has_a_fresh_hash():
    bad = []

    def handler(done, chunk, error):
        if chunk and hash(chunk) != hash(bytes(bytearray(chunk))):
            bad.append(len(chunk))
        # chunk is dropped here with its hash computed

    _stepped_pipe_read(handler)
    assert bad == []


def test_channel_chunk_kept_by_handler_is_never_reused():
    kept = []

    def handler(done, chunk, error):
        if chunk:
            kept.append(memoryview(chunk) if len(kept) % 2 else chunk)

    data = _stepped_pipe_read(handler)
    assert b"".join(bytes(c) for c in kept) == data


def test_channel_keeps_reading_while_a_handler_is_blocked():
    # The reader waits a little for chunks to come back before reading
    # into fresh memory, never for good: while the first handler call is
    # blocked, the channel still drains the pipe, so the writer (which
    # needs about 64 chunks read past the pipe's capacity) finishes.
    r, w = os.pipe()
    n, size = 128, 4096
    data = os.urandom(n * size)
    wrote = threading.Event()

    def writer():
        os.write(w, data)  # blocks until the channel has read most of it
        wrote.set()

    chunks = []
    finished = threading.Event()

    def handler(done, chunk, error):
        if not chunks:
            assert wrote.wait(20)
        chunks.append(chunk)
        if done:
            finished.set()

    try:
        ch = dk.IOChannel(r, dk.IO_STREAM)
        ch.set_high_water(size)
        ch.read(len(data), handler)
        t = threading.Thread(target=writer)
        t.start()
        assert wrote.wait(20)
        assert finished.wait(20)
        t.join()
        ch.close()
    finally:
        os.close(w)
        os.close(r)
    assert b"".join(chunks) == data


def test_channel_runs_file_chunk_handlers_where_they_were_read(tmp_path):
    # With the handler's queue idle, the reading thread runs each chunk's
    # handler itself before it reads on, so during a call the fd's offset
    # is the end of that chunk (a reader handing chunks to another thread
    # would have run ahead). Under load a call may be handed on now and
    # then, so most calls, not all, are checked.
    data, fd = _file(tmp_path, 64 * 4096)
    got = [0]
    at_end = []

    def handler(done, chunk, error):
        got[0] += len(chunk)
        if not done:
            at_end.append(os.lseek(fd, 0, os.SEEK_CUR) == got[0])

    try:
        _read_all(fd, len(data), handler)
    finally:
        os.close(fd)
    assert got[0] == len(data)
    assert sum(at_end) >= len(at_end) * 3 // 4


def test_channel_file_handler_blocked_on_the_reading_thread_is_relieved(
        tmp_path):
    # The first call blocks until the fd's offset shows the whole file
    # read: only another thread, taking the reading over from the blocked
    # one, can get it there.
    data, fd = _file(tmp_path, 64 * 4096)
    chunks = []
    saw_end = []

    def handler(done, chunk, error):
        if not chunks:
            deadline = time.monotonic() + 20
            while (os.lseek(fd, 0, os.SEEK_CUR) < len(data)
                   and time.monotonic() < deadline):
                time.sleep(0.001)
            saw_end.append(os.lseek(fd, 0, os.SEEK_CUR) == len(data))
        chunks.append(chunk)

    try:
        _read_all(fd, len(data), handler)
    finally:
        os.close(fd)
    assert saw_end == [True]
    assert b"".join(chunks) == data


def test_channel_keeps_at_most_4_mib_of_spare_chunks_after_a_read(tmp_path):
    # A read's dropped chunks wait for the next read (no fresh memory for
    # its first chunks), but once it ends at most 4 MiB of them stay.
    import tracemalloc
    mib = 1 << 20
    data, fd = _file(tmp_path, 16 * mib)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _read_all(fd, len(data), lambda done, chunk, error: None, high=mib)
        # The last call's bookkeeping follows its return: poll for it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kept = tracemalloc.get_traced_memory()[0] - base
            if kept <= 4 * mib + mib // 2:
                break
            time.sleep(0.01)
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert mib <= kept <= 4 * mib + mib // 2


# Where a channel's reads land (io.c, "Where the kernel's copy lands"): the
# kernel's copy from the page cache runs at a third of its speed or less
# when the chunk's address minus its file position is 1 to 31 mod 4096.

def _page_distance(chunk: bytes, pos: int) -> int:
    address = ctypes.cast(ctypes.c_char_p(chunk), ctypes.c_void_p).value
    return (address - pos) % 4096


def test_channel_read_places_big_chunks_at_fast_copy_distances(tmp_path):
    high = 64 << 10
    data, fd = _file(tmp_path, 1 << 20)
    try:
        # Where does a chunk of this size land? A read with the low-water
        # mark at the high one is never placed, and its dropped chunks wait
        # as spares for the next read.
        offsets = []
        learnt = threading.Event()

        def learn(done, chunk, error):
            if len(chunk) == high:
                offsets.append(_page_distance(chunk, 0))
            if done:
                learnt.set()

        ch = dk.IOChannel(fd, dk.IO_RANDOM)
        ch.set_high_water(high)
        ch.set_low_water(high)
        ch.read(len(data), learn)
        assert learnt.wait(10)
        ch.close()
        # Start where that chunk's copy would run at d = 16.
        start = (offsets[-1] - 16) % 4096
        os.lseek(fd, start, os.SEEK_SET)
        got = bytearray()
        chunks = []  # (length, d): the handler keeps no chunk

        def handler(done, chunk, error):
            assert error == 0
            pos = start + len(got)
            chunks.append((len(chunk), _page_distance(chunk, pos)))
            got.extend(chunk)

        _read_all(fd, len(data), handler, high=high)
    finally:
        os.close(fd)
    assert got == data[start:]
    assert chunks[0][0] < 4096  # the short chunk that places the rest
    # Full chunks land at a fast distance (unplaced, all 15 would be at 16).
    slow = [d for n, d in chunks[1:] if n == high
            and not (64 <= d < 2048 and d % 64)]
    assert slow == []
