"""dispatchkit.zerobuffer on its own: the seed's API, zero-copy views and
their lifetimes, waits that release the GIL and obey Ctrl-C, threads,
real processes that crash, hostile segments, the CLI and duplex channels.
Interop with zerobuffer-ipc is in test_zerobuffer_interop.py."""
import gc
import os
import signal
import struct
import subprocess
import threading
import time
from datetime import timedelta

import pytest

import dispatchkit.zerobuffer as zb
from zb_helpers import PY, child, name, segment, wait_line  # noqa: F401

# ---- API ----------------------------------------------------------------

def test_seed_names_and_defaults():
    for n in ["Reader", "Writer", "Frame", "BufferConfig", "OIEB",
              "FrameHeader", "ZeroBufferException", "WriterDeadException",
              "ReaderDeadException", "WriterAlreadyConnectedException",
              "ReaderAlreadyConnectedException", "BufferFullException",
              "FrameTooLargeException", "InvalidFrameSizeException",
              "SequenceError", "MetadataAlreadyWrittenException",
              "DuplexChannelFactory", "ProcessingMode", "DuplexResponse",
              "ErrorEventArgs"]:
        assert hasattr(zb, n), n
    c = zb.BufferConfig()
    assert (c.metadata_size, c.payload_size) == (1024, 1024 * 1024)
    with pytest.raises(ValueError):
        zb.BufferConfig(payload_size=0)
    for exc in [zb.WriterDeadException, zb.ReaderDeadException,
                zb.BufferFullException, zb.SequenceError,
                zb.InvalidFrameSizeException]:
        assert issubclass(exc, zb.ZeroBufferException)
    e = zb.SequenceError(3, 5)
    assert (e.expected, e.got) == (3, 5)
    assert str(e) == "Sequence error: expected 3, got 5"
    assert str(zb.WriterDeadException()) == "Writer process is dead"
    assert zb.ProcessingMode.SINGLE_THREAD.value == "single_thread"
    h = zb.FrameHeader(5, 7)
    assert zb.FrameHeader.unpack(h.pack()) == h and len(h.pack()) == 16
    o = zb.OIEB(metadata_size=64, payload_size=1024, reader_pid=9)
    assert len(o.pack()) == 128 and zb.OIEB.unpack(o.pack()) == o
    assert zb.align_to_boundary(65) == 128


def test_roundtrip_metadata_and_frames(name):
    with zb.Reader(name, zb.BufferConfig(256, 4096)) as r:
        assert r.name == name
        assert r.get_metadata() is None
        assert not r.is_writer_connected()
        with zb.Writer(name) as w:
            assert r.is_writer_connected()
            assert r.is_writer_connected(timeout_ms=10)
            assert w.is_reader_connected()
            w.set_metadata(b"format=raw")
            md = r.get_metadata()
            assert isinstance(md, memoryview) and md.readonly
            assert bytes(md) == b"format=raw"
            md.release()
            assert w.write_frame(b"hello") == 1
            w.write_frame_zero_copy(memoryview(bytearray(b"world!")))
            f = r.read_frame(timeout=1.0)
            assert isinstance(f, zb.Frame)
            assert (f.sequence, f.size, len(f)) == (1, 5, 5)
            assert bytes(f) == b"hello" and f.is_valid
            assert isinstance(f.data, memoryview) and f.data.readonly
            assert "sequence=1" in repr(f)
            r.release_frame(f)
            assert not f.is_valid
            with pytest.raises(ValueError):
                f.data
            with r.read_frame() as g:
                assert bytes(g.data) == b"world!"
            assert not g.is_valid
            assert (r.frames_read, r.bytes_read) == (2, 11)
            assert (w.frames_written, w.bytes_written) == (2, 11)
            assert w.write_timeout == timedelta(seconds=5)
            w.write_timeout = timedelta(milliseconds=50)
            with pytest.raises(ValueError):
                w.write_timeout = timedelta(0)
    assert not os.path.exists(f"/dev/shm/{name}")
    assert not os.path.exists(f"/dev/shm/sem.sem-w-{name}")
    assert not os.path.exists(f"/tmp/zerobuffer/{name}.lock")


