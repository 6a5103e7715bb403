"""Hostile peers and hostile file systems (issue 12): planted symlinks,
lock and PID directories that another user controls, names with NUL,
primitives misused from the wrong thread, and what must be left behind
(nothing) when a create fails. Every case must end in a clear Python
exception, never a crash, a hang, a hijacked file or a leftover.

Tests that change what other processes on this machine share
(/tmp/zerobuffer itself) run in a private mount namespace (`unshare -m`
with a tmpfs over /tmp), so they cannot disturb anyone else."""
import os
import subprocess
import sys
import textwrap

import pytest

import dispatchkit.sync as sync
import dispatchkit.zerobuffer as zb

FOREIGN_UID = 54321  # an uid nobody on this machine uses


def unique(tag):
    return f"dk-hostile-{tag}-{os.getpid()}"


def in_private_tmp(code):
    """Run code in a fresh interpreter inside a new mount namespace with
    a private tmpfs over /tmp; skip if namespaces are unavailable."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -m is unavailable here: "
                    + probe.stderr.decode(errors="replace").strip())
    script = textwrap.dedent(code)
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount --make-rprivate / && mount -t tmpfs tmpfs /tmp && '
         'exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    return p.stdout


# ---- 3. the lock file never follows a symlink ------------------------------

def test_lock_file_symlink_is_refused_and_not_followed(tmp_path):
    name = unique("lnk")
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    os.makedirs("/tmp/zerobuffer", exist_ok=True)
    link = f"/tmp/zerobuffer/{name}.lock"
    dangling = tmp_path / "created-by-open"
    try:
        for dest in (target, dangling):
            os.symlink(dest, link)
            try:
                with pytest.raises(PermissionError, match=name):
                    zb.Reader(name, zb.BufferConfig(0, 4096))
            finally:
                os.unlink(link)
        assert target.read_bytes() == b"precious"
        assert not dangling.exists()  # O_CREAT did not follow the link
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        if os.path.islink(link):
            os.unlink(link)


def test_lock_path_that_is_a_directory_is_refused():
    name = unique("dir")
    path = f"/tmp/zerobuffer/{name}.lock"
    os.makedirs(path)
    try:
        with pytest.raises(OSError):
            zb.Reader(name, zb.BufferConfig(0, 4096))
    finally:
        os.rmdir(path)


# ---- 4. lock and PID directories another user controls ---------------------

def test_foreign_or_non_sticky_lock_directory_is_refused():
    out = in_private_tmp(f"""
        import os, dispatchkit.zerobuffer as zb
        cfg = zb.BufferConfig(0, 4096)
        d = "/tmp/zerobuffer"
        # Owned by another user, even with the sticky bit: its owner may
        # delete our lock files.
        os.mkdir(d)
        os.chown(d, {FOREIGN_UID}, {FOREIGN_UID})
        os.chmod(d, 0o1777)
        try:
            zb.Reader("a", cfg)
        except PermissionError as e:
            assert "/tmp/zerobuffer/a.lock" in str(e), e
            print("foreign refused")
        # Ours (root's) but world-writable without the sticky bit.
        os.chown(d, 0, 0)
        os.chmod(d, 0o777)
        try:
            zb.Reader("b", cfg)
        except PermissionError:
            print("non-sticky refused")
        # A symlink to a directory we own is not the directory.
        os.rmdir(d)
        os.mkdir("/tmp/real")
        os.symlink("/tmp/real", d)
        try:
            zb.Reader("c", cfg)
        except PermissionError:
            print("symlinked refused")
        os.unlink(d)
        # What we create ourselves, or a root-owned sticky one, is fine.
        r = zb.Reader("d", cfg)
        st = os.stat(d)
        assert st.st_mode & 0o7777 == 0o1777, oct(st.st_mode)
        r.close()
        print("own accepted")
    """)
    for what in ("foreign refused", "non-sticky refused",
                 "symlinked refused", "own accepted"):
        assert what in out, out


def test_foreign_lock_file_that_is_free_is_refused():
    """A free lock file of another user (their reader is gone) is not
    taken over: we could not remove it at close."""
    out = in_private_tmp(f"""
        import os, dispatchkit.zerobuffer as zb
        os.mkdir("/tmp/zerobuffer", 0o1777)
        os.chmod("/tmp/zerobuffer", 0o1777)
        fd = os.open("/tmp/zerobuffer/x.lock", os.O_CREAT | os.O_RDWR, 0o666)
        os.fchown(fd, {FOREIGN_UID}, {FOREIGN_UID})
        os.close(fd)
        try:
            zb.Reader("x", zb.BufferConfig(0, 4096))
        except PermissionError as e:
            print("refused", e)
    """)
    assert "refused" in out, out


@pytest.mark.parametrize("owner,mode", [(FOREIGN_UID, 0o1777),
                                        (FOREIGN_UID, 0o700),
                                        (0, 0o777)])
def test_untrusted_pid_directory_is_refused(tmp_path, monkeypatch, owner,
                                            mode):
    root = tmp_path / "pids"
    root.mkdir()
    os.chown(root, owner, owner)
    os.chmod(root, mode)
    monkeypatch.setenv("FASTIPC_PID_DIR", str(root))
    name = unique("piddir")
    with pytest.raises(PermissionError, match="PID directory"):
        sync.NamedMutex(name)
    assert not os.path.exists(f"/dev/shm/__pyfastipc_mutex_{name}")
    assert os.listdir(root) == []


def test_trusted_pid_directories_are_accepted(tmp_path, monkeypatch):
    for mode in (0o700, 0o1777):
        root = tmp_path / f"pids{mode:o}"
        root.mkdir()
        os.chmod(root, mode)
        monkeypatch.setenv("FASTIPC_PID_DIR", str(root))
        m = sync.NamedMutex(unique(f"ok{mode:o}"))
        m.close()


# ---- 5. NUL in a zerobuffer name --------------------------------------------

@pytest.mark.parametrize("cls", ["Reader", "Writer"])
def test_nul_in_buffer_name_is_refused(cls):
    base = unique("nul")
    r = zb.Reader(base, zb.BufferConfig(0, 4096))
    try:
        with pytest.raises(zb.InvalidBufferNameException):
            if cls == "Reader":
                zb.Reader(base + "\x00evil", zb.BufferConfig(0, 4096))
            else:
                zb.Writer(base + "\x00other")
        with pytest.raises(zb.InvalidBufferNameException):
            zb.Reader("\x00", zb.BufferConfig(0, 4096))
    finally:
        r.close()
    assert not os.path.exists(f"/dev/shm/{base}")


# ---- 6. a mutex is released only by the thread that holds it ---------------

def _held_by_other_thread(m, acquire, release):
    import threading
    held, done = threading.Event(), threading.Event()

    def holder():
        acquire()
        held.set()
        done.wait(30)
        release()

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(30)
    return t, done


def test_mutex_release_from_a_non_owning_thread_raises():
    buf = bytearray(64)
    m = sync.Mutex(buf, shared=False)
    t, done = _held_by_other_thread(m, m.acquire, m.release)
    try:
        with pytest.raises(RuntimeError, match="thread"):
            m.release()
        # The holder still holds it: mutual exclusion is intact.
        assert not m.try_acquire()
    finally:
        done.set()
        t.join(30)
    assert m.try_acquire()  # the holder's own release worked
    m.release()


def test_named_mutex_release_from_a_non_owning_thread_raises():
    m = sync.NamedMutex(unique("nmtx"))
    try:
        t, done = _held_by_other_thread(m, m.acquire, m.release)
        try:
            with pytest.raises(RuntimeError):
                m.release()
            assert m.try_release() is False
            assert not m.try_acquire()
        finally:
            done.set()
            t.join(30)
    finally:
        m.close()


# ---- 7. spin never stretches a deadline -------------------------------------

SPIN_CODE = """
import threading, dispatchkit.sync as sync
buf = bytearray(128)
m = sync.Mutex(memoryview(buf)[:64], shared=False)
s = sync.Semaphore(memoryview(buf)[64:], 0, shared=False)
held, done = threading.Event(), threading.Event()
def holder():
    m.acquire(); held.set(); done.wait(); m.release()
