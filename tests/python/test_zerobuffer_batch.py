"""The batch interface of dispatchkit.zerobuffer (ours, beyond the seed's
API): Writer.write_frames(), Reader.read_frames() and
Reader.release_frames(). Bad input, wrap-around of the ring, a batch that
does not fit in the ring, waits that release the GIL, and interop with the
real zerobuffer-ipc package, which writes and reads frame by frame."""
import random
import threading
import time
import zlib
from datetime import timedelta

import pytest

import dispatchkit.zerobuffer as zb
from zb_helpers import child, finish, name, segment  # noqa: F401


def frames_of(seed, n, top):
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, top)) for _ in range(n)]


def test_batch_roundtrip(name):
    with zb.Reader(name, zb.BufferConfig(64, 64 * 1024)) as r, \
            zb.Writer(name) as w:
        assert w.write_frames([b"one", bytearray(b"two"),
                               memoryview(b"three")]) == 3
        assert w.write_frames(iter([b"four"])) == 1
        assert w.write_frames([]) == 0
        assert w.write_frames(()) == 0
        assert w.frames_written == 4 and w.bytes_written == 15
        got = r.read_frames(2, timeout=1)
        assert [bytes(f.data) for f in got] == [b"one", b"two"]
        assert [f.sequence for f in got] == [1, 2]
        rest = r.read_frames(max_frames=100, timeout=1)
        assert [(f.sequence, bytes(f)) for f in rest] == [
            (3, b"three"), (4, b"four")]
        r.release_frames(got + rest)
        assert not any(f.is_valid for f in got + rest)
        r.release_frames(got)  # releasing again is no error
        assert r.read_frames(10, timeout=0) == []
        assert r.read_frames(10, timeout=0.01) == []
        # Frame by frame and by batch mix on both sides.
        w.write_frame(b"five")
        w.write_frames([b"six"])
        f = r.read_frame(timeout=1)
        assert (f.sequence, bytes(f)) == (5, b"five")
        f.dispose()
        (g,) = r.read_frames(5, timeout=1)
        assert (g.sequence, bytes(g)) == (6, b"six")
        g.dispose()
        assert r.frames_read == 6


