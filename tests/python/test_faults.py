"""Fault injection: real processes SIGKILLed at random points (seeded
random delays, several rounds each) while they hold a mutex, wait on a
semaphore, write or read zerobuffer frames, or run queue work that takes a
mutex. The survivors must detect the death within their timeouts, never
see torn or unchecked data, and carry on.

Every round records what the victim was doing when it died, and the
checks are exact for each case (the mutex's own state word says whether
the victim died holding it), so a round cannot pass vacuously. Set
DK_FAULT_SEED to replay a run; the seed is in every failure message."""
import os
import random
import signal
import struct
import threading
import time
import traceback
import zlib
from multiprocessing import shared_memory

import pytest

import dispatchkit as dk
import dispatchkit.sync as sync
import dispatchkit.zerobuffer as zb
from children import reap_or_kill
from shm_names import unlink_all, zerobuffer_paths

SEED = int(os.environ.get("DK_FAULT_SEED", str(time.time_ns() % 100_000)))
WAIT_NS = 20_000_000_000  # generous: a loaded 2-core machine


def fork(fn, *args):
    """Run fn(*args) in a forked child that never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid, timeout=30):
    """Wait for pid to be gone; its wait status."""
    status = reap_or_kill(pid, timeout)
    if status is None:
        raise AssertionError(f"child {pid} did not exit")
    return status


def kill(pid):
    os.kill(pid, signal.SIGKILL)
    status = reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def until(cond, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def close_shm(shm):
    """Unlink shm; close it unless a failed assertion's traceback still
    holds a view of it."""
    shm.unlink()
    try:
        shm.close()
    except BufferError:
        pass


def unlink_buffer(name):
    """What a failed zerobuffer round may leave behind."""
    unlink_all(zerobuffer_paths(name))


def spin(n):
    for _ in range(n):
        pass


# ---- mutex holders ------------------------------------------------------
#
# Shared memory: [0:64] the Mutex (Mutex case), then u64 words: COUNTER
# (incremented under the mutex, in two steps with work between), COMMITTED
# (the counter value the holder finished), HOLDING (1 from just after
# acquire to just before release).

COUNTER, COMMITTED, HOLDING = 0, 1, 2
DATA = 64


def _critical(mtx, words, rng):
    mtx.acquire()
    words[HOLDING] = 1
    c = words[COUNTER]
    spin(rng.randrange(200))
    words[COUNTER] = c + 1
    spin(rng.randrange(200))
    words[COMMITTED] = c + 1
    words[HOLDING] = 0
    mtx.release()


def _mutex_and_words(kind, shm, name):
    """The mutex under test (in the segment, or fastipc's named one) and
    the words its critical section updates."""
    if kind == "Mutex":
        mtx = sync.Mutex(shm.buf[:64])
    else:
        mtx = sync.NamedMutex(name)
    return mtx, shm.buf[DATA:DATA + 24].cast("Q")


def _mutex_child(kind, shm, name, seed):
    rng = random.Random(seed)
    mtx, words = _mutex_and_words(kind, shm, name)
    while True:
        _critical(mtx, words, rng)
        spin(rng.randrange(400))


def _mutex_state(kind, shm, name):
    """The mutex's futex word (+8): nonzero while anyone holds it."""
    if kind == "Mutex":
        return struct.unpack_from("<I", shm.buf, 8)[0]
    fd = os.open(f"/dev/shm/__pyfastipc_mutex_{name}", os.O_RDONLY)
    try:
        return struct.unpack("<I", os.pread(fd, 4, 8))[0]
    finally:
        os.close(fd)


def _check_recovery(mtx, state, words, seed, r):
    """The parent's view after the victim died: the acquire succeeds,
    owner_died says exactly whether the victim held the mutex, and the
    counter is what the victim committed (one more if it died between
    the two steps of its update)."""
    msg = f"seed {SEED}/{seed} round {r}"
    holding = words[HOLDING]
    counter, committed = words[COUNTER], words[COMMITTED]
    assert committed >= 1, msg  # the victim really ran
    assert mtx.acquire_ns(WAIT_NS) is True, msg
    held = state != 0
    assert mtx.owner_died is held, (msg, state, holding)
    if holding:
        assert held, msg
    if held:
        assert counter in (committed, committed + 1), (msg, counter,
                                                        committed)
    else:
        assert counter == committed, (msg, counter, committed)
    words[COUNTER] = words[COMMITTED] = counter + 1  # the survivor works on
    words[HOLDING] = 0
    mtx.release()
    assert mtx.try_acquire() is True and mtx.owner_died is False, msg
    mtx.release()
    return held


@pytest.mark.parametrize("kind", ["Mutex", "NamedMutex"])
def test_mutex_holder_killed_at_random_points(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTIPC_PID_DIR", str(tmp_path / "pids"))
    rng = random.Random(SEED)
    name = f"dkfault{os.getpid()}{kind}"
    shm = shared_memory.SharedMemory(create=True, size=128)
    try:
        mtx, words = _mutex_and_words(kind, shm, name)
        seen = {True: 0, False: 0}
        r = 0
        # At least 20 rounds, then on until the victim has died both
        # holding and not holding the mutex twice each (it holds it about
        # half the time, so 80 rounds make a miss astronomically rare).
        while r < 20 or (min(seen.values()) < 2 and r < 80):
            seed = rng.randrange(1 << 30)
            words[COUNTER] = words[COMMITTED] = words[HOLDING] = 0
            pid = fork(_mutex_child, kind, shm, name, seed)
            until(lambda: words[COMMITTED] >= 1, what="the victim to run")
            time.sleep(rng.uniform(0, 0.02))
            kill(pid)
            state = _mutex_state(kind, shm, name)
            seen[_check_recovery(mtx, state, words, seed, r)] += 1
            r += 1
        assert seen[True] >= 2 and seen[False] >= 2, (SEED, seen)
        print(f"{kind}: {r} kills, died holding {seen[True]}, "
              f"not holding {seen[False]}")
        del words
        if kind == "NamedMutex":
            mtx.close()
            # The dead children's PID files went with the last close.
            assert not os.path.exists(f"/dev/shm/__pyfastipc_mutex_{name}")
        del mtx
    finally:
        close_shm(shm)


# ---- a semaphore waiter killed -----------------------------------------

NWAITERS = 3


def _sem_waiter(shm, i):
    sem = sync.Semaphore(shm.buf[:64])
    words = shm.buf[64:64 + 8 * (NWAITERS + 1)].cast("Q")
    while not words[NWAITERS]:  # the stop flag
        if sem.wait(timeout_ns=50_000_000):
            words[i] += 1


def test_semaphore_waiter_killed_survivors_get_every_token():
    rng = random.Random(SEED + 1)
    shm = shared_memory.SharedMemory(create=True, size=256)
    try:
        for r in range(8):
            seed = rng.randrange(1 << 30)
            msg = f"seed {SEED} round {r}"
            shm.buf[:256] = bytes(256)
            sem = sync.Semaphore(shm.buf[:64], initial=0)
            words = shm.buf[64:64 + 8 * (NWAITERS + 1)].cast("Q")
            pids = [fork(_sem_waiter, shm, i) for i in range(NWAITERS)]
            victim = rng.randrange(NWAITERS)
            kill_at = rng.randrange(1, 60)
            posted = posted_after = 0
            for k in range(80):
                if k == kill_at:
                    kill(pids[victim])
                n = rng.randint(1, 3)
                sem.post(n)
                posted += n
                if k >= kill_at:
                    posted_after += n
                time.sleep(rng.uniform(0, 0.003))
            # The survivors drain every token left.
            until(lambda: sem.value() == 0, what=f"tokens taken ({msg})")
            words[NWAITERS] = 1
            for i, pid in enumerate(pids):
                if i != victim:
                    assert os.WEXITSTATUS(reap(pid)) == 0, msg
            got = sum(words[i] for i in range(NWAITERS))
            survivors = got - words[victim]
            # The victim may have taken one token and died before it
            # counted it; no other token may be missing.
            assert got in (posted, posted - 1), (msg, got, posted)
            assert survivors >= posted_after, (msg, survivors, posted_after)
            assert sem.value() == 0
            del words, sem
            print(f"round {r}: {posted} tokens, victim killed after post "
                  f"{kill_at}, survivors took {survivors}")
    finally:
        close_shm(shm)


# ---- zerobuffer writer killed ---------------------------------------------
#
# A frame: u64 stream index, u32 length, random bytes, u32 crc32 of all
# that precedes it. Frames are 20 .. 6,000 bytes in a 64 KiB ring.

RING = 64 * 1024


def make_frame(rng, i):
    size = rng.choice((20, 64, 300, 1000, 4000, rng.randrange(20, 6000)))
    head = struct.pack("<QI", i, size) + rng.randbytes(size - 16)
    return head + struct.pack("<I", zlib.crc32(head))


def check_frame(data, i):
    """The frame at stream index i is whole: index, length, checksum."""
    b = bytes(data)
    assert len(b) >= 16, len(b)
    idx, size = struct.unpack_from("<QI", b)
    assert (idx, size) == (i, len(b)), (idx, size, i, len(b))
    assert zlib.crc32(b[:-4]) == struct.unpack_from("<I", b, size - 4)[0]


def _zb_writer(name, shm, seed, self_kill_at):
    """Write checked frames forever, mixing write_frame and
    get_frame_buffer/commit_frame (filled in two halves). PHASE in shared
    memory says where it is; with self_kill_at it kills itself there
    between get_frame_buffer and commit_frame."""
    rng = random.Random(seed)
    w = zb.Writer(name)
    w.write_timeout = 30.0
    words = shm.buf[:16].cast("Q")  # [0] frames committed, [1] phase
    i = 0
    while True:
        frame = make_frame(rng, i)
        if rng.random() < 0.5:
            words[1] = 1
            w.write_frame(frame)
        else:
            words[1] = 2
            view = w.get_frame_buffer(len(frame))
            words[1] = 3  # reserved, not committed
            half = len(frame) // 2
            view[:half] = frame[:half]
            if 0 <= self_kill_at <= i:  # the first zero-copy frame there
                os.kill(os.getpid(), signal.SIGKILL)
            view[half:] = frame[half:]
            w.commit_frame()
        words[1] = 0
        i += 1
        words[0] = i


def test_zerobuffer_writer_killed_at_random_points():
    rng = random.Random(SEED + 2)
    name = f"dkfault-w-{os.getpid()}"
    shm = shared_memory.SharedMemory(create=True, size=64)
    phases = []
    try:
        for r in range(16):
            seed = rng.randrange(1 << 30)
            msg = f"seed {SEED} round {r}"
            shm.buf[:16] = bytes(16)
            words = shm.buf[:16].cast("Q")
            with zb.Reader(name, zb.BufferConfig(64, RING)) as reader:
                self_kill = r % 2 == 1
                pid = fork(_zb_writer, name, shm, seed,
                           rng.randrange(5, 300) if self_kill else -1)
                # Reaped as soon as it dies: a zombie is alive to
                # kill(pid, 0), so the reader would wait for it forever.
                statuses = []
                reaper = threading.Thread(
                    target=lambda: statuses.append(os.waitpid(pid, 0)[1]))
                reaper.start()
                kill_after = rng.randrange(1, 400)
                got = 0
                dead = False
                while True:
                    try:
                        f = reader.read_frame(timeout=20)
                    except zb.WriterDeadException:
                        dead = True
                        break
                    assert f is not None, f"death not detected ({msg})"
                    with f:
                        check_frame(f.data, got)
                    got += 1
                    if got == kill_after and not self_kill:
                        os.kill(pid, signal.SIGKILL)
                        phases.append(words[1])
                reaper.join(30)
                assert statuses and os.WIFSIGNALED(statuses[0]), msg
                if self_kill:
                    phases.append(words[1])
                    assert words[1] == 3, msg
                assert dead, msg
                # Every committed frame arrived, none more (one more only
                # if it died between commit_frame and counting it).
                assert got in (words[0], words[0] + 1), (msg, got, words[0])
                assert not reader.is_writer_connected()
                # A new writer takes the dead one's place.
                with zb.Writer(name) as w:
                    w.write_frame(b"after the crash")
                    f = reader.read_frame(timeout=20)
                    assert (f.sequence, bytes(f)) == (1, b"after the crash")
                    f.dispose()
                    check_stream(reader, w, rng, 30)
            del words
        names = {0: "between frames", 1: "in write_frame",
                 2: "in get_frame_buffer", 3: "reserved, not committed"}
        print("writer killed:", [names[p] for p in phases])
    finally:
        close_shm(shm)
        unlink_buffer(name)


def check_stream(reader, writer, rng, n):
    for i in range(n):
        writer.write_frame(make_frame(rng, i))
        f = reader.read_frame(timeout=20)
        assert f is not None
        with f:
            check_frame(f.data, i)


# ---- zerobuffer reader killed ---------------------------------------------

def _zb_reader(name, shm):
    """Read and check frames, holding up to 3 at a time."""
    words = shm.buf[:24].cast("Q")  # [0] ready, [1] frames, [2] errors
    r = zb.Reader(name, zb.BufferConfig(64, RING))
    words[0] = 1
    rng = random.Random(os.getpid())
    held = []
    i = 0
    while True:
        f = r.read_frame(timeout=30)
        if f is None:
            continue
        try:
            check_frame(f.data, i)
        except AssertionError:
            words[2] += 1
        held.append(f)
        i += 1
        words[1] = i
        while len(held) > rng.randrange(4):
            held.pop(0).dispose()


def test_zerobuffer_reader_killed_at_random_points():
    rng = random.Random(SEED + 3)
    name = f"dkfault-r-{os.getpid()}"
    shm = shared_memory.SharedMemory(create=True, size=64)
    try:
        for r in range(16):
            msg = f"seed {SEED} round {r}"
            shm.buf[:24] = bytes(24)
            words = shm.buf[:24].cast("Q")
            pid = fork(_zb_reader, name, shm)
            until(lambda: words[0] == 1, what="the reader")
            w = zb.Writer(name)
            w.write_timeout = 5.0
            kill_at = rng.randrange(1, 300)
            for i in range(kill_at):
                frame = make_frame(rng, i)
                if i % 2:
                    w.write_frame(frame)
                else:
                    view = w.get_frame_buffer(len(frame))
                    view[:] = frame
                    w.commit_frame()
            os.kill(pid, signal.SIGKILL)
            reap(pid)
            assert words[2] == 0, msg  # the reader saw only whole frames
            read_before = words[1]
            if r % 2 == 0:
                # Nobody frees space: the writer is told once it needs it.
                with pytest.raises(zb.ReaderDeadException):
                    for i in range(RING // 20 + 10):
                        w.write_frame(make_frame(rng, kill_at + i))
                assert not w.is_reader_connected(), msg
            # A replacement reader attaches while the old writer lives.
            with zb.Reader(name, zb.BufferConfig(64, RING)) as reader:
                with pytest.raises(zb.ReaderDeadException):
                    w.write_frame(b"to the dead reader's buffer")
                w.close()
                with zb.Writer(name) as w2:
                    check_stream(reader, w2, rng, 30)
            print(f"round {r}: reader killed after reading {read_before} "
                  f"of {kill_at} frames")
            del words
    finally:
        close_shm(shm)
        unlink_buffer(name)


# ---- queue work killed -------------------------------------------------------

def _queue_child(shm, seed):
    rng = random.Random(seed)
    mtx = sync.Mutex(shm.buf[:64])
    words = shm.buf[DATA:DATA + 24].cast("Q")
    conc = dk.Queue("faults.c", concurrent=True)
    serial = dk.Queue("faults.s")
    nested = dk.Queue("faults.n", target=serial)

    def work():
        _critical(mtx, words, rng)

    while True:
        for _ in range(50):
            conc.run_async(work)
            serial.run_async(work)
            nested.run_async(work)
        conc.barrier_sync(lambda: None)
        serial.run_sync(lambda: None)


def test_queue_work_killed_mutex_recovered():
    rng = random.Random(SEED + 4)
    shm = shared_memory.SharedMemory(create=True, size=128)
    q = dk.Queue("faults.parent")
    try:
        mtx = sync.Mutex(shm.buf[:64])
        words = shm.buf[DATA:DATA + 24].cast("Q")
        seen = {True: 0, False: 0}
        for r in range(12):
            seed = rng.randrange(1 << 30)
            words[COUNTER] = words[COMMITTED] = words[HOLDING] = 0
            pid = fork(_queue_child, shm, seed)
            until(lambda: words[COMMITTED] >= 1, what="the queue work")
            time.sleep(rng.uniform(0, 0.05))
            kill(pid)
            state = _mutex_state("Mutex", shm, None)
            seen[_check_recovery(mtx, state, words, seed, r)] += 1
            # The parent's own queues are unaffected.
            out = []
            q.run_sync(lambda: out.append(r))
            assert out == [r]
        print(f"queue work: 12 kills, died holding {seen[True]}, "
              f"not holding {seen[False]}")
        del words, mtx
    finally:
        close_shm(shm)


# ---- hostile file systems: truncation and a full /dev/shm ---------------

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402


def run_victim(code, timeout=60, env=None):
    """Run code in a fresh interpreter: a SIGBUS there fails the test
    instead of killing pytest. Returns (returncode, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                       capture_output=True, text=True, timeout=timeout,
                       env=env)
    return p.returncode, p.stdout, p.stderr


TRUNCATE_READER = """
import os, dispatchkit.zerobuffer as zb
name = "dk-trunc-r-%d" % os.getpid()
r = zb.Reader(name, zb.BufferConfig(0, 1 << 16))
w = zb.Writer(name)
for i in range(10):
    w.write_frame(bytes([i]) * 1000)
f = r.read_frame(timeout=5)
view = f.data
fd = os.open("/dev/shm/" + name, os.O_RDWR)
os.ftruncate(fd, {size})
os.close(fd)
# The frame's own view may lie in a lost page: reading must not kill us.
assert len(bytes(view)) == 1000
del view
f.dispose()
# Frames within the pages left are intact; the first one that reaches
# into a lost page is refused, and so is every later read.
for i in range(1, 10):
    try:
        f = r.read_frame(timeout=0.2)
    except zb.ZeroBufferException as e:
        print("reader:", e)
        break
    assert bytes(f.data) == bytes([i]) * 1000
    f.dispose()
else:
    raise SystemExit("read_frame after truncation did not raise")
try:
    r.read_frame(timeout=0.2)
except zb.ZeroBufferException:
    pass
else:
    raise SystemExit("the second read after truncation did not raise")
"""

TRUNCATE_WRITER = """
import os, dispatchkit.zerobuffer as zb
name = "dk-trunc-w-%d" % os.getpid()
r = zb.Reader(name, zb.BufferConfig(0, 1 << 16))
w = zb.Writer(name)
fd = os.open("/dev/shm/" + name, os.O_RDWR)
os.ftruncate(fd, {size})
os.close(fd)
raised = 0
for i in range(40):
    try:
        w.write_frame(b"z" * 4000)
    except zb.ZeroBufferException as e:
        raised += 1
        msg = str(e)
    try:
        buf = w.get_frame_buffer(4000)
        buf[:] = b"q" * 4000
        w.commit_frame()
    except zb.ZeroBufferException as e:
        raised += 1
assert raised >= 40, raised
print("writer:", msg)
r.close()
w.close()
"""


@pytest.mark.parametrize("size", [0, 4096])
def test_truncated_segment_reader_gets_exception_not_sigbus(size):
    rc, out, err = run_victim(TRUNCATE_READER.format(size=size))
    assert rc == 0, f"victim died ({rc}): {err[-2000:]}"
    assert "truncated" in out or "corrupted" in out, out


@pytest.mark.parametrize("size", [0, 4096])
def test_truncated_segment_writer_gets_exception_not_sigbus(size):
    rc, out, err = run_victim(TRUNCATE_WRITER.format(size=size))
    assert rc == 0, f"victim died ({rc}): {err[-2000:]}"
    assert "truncated" in out, out


def test_sigbus_outside_a_segment_still_kills():
    """The guard only takes faults inside its own mappings: any other
    SIGBUS keeps its default action (a real crash is not hidden)."""
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        # The sanitizer run: no ASan SIGBUS handler (it would be the
        # "previous handler" and report this deliberate fault).
        env["ASAN_OPTIONS"] = "detect_leaks=0:handle_sigbus=0"
    name = f"dk-sigbus-other-{os.getpid()}"
    try:
        rc, out, err = run_victim(env=env, code=f"""
            import mmap, os, tempfile, dispatchkit.zerobuffer as zb
            r = zb.Reader("{name}", zb.BufferConfig(0, 4096))  # the guard
            with tempfile.TemporaryFile() as f:
                f.truncate(8192)
                m = mmap.mmap(f.fileno(), 8192)
                f.truncate(0)
                m[5000]
            """)
    finally:
        unlink_buffer(name)  # the victim died with its reader open
    assert rc == -7, (rc, err[-2000:])  # SIGBUS


SMALL_TMPFS = """
import errno, os, subprocess, sys
os.environ.pop("FASTIPC_PID_DIR", None)
import dispatchkit.zerobuffer as zb
try:
    zb.Reader("dk-full", zb.BufferConfig(0, 64 << 20))
except OSError as e:
    assert e.errno == errno.ENOSPC, e
    print("ENOSPC at creation")
else:
    raise SystemExit("a 64 MiB ring in an 8 MiB tmpfs was created")
assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")
r = zb.Reader("dk-fits", zb.BufferConfig(0, 1 << 20))
w = zb.Writer("dk-fits")
for i in range(100):
    w.write_frame(b"a" * 4000)
    with r.read_frame(timeout=5) as f:
        assert bytes(f.data) == b"a" * 4000
print("fits")
"""


def test_ring_larger_than_free_shm_fails_at_creation():
    """A private tmpfs of 8 MiB over /dev/shm in a new mount namespace:
    a ring that does not fit fails at creation (ENOSPC), not with SIGBUS
    at the first write."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -m is unavailable here: "
                    + probe.stderr.decode(errors="replace").strip())
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         "mount --make-rprivate / && "
         "mount -t tmpfs -o size=8m tmpfs /dev/shm && "
         f"exec {sys.executable} -c '{SMALL_TMPFS}'"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "ENOSPC at creation" in p.stdout and "fits" in p.stdout