t = threading.Thread(target=holder); t.start(); held.wait()
assert m.acquire_ns(20_000_000, spin=2**31 - 1) is False
assert m.acquire_ns(0, spin=2**31 - 1) is False
assert s.wait(True, 20_000_000, 2**31 - 1) is False
assert s.wait(False, 0, 2**31 - 1) is False
done.set(); t.join()
print("bounded")
"""


def test_huge_spin_counts_are_bounded_by_the_deadline():
    # Before the fix each of these spun 2**31 times (about a minute);
    # the subprocess timeout turns that into a failure, not a hang.
    p = subprocess.run([sys.executable, "-c", SPIN_CODE],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "bounded" in p.stdout, p.stderr[-2000:]


# ---- 12. loose ends -----------------------------------------------------------

def test_drain_main_queue_negative_timeout_raises():
    import dispatchkit as dk
    with pytest.raises(ValueError):
        dk.drain_main_queue(-1)
    with pytest.raises(ValueError):
        dk.drain_main_queue(timeout=-0.5)
    assert dk.drain_main_queue(0) == 0


@pytest.mark.parametrize("cls", ["NamedMutex", "NamedEvent",
                                 "NamedSemaphore"])
def test_named_objects_after_close_raise_a_clear_error(cls):
    obj = getattr(sync, cls)(unique(cls))
    obj.close()
    use = {"NamedMutex": lambda: obj.acquire(),
           "NamedEvent": lambda: obj.set(),
           "NamedSemaphore": lambda: obj.post()}[cls]
    with pytest.raises(ValueError, match="closed"):
        use()
    obj.close()  # idempotent


CORRUPT_UNDER_WRITER = """
import mmap, os, struct, dispatchkit.zerobuffer as zb
name = "dk-corrupt-w-%d" % os.getpid()
P = 4096
r = zb.Reader(name, zb.BufferConfig(0, P))
w = zb.Writer(name)
w.write_timeout = 0.01
fd = os.open("/dev/shm/" + name, os.O_RDWR)
seg = mmap.mmap(fd, os.fstat(fd).st_size)
os.close(fd)
assert len(seg) == 128 + P
tried = 0
for off in (32, 40, 48, 56, 64):       # sizes, free count, positions
    for val in (P + 1, 2 * P, 2**63, 2**64 - 1, P - 1, 7):
        struct.pack_into("<Q", seg, off, val)
        for n in (1, 100, 1000, P - 16):
            tried += 1
            try:
                w.write_frame(b"w" * n)
            except zb.ZeroBufferException:
                pass
            try:
                f = r.read_frame(timeout=0)
                if f is not None:
                    f.dispose()
            except zb.ZeroBufferException:
                pass
        # Put back what a sane reader would see, and drain.
        struct.pack_into("<QQ", seg, 32, P, P)