def test_segment_is_the_peers_layout(name):
    with zb.Reader(name, zb.BufferConfig(100, 1000)):
        seg = segment(name)
        assert len(seg) == 128 + 128 + 1024
        o = zb.OIEB.unpack(seg[:128])
        assert o.oieb_size == 128 and o.version.major == 1
        assert (o.metadata_size, o.payload_size) == (128, 1024)
        assert o.payload_free_bytes == 1024 and o.reader_pid == os.getpid()
        with zb.Writer(name) as w:
            w.write_frame(b"abc")
            o = zb.OIEB.unpack(seg[:128])
            assert o.writer_pid == os.getpid()
            assert (o.payload_write_pos, o.payload_written_count) == (19, 1)
            assert zb.FrameHeader.unpack(seg[256:272]) == zb.FrameHeader(3, 1)
            assert seg[272:275] == b"abc"
        seg.close()


def test_invalid_input_raises_seed_exceptions(name):
    for bad in ["", "a/b", "..", "x" * 300, "sp ace"]:
        with pytest.raises(ValueError):
            zb.Reader(bad)
        with pytest.raises(zb.ZeroBufferException):
            zb.Writer(bad)
    with pytest.raises(zb.ZeroBufferException, match="No shared memory"):
        zb.Writer(name)
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r:
        with pytest.raises(zb.ReaderAlreadyConnectedException):
            zb.Reader(name)
        w = zb.Writer(name)
        with pytest.raises(zb.WriterAlreadyConnectedException):
            zb.Writer(name)
        with pytest.raises(zb.InvalidFrameSizeException):
            w.write_frame(b"")
        with pytest.raises(zb.InvalidFrameSizeException):
            w.get_frame_buffer(0)
        with pytest.raises(zb.FrameTooLargeException):
            w.write_frame(bytes(1024 - 15))
        w.write_frame(bytes(1024 - 16))  # exactly the ring
        with pytest.raises(zb.ZeroBufferException, match="too large"):
            w.set_metadata(bytes(57))
        w.set_metadata(b"m")
        with pytest.raises(zb.MetadataAlreadyWrittenException):
            w.set_metadata(b"again")
        with pytest.raises(TypeError):
            w.write_frame("text")
        r.read_frame().dispose()
        w.close()
        with pytest.raises(zb.ZeroBufferException, match="closed"):
            w.write_frame(b"x")
    with pytest.raises(zb.ZeroBufferException, match="closed"):
        r.read_frame()


