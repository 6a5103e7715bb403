"""Interop with the real peer, zerobuffer-ipc from PyPI (module
``zerobuffer``, on posix_ipc), in separate processes: our Reader with
their Writer and their Reader with our Writer (metadata, 10,000 frames of
mixed sizes with wrap-arounds, sequences, CRC32 of every frame), duplex
channels across implementations, and the peer's known defects shown as
strict xfails next to a test that our side handles the same case."""
import importlib
import os
import random
import subprocess
import zlib

import pytest

import dispatchkit.zerobuffer as zb
from zb_helpers import child, finish, name  # noqa: F401

peer = importlib.import_module("zerobuffer")

RING = 64 * 1024
FRAMES = 10_000

# The stream both sides generate: (size, bytes) per frame, from a seed.
# For a peer writer, sizes are nudged so that no frame ends exactly at the
# ring end (the peer writer fails on the next write after that; see
# test_peer_writer_exact_fill_defect), tracking where the peer writes.
STREAM = """
import random, zlib
def stream(seed, n, ring, avoid_exact_fill):
    rng = random.Random(seed)
    pos = 0
    for i in range(n):
        size = rng.choice([rng.randint(1, 64), rng.randint(1, 4096),
                           rng.randint(4096, ring // 2 - 16)])
        if avoid_exact_fill and i % 40 == 0:
            # Leave a 1..15-byte tail at the ring end, as peers do.
            fit = ring - (pos if ring - pos >= 17 else 0) - 16
            fit -= rng.randint(1, 15)
            if 1 <= fit <= ring // 2 - 16:
                size = fit
        while avoid_exact_fill:
            t = 16 + size
            p = 0 if ring - pos < t else pos
            if p + t != ring:
                break
            size += 1
        if avoid_exact_fill:
            pos = p + t
        yield size, rng.randbytes(size)
"""
exec(STREAM)


def check_stream(read_frame, seed, avoid_exact_fill):
    crc = 0
    for seq, (size, data) in enumerate(
            stream(seed, FRAMES, RING, avoid_exact_fill), 1):
        f = read_frame()
        assert f is not None, f"frame {seq} missing"
        assert f.sequence == seq
        assert f.size == size
        got = bytes(f.data)
        assert zlib.crc32(got) == zlib.crc32(data), f"frame {seq} differs"
        crc = zlib.crc32(got, crc)
        f.dispose()
    return crc


PEER_WRITER = """
import sys, zlib, zerobuffer
w = zerobuffer.Writer(sys.argv[1])
w.set_metadata(b"peer metadata \\x00\\x01")
crc = 0
for size, data in stream(int(sys.argv[2]), int(sys.argv[3]),
                         int(sys.argv[4]), True):
    w.write_frame(data)
    crc = zlib.crc32(data, crc)
w.close()
print(crc)
"""


def test_peer_writer_to_our_reader(name):
    short_tails = 0
    pos = 0
    for size, _ in stream(11, FRAMES, RING, True):
        t = 16 + size
        if RING - pos < t:
            short_tails += 0 < RING - pos < 16
            pos = 0
        pos += t
    assert short_tails > 0  # the peer leaves tails no header fits in

    with zb.Reader(name, zb.BufferConfig(1024, RING)) as r:
        p = child(PEER_WRITER, name, 11, FRAMES, RING, prelude=STREAM)
        try:
            crc = check_stream(lambda: r.read_frame(timeout=20), 11, True)
            assert bytes(r.get_metadata()) == b"peer metadata \x00\x01"
            # The peer closed: we are told once everything was read.
            with pytest.raises(zb.WriterDeadException):
                r.read_frame(timeout=20)
        finally:
            out = finish(p)
        assert int(out) == crc
        assert r.frames_read == FRAMES


OUR_WRITER = """
import sys, zlib
import dispatchkit.zerobuffer as zb
w = zb.Writer(sys.argv[1])
w.set_metadata(b"our metadata")
crc = 0
for i, (size, data) in enumerate(stream(int(sys.argv[2]), int(sys.argv[3]),
                                        int(sys.argv[4]), False)):
    if i % 2:
        w.write_frame(data)
    else:
        buf = w.get_frame_buffer(size)
        buf[:] = data
        w.commit_frame()
    crc = zlib.crc32(data, crc)
w.close()
print(crc)
"""


def test_our_writer_to_peer_reader(name):
    r = peer.Reader(name, peer.BufferConfig(1024, RING))
    try:
        p = child(OUR_WRITER, name, 12, FRAMES, RING, prelude=STREAM)
        try:
            crc = check_stream(lambda: r.read_frame(timeout=20.0), 12, False)
            assert bytes(r.get_metadata()) == b"our metadata"
        finally:
            out = finish(p)
        assert int(out) == crc
    finally:
        r.close()


BIG_WRITER = """
import sys, zlib
import dispatchkit.zerobuffer as zb
w = zb.Writer(sys.argv[1])
crc = 0
for i in range(int(sys.argv[2])):
    data = bytes([i]) * 7 + random.Random(i).randbytes(6 * 2**20 + i * 13)
    w.write_frame(data)
    crc = zlib.crc32(data, crc)
w.close()
print(crc)
"""