print("survived", tried)
"""


def test_writer_never_writes_past_the_ring_when_oieb_is_corrupted():
    """The writer keeps its own copy of P and of its write position, so
    corrupted OIEB sizes, positions and counts under it give exceptions or
    overwrite the ring at worst, never memory past the mapping (which
    would crash the process)."""
    p = subprocess.run([sys.executable, "-c", CORRUPT_UNDER_WRITER],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "survived 120" in p.stdout, p.stdout


# ---- 8. apply() stops at the first exception ---------------------------------

APPLY_CODE = """
import dispatchkit as dk
calls = []
def f(i):
    calls.append(i)
    raise ZeroDivisionError(i)
try:
    dk.apply(2**62, f)
except ZeroDivisionError:
    pass
else:
    raise SystemExit("no exception")
# Only calls already running when the first one raised: one per thread.
assert 1 <= len(calls) <= 64, len(calls)
print("stopped", len(calls))
"""


def test_apply_stops_claiming_work_after_the_first_exception():
    # Before the fix every one of the 2**50 ranges took the GIL in turn,
    # so this never returned; the subprocess timeout makes that a failure.
    p = subprocess.run([sys.executable, "-c", APPLY_CODE],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "stopped" in p.stdout, p.stderr[-2000:]


# ---- 9 and issue 13: views of get_frame_buffer() never outlive their frame ---

def _pair(tag, size=4096):
    name = unique(tag)
    r = zb.Reader(name, zb.BufferConfig(0, size))
    return r, zb.Writer(name)


def test_commit_refuses_while_a_slice_of_the_frame_buffer_lives():
    r, w = _pair("slice")
    with r, w:
        buf = w.get_frame_buffer(8)
        tail = buf[4:]             # shares the view's buffer
        buf[:] = b"abcdefgh"
        with pytest.raises(BufferError, match="derived"):
            w.commit_frame()
        assert r.read_frame(timeout=0) is None  # nothing was published
        tail[:] = b"WXYZ"          # still ours: not published yet
        del tail
        w.commit_frame()
        f = r.read_frame(timeout=1)
        assert bytes(f.data) == b"abcdWXYZ" and f.sequence == 1
        f.dispose()
        # Writing through the view after commit is impossible.
        with pytest.raises(ValueError):
            buf[0] = 1


def test_commit_refuses_while_an_export_of_the_frame_buffer_lives():
    import ctypes
    r, w = _pair("export")
    with r, w:
        buf = w.get_frame_buffer(8)
        arr = (ctypes.c_char * 8).from_buffer(buf)  # an export of buf
        arr.value = b"12345678"
        with pytest.raises(BufferError):
            w.commit_frame()
        del arr
        w.commit_frame()
        assert bytes(r.read_frame(timeout=1).data) == b"12345678"


def test_stale_slice_cannot_overwrite_later_frames_after_wrap():
    """The scenario of issue 12 item 9: a slice kept past commit wrote into
    frames written after the ring wrapped, even one the reader held."""
    r, w = _pair("wrap", 256)
    with r, w:
        buf = w.get_frame_buffer(16)
        keep = buf[:]
        buf[:] = b"A" * 16
        with pytest.raises(BufferError):
            w.commit_frame()
        del keep
        w.commit_frame()
        for i in range(40):        # wrap the ring several times
            w.write_frame(bytes([i]) * 40)
            f = r.read_frame(timeout=1)
            assert f is not None
            if i == 0:
                assert bytes(f.data) == b"A" * 16
                f.dispose()
                f = r.read_frame(timeout=1)
            assert bytes(f.data) == bytes([i]) * 40
            f.dispose()


def test_get_frame_buffer_twice_abandons_the_first_reservation():
    """zerobuffer-ipc replaces a reservation not yet committed with the
    next one; so do we: the first view is revoked, its sequence number is
    reused, no space is lost, and no lock is left held."""
    r, w = _pair("twice", 1024)
    with r, w:
        first = w.get_frame_buffer(100)
        first[:] = b"1" * 100
        second = w.get_frame_buffer(4)
        with pytest.raises(ValueError):
            first[0] = 0           # revoked
        second[:] = b"2222"
        w.commit_frame()
        f = r.read_frame(timeout=1)
        assert bytes(f.data) == b"2222" and f.sequence == 1
        f.dispose()
        assert r.read_frame(timeout=0) is None
        # Nothing leaked: the whole ring is still usable, many times over.
        for i in range(50):
            seq, v = w.get_frame_buffer_with_sequence(400)
            v[:] = bytes([i]) * len(v)
            w.get_frame_buffer(300)[:] = bytes([i]) * 300  # abandons v
            w.commit_frame()
            f = r.read_frame(timeout=1)
            assert f.sequence == seq == i + 2
            assert bytes(f.data) == bytes([i]) * 300
            f.dispose()
        w.write_frame(b"after")    # the writer's lock is free
        assert bytes(r.read_frame(timeout=1).data) == b"after"


def test_get_frame_buffer_twice_refused_while_a_derived_view_lives():
    r, w = _pair("twice-slice")
    with r, w:
        first = w.get_frame_buffer(8)
        first[:] = b"firstone"
        piece = first[:4]
        with pytest.raises(BufferError):
            w.get_frame_buffer(8)  # would overlap what `piece` can write
        del piece
        w.commit_frame()           # the first reservation is still there
        assert bytes(r.read_frame(timeout=1).data) == b"firstone"


# ---- 10. a too-small named segment with no users is reclaimed ---------------

@pytest.mark.parametrize("left_size", [0, 8])
def test_named_mutex_segment_left_too_small_is_reclaimed(tmp_path,
                                                         monkeypatch,
                                                         left_size):
    import _posixshmem
    monkeypatch.setenv("FASTIPC_PID_DIR", str(tmp_path))
    name = unique(f"small{left_size}")
    shm = "/__pyfastipc_mutex_" + name
    # What a creator killed between shm_open and ftruncate leaves (or a
    # truncation): a segment too small for a Mutex, and no PID file.
    fd = _posixshmem.shm_open(shm, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, left_size)
    os.close(fd)
    old = os.stat("/dev/shm" + shm).st_mtime - 60
    os.utime("/dev/shm" + shm, (old, old))
    try:
        m = sync.NamedMutex(name)
        assert m._shm.reclaimed
        assert m.acquire_ns(0) and m.owner_pid() == os.getpid()
        m.release()
        m.close()
        assert not os.path.exists("/dev/shm" + shm)
    finally:
        try:
            _posixshmem.shm_unlink(shm)
        except FileNotFoundError:
            pass


def test_a_fresh_unsized_segment_is_left_to_its_creator(tmp_path,
                                                        monkeypatch):
    """Younger than the grace period it may be a creator's (fastipc sizes
    after creating, without a lock): waited for, not reclaimed."""
    import _posixshmem
    monkeypatch.setenv("FASTIPC_PID_DIR", str(tmp_path))
    name = unique("fresh")
    shm = "/__pyfastipc_mutex_" + name
    fd = _posixshmem.shm_open(shm, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        import threading
        # The "creator" sizes it a moment later.
        t = threading.Timer(0.05, os.ftruncate, (fd, 64))
        t.start()
        m = sync.NamedMutex(name)
        t.join()
        assert not m._shm.reclaimed and not m._shm.created
        m.close()
    finally:
        os.close(fd)
        try:
            _posixshmem.shm_unlink(shm)
        except FileNotFoundError:
            pass


# ---- 11. a failed GuardedSharedMemory create leaves nothing ---------------

def test_failed_guarded_shared_memory_create_leaves_nothing(tmp_path):
    name = unique("huge")
    with pytest.raises((OSError, OverflowError, MemoryError, ValueError)):
        sync.GuardedSharedMemory(name, 2**62, pid_dir=str(tmp_path))
    assert not os.path.exists(f"/dev/shm/{name}")
    assert os.listdir(tmp_path) == []


# ---- issue 13: PID registration is per process ------------------------------

def test_dropped_handle_without_cleanup_does_not_outlive_a_later_close(
        tmp_path):
    name = unique("perproc")
    h1 = sync.GuardedSharedMemory(name, 64, pid_dir=str(tmp_path),
                                  try_cleanup_on_exit=False)
    pids = tmp_path / f"{name}.pids"
    assert os.listdir(pids) == [str(os.getpid())]
    del h1          # dropped: its PID file stays, as asked
    import gc
    gc.collect()
    assert os.listdir(pids) == [str(os.getpid())]
    h2 = sync.GuardedSharedMemory(name, 64, pid_dir=str(tmp_path))
    assert not h2.created
    h2.close()      # the process's last handle: everything goes
    assert not pids.exists()
    assert not os.path.exists(f"/dev/shm/{name}")