def test_batch_bad_input_writes_nothing(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        with pytest.raises(TypeError):
            w.write_frames(123)
        with pytest.raises(TypeError):
            w.write_frames([b"ok", 5])
        with pytest.raises(TypeError):
            w.write_frames([b"ok", "text is not bytes"])
        with pytest.raises(zb.InvalidFrameSizeException, match="frame 1"):
            w.write_frames([b"ok", b"", b"ok"])
        with pytest.raises(zb.FrameTooLargeException, match="frame 2"):
            w.write_frames([b"ok", b"ok", bytes(1024 - 15)])
        with pytest.raises(TypeError):
            w.write_frames()
        # Nothing of any of those batches was written.
        assert w.frames_written == 0
        assert r.read_frames(10, timeout=0) == []
        # The largest frame fits.
        assert w.write_frames([bytes(1024 - 16)]) == 1
        r.read_frames(1, timeout=1)[0].dispose()

        with pytest.raises(ValueError):
            r.read_frames(0)
        with pytest.raises(ValueError):
            r.read_frames(-5)
        with pytest.raises(TypeError):
            r.read_frames("3")
        with pytest.raises(TypeError):
            r.read_frames(2.0)
        with pytest.raises(TypeError):
            r.read_frames(True)
        with pytest.raises(TypeError):
            r.read_frames()
        with pytest.raises(TypeError):
            r.read_frames(1, timeout="soon")
        with pytest.raises(ValueError):
            r.read_frames(1, timeout=float("nan"))
        with pytest.raises(TypeError):
            r.release_frames(5)
        # A huge max_frames is only an upper bound.
        w.write_frames([b"a", b"b"])
        got = r.read_frames(10**30, timeout=1)
        assert [bytes(f) for f in got] == [b"a", b"b"]

        # A frame of another reader: refused before anything is released.
        with zb.Reader(name + "-2", zb.BufferConfig(64, 1024)) as r2, \
                zb.Writer(name + "-2") as w2:
            w2.write_frame(b"x")
            other = r2.read_frame(timeout=1)
            with pytest.raises(ValueError, match="another reader"):
                r.release_frames([got[0], other])
            assert got[0].is_valid and other.is_valid
            r.release_frames(got)
            r2.release_frames([other])
        assert not got[0].is_valid

        # A reservation from get_frame_buffer() waiting for its commit.
        buf = w.get_frame_buffer(4)
        buf[:] = b"resv"
        with pytest.raises(zb.ZeroBufferException, match="commit"):
            w.write_frames([b"batch"])
        del buf
        w.commit_frame()
        assert bytes(r.read_frames(5, timeout=1)[0]) == b"resv"
    # Closed objects.
    with pytest.raises(zb.ZeroBufferException):
        w.write_frames([b"late"])
    with pytest.raises(zb.ZeroBufferException):
        r.read_frames(1, timeout=0)


def test_batch_wraps_around_the_ring(name):
    """Batches of mixed sizes through a 1 KiB ring, many times round it:
    wrap markers, tails too short for a marker, and an exact fill inside
    one batch."""
    rng = random.Random(5)
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        # From an empty ring: two frames that end exactly at the ring end,
        # then one that starts again at 0 (no marker, nothing wasted).
        exact = [bytes([1]) * 496, bytes([2]) * 496, b"again at 0"]
        assert w.write_frames(exact[:2]) == 2
        got = r.read_frames(5, timeout=1)
        seen = [bytes(f) for f in got]
        r.release_frames(got)
        assert w.write_frames(exact[2:]) == 1
        got = r.read_frames(5, timeout=1)
        assert seen + [bytes(f) for f in got] == exact
        r.release_frames(got)
        seq, total = 3, 0
        for _ in range(400):
            batch = [rng.randbytes(rng.choice([1, 15, 17, 100, 200]))
                     for _ in range(rng.randint(1, 3))]
            assert w.write_frames(batch) == len(batch)
            got = r.read_frames(len(batch) + 3, timeout=1)
            assert [bytes(f) for f in got] == batch
            assert [f.sequence for f in got] == list(
                range(seq + 1, seq + 1 + len(batch)))
            seq += len(batch)
            total += sum(16 + len(b) for b in batch)
            r.release_frames(got)
        assert total > 40 * 1024  # round the ring forty times and more
        assert w.frames_written == r.frames_read == seq


def test_batch_larger_than_the_ring_goes_through(name):
    """A batch that does not fit in the ring: the writer publishes what
    fits, waits for the reader to free space, and goes on."""
    frames = frames_of(3, 200, 500)
    assert sum(16 + len(f) for f in frames) > 8 * 4096
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as r, \
            zb.Writer(name) as w:
        done = []
        t = threading.Thread(target=lambda: done.append(
            w.write_frames(frames)))
        t.start()
        got = []
        while len(got) < len(frames):
            batch = r.read_frames(7, timeout=10)
            assert batch, "the writer stalled"
            got += [(f.sequence, bytes(f)) for f in batch]
            r.release_frames(batch)
        t.join(10)
        assert done == [200]
        assert got == list(enumerate(frames, 1))


def test_batch_that_does_not_fit_fails_after_write_timeout(name):
    """Nobody reads: the frames that fit are written (and readable), the
    rest of the batch fails with BufferFullException after write_timeout."""
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        w.write_timeout = timedelta(milliseconds=50)
        batch = [bytes([i]) * 300 for i in range(1, 6)]  # 3 fit in 1024
        with pytest.raises(zb.BufferFullException):
            w.write_frames(batch)
        assert w.frames_written == 3
        got = r.read_frames(10, timeout=1)
        assert [bytes(f) for f in got] == batch[:3]
        r.release_frames(got)
        assert w.write_frames(batch[3:]) == 2
        assert [bytes(f) for f in r.read_frames(10, timeout=1)] == batch[3:]


def test_batch_reader_gone_mid_batch(name):
    r = zb.Reader(name, zb.BufferConfig(64, 1024))
    w = zb.Writer(name)
    try:
        w.write_frames([bytes(400), bytes(400)])
        r.close()
        with pytest.raises(zb.ReaderDeadException):
            w.write_frames([bytes(400), bytes(400)])
    finally:
        w.close()
        r.close()


def test_batch_waits_release_the_gil(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        got = []
        t = threading.Thread(target=lambda: got.append(
            r.read_frames(4, timeout=5.0)))
        t.start()
        time.sleep(0.05)  # the reader is now blocked in read_frames
        w.write_frames([b"wake"])  # runs only if the reader let go
        t.join(10)
        assert [bytes(f) for f in got[0]] == [b"wake"]
        r.release_frames(got[0])

    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        w.write_frame(bytes(1000))
        done = []
        t = threading.Thread(target=lambda: done.append(
            w.write_frames([bytes(400), bytes(400)])))
        t.start()
        time.sleep(0.05)
        r.read_frame(timeout=1).dispose()  # makes room for the writer
        t.join(10)
        assert done == [2]


def test_threads_share_one_writer_batches_stay_whole(name):
    """Threads writing batches and single frames through one Writer: one
    thread at a time, so each batch's frames are consecutive. The ring is
    small, so writers also wait for space (with the GIL released) while
    others queue for the writer."""
    import struct
    n_threads, per = 4, 150
    with zb.Reader(name, zb.BufferConfig(64, 2048)) as r, \
            zb.Writer(name) as w:
        def produce(k):
            for i in range(per):
                if i % 3:
                    w.write_frames([struct.pack("<III", k, i, j)
                                    for j in range(5)])
                else:
                    w.write_frame(struct.pack("<III", k, i, 99))
        ts = [threading.Thread(target=produce, args=(k,))
              for k in range(n_threads)]
        for t in ts:
            t.start()
        got = []
        total = n_threads * sum(5 if i % 3 else 1 for i in range(per))
        while len(got) < total:
            frames = r.read_frames(16, timeout=10)
            assert frames, "the writers stalled"
            got += [(f.sequence, struct.unpack("<III", f.data))
                    for f in frames]
            r.release_frames(frames)
        for t in ts:
            t.join(10)
        assert [s for s, _ in got] == list(range(1, total + 1))
        pos = 0
        last = {}
        while pos < len(got):
            k, i, j = got[pos][1]
            assert last.get(k, -1) == i - 1  # each thread in order
            last[k] = i
            if j == 99:
                pos += 1
            else:  # a whole batch, nothing in between
                assert [got[pos + m][1] for m in range(5)] == [
                    (k, i, m) for m in range(5)]
                pos += 5
        assert last == {k: per - 1 for k in range(n_threads)}


def test_batch_reader_reports_an_error_after_the_good_frames(name):
    """A bad frame in the middle of what is there: the good frames before
    it come back, the error comes with the next call (nothing of the bad
    frame is consumed), and again until the segment is fixed."""
    import struct
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        w.write_frames([b"aaaa", b"bbbb", b"cccc"])
        seg = segment(name)
        ring = 128 + 64
        second = ring + 16 + 4
        good = seg[second + 8:second + 16]
        struct.pack_into("<Q", seg, second + 8, 9)  # wrong sequence
        got = r.read_frames(10, timeout=1)
        assert [bytes(f) for f in got] == [b"aaaa"]
        with pytest.raises(zb.SequenceError):
            r.read_frames(10, timeout=1)
        with pytest.raises(zb.SequenceError):
            r.read_frames(10, timeout=1)
        seg[second + 8:second + 16] = good
        assert [bytes(f) for f in r.read_frames(10, timeout=1)] == [
            b"bbbb", b"cccc"]
        seg.close()


peer = pytest.importorskip("zerobuffer")

# Batches of our writer, read frame by frame by zerobuffer-ipc's Reader
# (which waits for one semaphore token per frame, so a batch must post
# one per frame), through a small ring that wraps often.
OUR_BATCH_WRITER = """
import random, sys, zlib
import dispatchkit.zerobuffer as zb
w = zb.Writer(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
n, ring = int(sys.argv[3]), int(sys.argv[4])
crc, pos, sent = 0, 0, 0
while sent < n:
    batch = []
    for _ in range(min(rng.randint(1, 9), n - sent)):
        size = rng.randint(1, 900)
        batch.append(rng.randbytes(size))
    w.write_frames(batch)
    for data in batch:
        crc = zlib.crc32(data, crc)
    sent += len(batch)
w.close()
print(crc)
"""

PEER_WRITER = """
import random, sys, zlib, zerobuffer
w = zerobuffer.Writer(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
n, ring = int(sys.argv[3]), int(sys.argv[4])
crc, pos = 0, 0
for _ in range(n):
    size = rng.randint(1, 900)
    # zerobuffer-ipc's writer fails after a frame that ends exactly at
    # the ring end: avoid those.
    t = 16 + size
    p = 0 if ring - pos < t else pos
    if p + t == ring:
        size += 1
        t += 1
        p = 0 if ring - pos < t else pos
    pos = p + t
    data = rng.randbytes(size)
    w.write_frame(data)
    crc = zlib.crc32(data, crc)
w.close()
print(crc)
"""


def test_our_batches_to_peer_reader(name):
    ring, n = 4096, 3000
    r = peer.Reader(name, peer.BufferConfig(64, ring))
    try:
        p = child(OUR_BATCH_WRITER, name, 21, n, ring)
        crc = 0
        try:
            for seq in range(1, n + 1):
                f = r.read_frame(timeout=20.0)
                assert f is not None, f"frame {seq} missing"
                assert f.sequence == seq
                crc = zlib.crc32(bytes(f.data), crc)
                f.dispose()
        finally:
            out = finish(p)
        assert int(out) == crc
    finally:
        r.close()


def test_peer_frames_to_our_batch_reader(name):
    ring, n = 4096, 3000
    with zb.Reader(name, zb.BufferConfig(64, ring)) as r:
        p = child(PEER_WRITER, name, 22, n, ring)
        crc, seq = 0, 0
        try:
            while seq < n:
                got = r.read_frames(16, timeout=20)
                assert got, f"frame {seq + 1} missing"
                for f in got:
                    seq += 1
                    assert f.sequence == seq
                    crc = zlib.crc32(bytes(f.data), crc)
                r.release_frames(got)
            with pytest.raises(zb.WriterDeadException):
                r.read_frames(16, timeout=20)
        finally:
            out = finish(p)
        assert int(out) == crc