def test_our_writer_large_frames_to_peer_reader(name):
    """Frames of 6 MiB into a 32 MiB ring: our writer copies them in with
    non-temporal stores (docs/zerobuffer.md), and the peer's reader gets
    every byte, across wraps."""
    n = 9
    r = peer.Reader(name, peer.BufferConfig(1024, 32 * 2**20))
    try:
        p = child(BIG_WRITER, name, n, prelude="import random\n")
        try:
            crc = 0
            for i in range(n):
                f = r.read_frame(timeout=20.0)
                assert f is not None and f.sequence == i + 1
                want = (bytes([i]) * 7 +
                        random.Random(i).randbytes(6 * 2**20 + i * 13))
                got = bytes(f.data)
                assert got == want, f"frame {i + 1} differs"
                crc = zlib.crc32(got, crc)
                r.release_frame(f)
        finally:
            out = finish(p)
        assert int(out) == crc
    finally:
        r.close()


def test_our_reader_after_peer_reader_leaked_semaphores(name):
    r = peer.Reader(name, peer.BufferConfig(64, 4096))
    r.close()
    # zerobuffer-ipc's Reader.close() leaves its semaphores behind ...
    leaked = os.path.exists(f"/dev/shm/sem.sem-w-{name}")
    # ... which we replace; and we remove ours on close.
    with zb.Reader(name, zb.BufferConfig(64, 4096)) as ours, \
            peer.Writer(name) as w:
        w.write_frame(b"after a leak")
        assert bytes(ours.read_frame(timeout=5).data) == b"after a leak"
    assert not os.path.exists(f"/dev/shm/sem.sem-w-{name}")
    assert leaked in (True, False)


def frame_then_more(writer, reader, size, then):
    """A frame of size bytes from the start of a 1024-byte ring, read,
    then a frame `then` that wraps: it arrives whole, second."""
    writer.write_frame(bytes(size))
    f = reader.read_frame(timeout=5)
    assert f.size == size
    f.dispose()
    writer.write_frame(then)
    g = reader.read_frame(timeout=5)
    assert bytes(g.data) == then and g.sequence == 2
    g.dispose()


def exact_fill_then_more(writer, reader):
    # 16 + 1008 = the whole ring.
    frame_then_more(writer, reader, 1008, b"after exact fill")


@pytest.mark.xfail(strict=True, raises=ValueError,
                   reason="zerobuffer-ipc defect: its Writer cannot write "
                          "after a frame that fills the ring exactly "
                          "('Invalid write range'); ours does not: "
                          "test_our_writer_exact_fill_with_both_readers")