def test_buffer_full_then_space(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        w.write_timeout = timedelta(milliseconds=50)
        w.write_frame(bytes(480))
        w.write_frame(bytes(480))
        with pytest.raises(zb.BufferFullException):
            w.write_frame(bytes(480))
        assert r.read_frame(timeout=0) is not None  # released at once
        w.write_frame(bytes(480))
        assert r.read_frame(timeout=0.01).sequence == 2
        assert r.read_frame(timeout=0.01).sequence == 3
        assert r.read_frame(timeout=0.01) is None


def test_zero_copy_get_frame_buffer(name):
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as r, \
            zb.Writer(name) as w:
        view = w.get_frame_buffer(8)
        assert not view.readonly and len(view) == 8
        view[:] = b"12345678"
        with pytest.raises(zb.ZeroBufferException):
            w.write_frame(b"no")  # a frame is pending
        w.commit_frame()
        with pytest.raises(ValueError):
            view[0]  # the handed-out view is revoked on commit
        with pytest.raises(zb.ZeroBufferException):
            w.commit_frame()
        f = r.read_frame(timeout=1)
        assert bytes(f.data) == b"12345678"
        seq, view = w.get_frame_buffer_with_sequence(3)
        assert seq == 2
        view[:] = b"abc"
        w.commit_frame()
        # The reader's view is the shared memory itself: same bytes, and
        # it changes if the (hostile) writer changes them.
        g = r.read_frame(timeout=1)
        seg = segment(name)
        off = seg.find(b"abc", 128)
        seg[off:off + 3] = b"xyz"
        assert bytes(g.data) == b"xyz"
        seg.close()


def test_views_outlive_close_safely(name):
    r = zb.Reader(name, zb.BufferConfig(64, 4096))
    w = zb.Writer(name)
    w.set_metadata(b"meta")
    w.write_frame(b"payload")
    f = r.read_frame(timeout=1)
    data, md = f.data, r.get_metadata()
    r.close()
    w.close()
    # Detached at once ...
    assert not os.path.exists(f"/dev/shm/{name}")
    assert r.read_frame is not None and not f.is_valid
    with pytest.raises(zb.ZeroBufferException):
        f.data
    # ... but live views still read mapped memory.
    assert bytes(data) == b"payload" and bytes(md) == b"meta"
    del f, r, w
    gc.collect()
    assert bytes(data[:3]) == b"pay"
    data.release()
    md.release()


def test_out_of_order_release_credits_in_ring_order(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        seg = segment(name)
        free = lambda: zb.OIEB.unpack(seg[:128]).payload_free_bytes  # noqa
        w.write_frame(bytes(84))
        w.write_frame(bytes(84))
        a = r.read_frame(timeout=1)
        b = r.read_frame(timeout=1)
        b.dispose()
        assert free() == 1024 - 200
        del a
        gc.collect()
        assert free() == 1024
        seg.close()


def test_wrap_around_stream_in_one_process(name):
    import random
    rng = random.Random(5)
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as r, \
            zb.Writer(name) as w:
        for seq in range(1, 3001):
            data = rng.randbytes(rng.randint(1, 2000))
            w.write_frame(data)
            f = r.read_frame(timeout=1)
            assert f.sequence == seq and f.data == data
            f.dispose()


def test_error_messages_word_for_word(name):
    """What users see of the binding's error tables: each class and
    message, including those that name the buffer."""
    def raised(exc, fn, *args):
        with pytest.raises(exc) as e:
            fn(*args)
        assert type(e.value) is exc
        return str(e.value)

    assert raised(zb.ZeroBufferException, zb.Writer, name) == (
        f"No shared memory found for buffer '{name}' - reader must be "
        f"created first")
    assert raised(zb.InvalidBufferNameException, zb.Reader, "a/b") == (
        "invalid buffer name 'a/b': must be non-empty, without '/', '..', "
        "spaces or control characters")
    assert raised(zb.InvalidBufferNameException, zb.Writer, "a\0b") == (
        "invalid buffer name 'a\\x00b': must be non-empty, without '/', "
        "'..', spaces or control characters")
    assert raised(zb.InvalidBufferNameException, zb.Reader, "x" * 241) == (
        f"invalid buffer name {'x' * 241!r}: longer than 240 bytes")
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as r:
        assert raised(zb.ReaderAlreadyConnectedException, zb.Reader,
                      name) == "Another reader is already connected"
        seg = segment(name)
        pid = struct.unpack_from("<Q", seg, 88)[0]
        struct.pack_into("<Q", seg, 88, 0)  # reader_pid: nobody
        try:
            assert raised(zb.ZeroBufferException, zb.Writer, name) == (
                f"No active reader found for buffer '{name}'")
        finally:
            struct.pack_into("<Q", seg, 88, pid)
        with zb.Writer(name) as w:
            assert raised(zb.WriterAlreadyConnectedException, zb.Writer,
                          name) == "Another writer is already connected"
            assert raised(zb.ZeroBufferException, w.commit_frame) == (
                "No pending frame to commit")
            assert raised(zb.ZeroBufferException, w.set_metadata, b"") == (
                "Metadata must not be empty (readers cannot tell it from "
                "no metadata)")
            assert raised(zb.ZeroBufferException, w.set_metadata,
                          b"m" * 100) == "Metadata too large for buffer"
            w.set_metadata(b"m")
            assert raised(zb.MetadataAlreadyWrittenException, w.set_metadata,
                          b"n") == "Metadata has already been written"
            assert raised(zb.InvalidFrameSizeException, w.write_frame,
                          b"") == "Invalid frame size (zero or too large)"
            assert raised(zb.FrameTooLargeException, w.write_frame,
                          b"x" * 4096) == "Frame size exceeds buffer capacity"
            view = w.get_frame_buffer(8)
            assert raised(zb.ZeroBufferException, w.write_frame, b"x") == (
                "a frame from get_frame_buffer() is waiting for "
                "commit_frame()")
            del view
            w.commit_frame()
            struct.pack_into("<Q", seg, 128 + 64 + 8, 7)  # its sequence
            assert raised(zb.SequenceError, r.read_frame, 0) == (
                "Sequence error: expected 1, got 7")
            struct.pack_into("<Q", seg, 128 + 64 + 8, 1)
            struct.pack_into("<Q", seg, 128 + 64, 1 << 40)  # its size
            msg = raised(zb.ZeroBufferException, r.read_frame, 0)
            assert "past the ring" in msg
        seg.close()
        assert raised(zb.ZeroBufferException, w.write_frame, b"x") == (
            "Writer is closed")
    assert raised(zb.ZeroBufferException, r.read_frame, 0) == (
        "Reader is closed")


# ---- waits: GIL and signals ----------------------------------------------

def test_read_wait_releases_the_gil(name):
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as r, \
            zb.Writer(name) as w:
        got = []
        t = threading.Thread(target=lambda: got.append(
            r.read_frame(timeout=5.0)))
        t.start()
        time.sleep(0.05)  # the reader is now blocked in read_frame
        w.write_frame(b"wake")  # runs only if the reader let go of the GIL
        t.join(10)
        assert not t.is_alive()
        assert got and got[0] is not None and bytes(got[0]) == b"wake"


def test_write_wait_releases_the_gil(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        w.write_frame(bytes(1000))
        done = []
        t = threading.Thread(target=lambda: done.append(
            w.write_frame(bytes(1000))))
        t.start()
        time.sleep(0.05)
        r.read_frame(timeout=1).dispose()  # makes room for the writer
        t.join(10)
        assert done == [2]


def test_read_is_interruptible(name):
    class Interrupted(Exception):
        pass

    def handler(sig, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with zb.Reader(name, zb.BufferConfig(64, 1024)) as r:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(Interrupted):
                r.read_frame(timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_write_is_interruptible(name):
    def handler(sig, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with zb.Reader(name, zb.BufferConfig(64, 1024)), \
                zb.Writer(name) as w:
            w.write_timeout = timedelta(seconds=30)
            w.write_frame(bytes(1000))
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(KeyboardInterrupt):
                w.write_frame(bytes(1000))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_wait_for_another_threads_write_is_interruptible(name):
    """The writer takes one writing thread at a time: a thread waiting for
    another's write (here: one waiting for space) still runs the signal
    handlers, and the other write goes through afterwards."""
    def handler(sig, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
                zb.Writer(name) as w:
            w.write_timeout = timedelta(seconds=30)
            w.write_frame(bytes(1000))  # the ring is full now
            done = []
            holder = threading.Thread(
                target=lambda: done.append(w.write_frame(b"held")))
            holder.start()
            time.sleep(0.2)  # let it take the writer and wait for space
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(KeyboardInterrupt):
                w.write_frame(b"mine")
            r.read_frame(timeout=5).dispose()  # space for the holder
            holder.join(10)
            assert done == [2]
            f = r.read_frame(timeout=5)
            assert (f.sequence, bytes(f.data)) == (2, b"held")
            f.dispose()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_many_writing_threads_share_one_writer(name):
    n_threads, per = 4, 500
    with zb.Reader(name, zb.BufferConfig(64, 8192)) as r, \
            zb.Writer(name) as w:
        def produce(k):
            for i in range(per):
                w.write_frame(struct.pack("<II", k, i))
        ts = [threading.Thread(target=produce, args=(k,))
              for k in range(n_threads)]
        for t in ts:
            t.start()
        last = {}
        for seq in range(1, n_threads * per + 1):
            f = r.read_frame(timeout=5)
            assert f.sequence == seq
            k, i = struct.unpack("<II", f.data)
            assert last.get(k, -1) == i - 1
            last[k] = i
            f.dispose()
        for t in ts:
            t.join(10)
        assert last == {k: per - 1 for k in range(n_threads)}


def test_large_copy_with_gil_released(name):
    big = os.urandom(4 * 1024 * 1024)
    with zb.Reader(name, zb.BufferConfig(64, 16 * 1024 * 1024)) as r, \
            zb.Writer(name) as w:
        for _ in range(3):
            w.write_frame(big)
            f = r.read_frame(timeout=5)
            assert bytes(f) == big
            f.dispose()


def test_read_does_not_touch_every_page_of_a_large_frame(name):
    """read_frame checks a frame against truncation by its last byte
    only: loading a line of every page pulled lines the writer must take
    back before it copies there again (a 1 MiB stream's writer copied at
    0.4x its speed). Counted as page faults in the reader's fresh
    mapping: one page-touch per 4 KiB faulted in a few hundred for 8 MiB
    (64 KiB per fault with the kernel's fault-around)."""
    import resource
    size = 8 * 1024 * 1024
    big = b"\x01" * size
    with zb.Reader(name, zb.BufferConfig(64, 2 * size)) as r, \
            zb.Writer(name) as w:
        w.write_frame(big)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f = r.read_frame(timeout=5)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert f is not None and f.size == size
        assert f.data[size - 1] == 1
        f.dispose()
    assert faults < 32, faults


# ---- processes and failures ----------------------------------------------

WRITER_CHILD = """
import sys, time, dispatchkit.zerobuffer as zb
w = zb.Writer(sys.argv[1])
for i in range(int(sys.argv[2])):
    w.write_frame(i.to_bytes(4, "little") * 64)
print("written", flush=True)
if sys.argv[3] == "hang":
    time.sleep(60)
w.close()
"""


def test_writer_killed_mid_stream(name):
    with zb.Reader(name, zb.BufferConfig(64, 1 << 16)) as r:
        p = child(WRITER_CHILD, name, 20, "hang")
        try:
            wait_line(p, "written")
            p.kill()
            p.wait(10)
            for i in range(20):  # everything written before death arrives
                f = r.read_frame(timeout=5)
                assert f.data[:4] == i.to_bytes(4, "little")
                f.dispose()
            with pytest.raises(zb.WriterDeadException):
                r.read_frame(timeout=5)
            assert not r.is_writer_connected()
        finally:
            p.kill()
            p.wait(10)


def test_writer_killed_but_not_yet_reaped_is_dead(name):
    # A zombie still answers kill(pid, 0), and its parent, the reader
    # here, is the one that has not reaped it.
    with zb.Reader(name, zb.BufferConfig(64, 1 << 16)) as r:
        p = child(WRITER_CHILD, name, 2, "hang")
        try:
            wait_line(p, "written")
            p.send_signal(signal.SIGKILL)
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
            os.kill(p.pid, 0)  # still there, as a zombie
            for _ in range(2):
                r.read_frame(timeout=5).dispose()
            with pytest.raises(zb.WriterDeadException):
                r.read_frame(timeout=10)
        finally:
            p.kill()
            p.wait(10)


def test_writer_graceful_exit_then_new_writer(name):
    with zb.Reader(name, zb.BufferConfig(64, 1 << 16)) as r:
        p = child(WRITER_CHILD, name, 3, "exit")
        assert p.wait(20) == 0, p.stderr.read()
        for i in range(3):
            r.read_frame(timeout=5).dispose()
        with pytest.raises(zb.WriterDeadException):
            r.read_frame(timeout=5)
        # A new writer numbers its frames from 1 again: accepted.
        with zb.Writer(name) as w:
            w.write_frame(b"second writer")
            f = r.read_frame(timeout=5)
            assert (f.sequence, bytes(f)) == (1, b"second writer")
            f.dispose()
            # The same writer going back to 1 is still an error.
            seg = segment(name)
            w.write_frame(b"b")
            o = zb.OIEB.unpack(seg[:128])
            pos = o.payload_write_pos - 17
            seg[128 + 64 + pos + 8:128 + 64 + pos + 16] = (1).to_bytes(
                8, "little")
            with pytest.raises(zb.SequenceError):
                r.read_frame(timeout=5)
            seg.close()


READER_CHILD = """
import sys, time, dispatchkit.zerobuffer as zb
r = zb.Reader(sys.argv[1], zb.BufferConfig(64, 4096))
print("ready", flush=True)
time.sleep(60)
"""


def test_reader_killed_writer_told_when_it_needs_space(name):
    p = child(READER_CHILD, name)
    try:
        wait_line(p, "ready")
        w = zb.Writer(name)
        p.kill()
        p.wait(10)
        w.write_timeout = timedelta(seconds=5)
        with pytest.raises(zb.ReaderDeadException):
            for _ in range(100):
                w.write_frame(bytes(1000))
        assert w.frames_written <= 4
        assert not w.is_reader_connected()
        w.close()
    finally:
        p.kill()
        p.wait(10)


def test_new_reader_replaces_crashed_one(name):
    p = child(READER_CHILD, name)
    try:
        wait_line(p, "ready")
        old_writer = zb.Writer(name)
        old_writer.write_frame(b"to the dead")
        p.kill()
        p.wait(10)
        with zb.Reader(name, zb.BufferConfig(64, 4096)) as r:
            with pytest.raises(zb.ReaderDeadException):
                old_writer.write_frame(b"x")
            old_writer.close()
            with zb.Writer(name) as w:
                w.write_frame(b"fresh")
                f = r.read_frame(timeout=5)
                assert (f.sequence, bytes(f)) == (1, b"fresh")
    finally:
        p.kill()
        p.wait(10)


def test_fork_child_writes(name):
    with zb.Reader(name, zb.BufferConfig(64, 8192)) as r:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with zb.Writer(name) as w:
                    for i in range(100):
                        w.write_frame(bytes([i]) * (i + 1))
                code = 0
            finally:
                os._exit(code)
        for i in range(100):
            f = r.read_frame(timeout=5)
            assert bytes(f) == bytes([i]) * (i + 1)
            f.dispose()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


# ---- hostile segments -----------------------------------------------------

def test_corrupted_segment_is_reported(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        seg = segment(name)
        ring = 128 + 64
        w.write_frame(b"abcd")

        def corrupt(off, fmt, value, exc, match=None):
            old = seg[off:off + struct.calcsize(fmt)]
            seg[off:off + len(old)] = struct.pack(fmt, value)
            with pytest.raises(exc, match=match):
                r.read_frame(timeout=0)
            seg[off:off + len(old)] = old

        corrupt(0, "<I", 64, zb.ZeroBufferException, "oieb_size")
        corrupt(4, "<B", 2, zb.ZeroBufferException, "version")
        corrupt(32, "<Q", 1 << 40, zb.ZeroBufferException, "sizes")
        corrupt(48, "<Q", 5000, zb.ZeroBufferException, "write_pos")
        corrupt(40, "<Q", 1 << 63, zb.ZeroBufferException, "free_bytes")
        corrupt(ring, "<Q", 5000, zb.ZeroBufferException, "past the ring")
        corrupt(ring, "<Q", (1 << 64) - 1, zb.ZeroBufferException, "past")
        corrupt(ring, "<Q", 0, zb.ZeroBufferException, "size 0")
        corrupt(ring + 8, "<Q", 9, zb.SequenceError)
        try:
            seg[ring + 8:ring + 16] = struct.pack("<Q", 5)
            r.read_frame(timeout=0)
        except zb.SequenceError as e:
            assert (e.expected, e.got) == (1, 5)
        seg[ring + 8:ring + 16] = struct.pack("<Q", 1)
        # Repaired, the frame is still there: nothing was consumed.
        assert bytes(r.read_frame(timeout=0)) == b"abcd"
        # Metadata with a length beyond what was written.
        w.set_metadata(b"meta")
        seg[128:136] = struct.pack("<Q", 4000)
        with pytest.raises(zb.ZeroBufferException, match="metadata"):
            r.get_metadata()
        seg.close()


def test_writer_refuses_corrupted_oieb(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)):
        seg = segment(name)
        seg[0:4] = struct.pack("<I", 100)
        with pytest.raises(zb.ZeroBufferException, match="OIEB size"):
            zb.Writer(name)
        seg[0:4] = struct.pack("<I", 128)
        seg[32:40] = struct.pack("<Q", 1 << 50)
        with pytest.raises(zb.ZeroBufferException):
            zb.Writer(name)
        seg[32:40] = struct.pack("<Q", 1024)
        w = zb.Writer(name)
        seg[40:48] = struct.pack("<Q", 1 << 62)
        with pytest.raises(zb.ZeroBufferException, match="free_bytes"):
            w.write_frame(b"x")
        w.close()
        seg.close()


# ---- CLI and duplex -------------------------------------------------------

def test_cli_send_recv(name, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    recv = subprocess.Popen(
        [PY, "-m", "dispatchkit.zerobuffer", "recv", name, "--timeout",
         "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with open(src, "rb") as f:
            send = subprocess.run(
                [PY, "-m", "dispatchkit.zerobuffer", "send", name,
                 "--chunk", "100000"], stdin=f, capture_output=True,
                timeout=30)
        assert send.returncode == 0, send.stderr
        out, err = recv.communicate(timeout=30)
        assert recv.returncode == 0, err
        assert out == data
    finally:
        recv.kill()
        recv.wait(10)


def test_duplex_echo_and_zero_copy_requests(name):
    factory = zb.DuplexChannelFactory.get_instance()
    assert factory is zb.DuplexChannelFactory.get_instance()
    server = factory.create_immutable_server(name, zb.BufferConfig(4096,
                                                                   1 << 20))
    inits = []
    server.start(lambda frame, writer: writer.write_frame(frame.data),
                 on_init=lambda md: inits.append(bytes(md)))
    assert server.is_running
    with pytest.raises(zb.ZeroBufferException):
        server.start(lambda f, w: None)
    try:
        with factory.create_client(name) as client:
            client._request_writer.set_metadata(b"hello-server")
            for size in (1, 1024, 102400):
                payload = os.urandom(size)
                seq = client.send_request(payload)
                resp = client.receive_response(5000)
                assert resp.is_valid and resp.sequence == seq
                assert resp.to_bytes() == payload and len(resp) == size
                client.release_response(resp)
            seq, buf = client.acquire_request_buffer(4096)
            buf[:] = bytes(range(256)) * 16
            client.commit_request()
            with client.receive_response(5000) as resp:
                assert resp.sequence == seq == 4
                assert bytes(resp.data) == bytes(range(256)) * 16
            assert client.is_server_connected
            assert inits == [b"hello-server"]
    finally:
        server.stop()
    assert not server.is_running
    assert not os.path.exists(f"/dev/shm/{name}_request")


def test_duplex_modes_and_errors(name):
    factory = zb.DuplexChannelFactory()
    server = factory.create_immutable_server(name, zb.BufferConfig(64, 4096),
                                             timeout=1.0)
    with pytest.raises(NotImplementedError):
        server.start(lambda f, w: None, mode=zb.ProcessingMode.THREAD_POOL)
    with pytest.raises(NotImplementedError):
        factory.create_mutable_server(name, zb.BufferConfig())
    with pytest.raises(zb.ZeroBufferException):
        factory.create_client(name)  # no server yet
    errors = []
    server.add_error_handler(errors.append)

    def handler(frame, writer):
        if bytes(frame.data) == b"boom":
            raise RuntimeError("handler failed")
        writer.write_frame(bytes(frame.data).upper())

    server.start(handler)
    try:
        client = factory.create_client(name)
        client.send_request(b"boom")
        client.send_request(b"ok")
        resp = client.receive_response(5000)
        assert resp.to_bytes() == b"OK"
        assert isinstance(errors[0], zb.ErrorEventArgs)
        assert "handler failed" in str(errors[0].exception)
        client.close()
        with pytest.raises(zb.ZeroBufferException):
            client.send_request(b"x")
        assert client.receive_response is not None
    finally:
        server.stop()


def test_modes_and_cleanup_by_garbage_collection(name):
    r = zb.Reader(name, zb.BufferConfig(64, 1024))
    assert os.stat(f"/dev/shm/{name}").st_mode & 0o777 == 0o600
    assert os.stat(f"/dev/shm/sem.sem-w-{name}").st_mode & 0o777 == 0o600
    del r
    gc.collect()
    assert not os.path.exists(f"/dev/shm/{name}")
    assert not os.path.exists(f"/tmp/zerobuffer/{name}.lock")
    with zb.Reader(name, zb.BufferConfig(64, 1024), mode=0o666):
        assert os.stat(f"/dev/shm/{name}").st_mode & 0o777 == 0o666
        assert os.stat(f"/dev/shm/sem.sem-r-{name}").st_mode & 0o777 == 0o666
    with pytest.raises(ValueError):
        zb.Reader(name, mode=0o7777)


def test_many_reading_threads_share_one_reader(name):
    n = 3000
    seen = []
    lock = threading.Lock()
    with zb.Reader(name, zb.BufferConfig(64, 8192)) as r, \
            zb.Writer(name) as w:
        def consume():
            while True:
                try:
                    f = r.read_frame(timeout=0.5)
                except zb.WriterDeadException:
                    return
                if f is None:
                    continue
                k = int.from_bytes(f.data, "little")
                with lock:
                    seen.append((f.sequence, k))
                f.dispose()
        ts = [threading.Thread(target=consume) for _ in range(3)]
        for t in ts:
            t.start()
        for i in range(1, n + 1):
            w.write_frame(i.to_bytes(4, "little"))
        w.close()
        for t in ts:
            t.join(20)
        assert not any(t.is_alive() for t in ts)
    assert sorted(seen) == [(i, i) for i in range(1, n + 1)]