def test_peer_writer_exact_fill_defect(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            peer.Writer(name) as w:
        exact_fill_then_more(w, r)


def test_our_writer_exact_fill_with_both_readers(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            zb.Writer(name) as w:
        exact_fill_then_more(w, r)
    r = peer.Reader(name, peer.BufferConfig(64, 1024))
    try:
        with zb.Writer(name) as w:
            exact_fill_then_more(w, r)
    finally:
        r.close()


def short_tail_then_more(writer, reader):
    # 16 + 998 = 1014 bytes from offset 0 leave a 10-byte tail that no
    # writer can mark; the next frame wraps without a marker.
    frame_then_more(writer, reader, 998, b"after a short tail")


@pytest.mark.xfail(strict=True, raises=ValueError,
                   reason="zerobuffer-ipc defect: its Reader cannot skip a "
                          "1..15-byte tail at the ring end ('Invalid read "
                          "range'); ours does not: "
                          "test_our_reader_handles_peer_short_tail")
def test_peer_reader_short_tail_defect(name):
    r = peer.Reader(name, peer.BufferConfig(64, 1024))
    try:
        with peer.Writer(name) as w:
            short_tail_then_more(w, r)
    finally:
        r.close()


def test_our_reader_handles_peer_short_tail(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r, \
            peer.Writer(name) as w:
        short_tail_then_more(w, r)


@pytest.mark.xfail(strict=True, raises=peer.WriterDeadException,
                   reason="zerobuffer-ipc defect: read_frame() raises "
                          "WriterDeadException on a timeout before any "
                          "writer ever connected; ours returns None: "
                          "test_our_reader_no_writer_yet_is_a_timeout")
def test_peer_reader_no_writer_yet_defect(name):
    r = peer.Reader(name, peer.BufferConfig(64, 1024))
    try:
        assert r.read_frame(timeout=0.05) is None
    finally:
        r.close()


def test_our_reader_no_writer_yet_is_a_timeout(name):
    with zb.Reader(name, zb.BufferConfig(64, 1024)) as r:
        assert r.read_frame(timeout=0.05) is None


PEER_SERVER = """
import sys, time, zerobuffer
from zerobuffer.duplex import DuplexChannelFactory
server = DuplexChannelFactory.get_instance().create_immutable_server(
    sys.argv[1], zerobuffer.BufferConfig(4096, 1 << 20), timeout=1.0)
def handler(frame, writer):
    writer.write_frame(bytes(b ^ 0xFF for b in bytes(frame.data)))
server.start(handler)
deadline = time.monotonic() + 30
while server.request_reader is None and time.monotonic() < deadline:
    time.sleep(0.01)
print("ready", flush=True)
sys.stdin.readline()
server.stop()
"""


def test_our_client_peer_server(name):
    p = child(PEER_SERVER, name, stdin=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == b"ready", p.stderr.read()
        client = zb.DuplexChannelFactory.get_instance().create_client(name)
        try:
            rng = random.Random(3)
            for i in range(1, 21):
                payload = rng.randbytes(rng.randint(1, 10240))
                seq = client.send_request(payload)
                assert seq == i
                with client.receive_response(10000) as resp:
                    assert resp.sequence == seq
                    assert resp.to_bytes() == bytes(b ^ 0xFF
                                                    for b in payload)
            assert client.is_server_connected
        finally:
            client.close()
        p.stdin.write(b"stop\n")
        p.stdin.flush()
        assert p.wait(20) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait(10)


PEER_CLIENT = """
import sys, random, zerobuffer
from zerobuffer.duplex import DuplexChannelFactory
client = DuplexChannelFactory.get_instance().create_client(sys.argv[1])
rng = random.Random(4)
for i in range(20):
    payload = rng.randbytes(rng.randint(1, 10240))
    seq = client.send_request(payload)
    resp = client.receive_response(10000)
    assert resp.is_valid and resp.sequence == seq, (resp.sequence, seq)
    assert resp.to_bytes() == payload[::-1]
    client.release_response(resp)
client.close()
print("done")
"""


def test_peer_client_our_server(name):
    server = zb.DuplexChannelFactory.get_instance().create_immutable_server(
        name, zb.BufferConfig(4096, 1 << 20), timeout=20.0)
    server.start(lambda frame, writer: writer.write_frame(
        bytes(frame.data)[::-1]))
    try:
        p = child(PEER_CLIENT, name)
        assert finish(p).strip() == "done"
    finally:
        server.stop()


# ---- the peer's API, spelled as its users spell it -------------------------

def test_methods_take_the_peers_parameter_names():
    # A call such as writer.get_frame_buffer(size=4000) (the peer's README)
    # works only if every parameter has the peer's name.
    import inspect
    for cls in ("Reader", "Writer"):
        for name, fn in vars(getattr(peer, cls)).items():
            if name.startswith("_") or not inspect.isfunction(fn):
                continue
            want = list(inspect.signature(fn).parameters)[1:]
            ours = getattr(getattr(zb, cls), name)
            got = [p for p in inspect.signature(ours).parameters
                   if p != "self"]
            assert got[:len(want)] == want, f"{cls}.{name}"


def test_seed_readme_examples(name):
    # The seed's Reader, Writer and zero-copy examples, keyword arguments
    # included (array.array stands in for the numpy array).
    import array
    config = zb.BufferConfig(metadata_size=1024, payload_size=1024 * 1024)
    with zb.Reader(name, config) as reader:
        with zb.Writer(name) as writer:
            metadata = b"{'format': 'raw', 'version': 1}"
            writer.set_metadata(metadata)
            for i in range(100):
                writer.write_frame(f"Frame {i}".encode())
            arr = array.array("f", range(1000))
            view = memoryview(arr)
            writer.write_frame_zero_copy(view)
            buffer = writer.get_frame_buffer(size=4000)
            buffer[:] = arr.tobytes()
            writer.commit_frame()
            writer.write_frame(data=b"by keyword")
        assert bytes(reader.get_metadata()) == metadata
        got = []
        while True:
            frame = reader.read_frame(timeout=5.0)
            if frame is None:
                break
            got.append((frame.sequence, bytes(frame.data)))
            reader.release_frame(frame=frame)
            if len(got) == 103:
                break
    assert [s for s, _ in got] == list(range(1, 104))
    assert [d for _, d in got[:100]] == [f"Frame {i}".encode()
                                         for i in range(100)]
    assert got[100][1] == got[101][1] == arr.tobytes()
    assert got[102][1] == b"by keyword"



def test_types_module_has_every_public_name_of_the_peers():
    # zerobuffer-ipc's own test helpers do `from zerobuffer.types import
    # Frame, BufferConfig`; the same import must work against ours.
    import inspect

    import dispatchkit.zerobuffer.types as ours
    peer_types = importlib.import_module("zerobuffer.types")
    public = [n for n, v in vars(peer_types).items()
              if not n.startswith("_") and
              getattr(v, "__module__", peer_types.__name__) ==
              peer_types.__name__ and
              (inspect.isclass(v) or inspect.isfunction(v) or n.isupper())]
    assert "Frame" in public
    missing = [n for n in public if not hasattr(ours, n)]
    assert missing == []
    assert ours.Frame is zb.Frame
