"""dispatchkit.sync named helpers: GuardedSharedMemory, NamedEvent,
NamedMutex, NamedSemaphore. Real processes (fork, spawn, and fastipc from
the registry in a subprocess), SIGKILLed users, stale names, the PID
directory's permissions and symlink checks, bad input."""
import asyncio
import copy
import decimal
import fractions
import importlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import weakref

import pytest

import dispatchkit.sync as sync
from dispatchkit import asyncio as dkio

SHM = "/dev/shm"


@pytest.fixture
def pid_root(tmp_path, monkeypatch):
    root = tmp_path / "pids"
    monkeypatch.setenv("FASTIPC_PID_DIR", str(root))
    return root


@pytest.fixture
def name():
    n = "dk" + uuid.uuid4().hex[:12]
    yield n
    for prefix in ("", "__pyfastipc_event_", "__pyfastipc_mutex_",
                   "__pyfastipc_sema_"):
        try:
            os.unlink(f"{SHM}/{prefix}{n}")
        except FileNotFoundError:
            pass


def shm_exists(full_name):
    return os.path.exists(f"{SHM}/{full_name}")


def run_py(code, timeout=60, **kw):
    """Start a Python child (same interpreter and environment)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def read_line(p, timeout=60):
    """One line from the child's stdout, bounded in time."""
    out = []
    t = threading.Thread(target=lambda: out.append(p.stdout.readline()))
    t.start()
    t.join(timeout)
    assert out and out[0], p.stderr.read() if p.poll() is not None else ""
    return out[0].strip()


# ---- basic behaviour ------------------------------------------------------

def test_named_mutex_counts_across_spawned_processes(pid_root, name):
    counter = sync.GuardedSharedMemory(name, 8)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_count_named, args=(name, 300))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert counter.buf[:8].cast("Q")[0] == 900
    counter.close()
    assert not shm_exists(name)
    assert not shm_exists("__pyfastipc_mutex_" + name)
    assert os.listdir(pid_root) == []


def _count_named(name, n):
    g = sync.GuardedSharedMemory(name, 8, attach_only=True)
    c = g.buf[:8].cast("Q")
    m = sync.NamedMutex(name)
    for _ in range(n):
        with m:
            c[0] += 1
    del c
    m.close()
    g.close()


def test_named_mutex_api(pid_root, name):
    m = sync.NamedMutex(name)
    assert m.name == name
    assert m.owner_pid() == 0
    assert m.acquire() is True
    assert m.owner_pid() == os.getpid() and m.owner_died is False
    assert m.last_acquired_ns() > 0
    assert m.try_acquire() is False
    m.release()
    assert m.try_release() is False           # not held: False, no raise
    with pytest.raises(RuntimeError):
        m.release()
    assert m.acquire_ns(1_000_000, spin=4) is True
    m.force_release()
    assert m.owner_pid() == 0
    with m:
        assert m.owner_pid() == os.getpid()
    m.close()
    m.close()  # idempotent


def test_named_mutex_is_per_thread(pid_root, name):
    # fastipc's NamedMutex.__enter__ raises RuntimeError in a second thread.
    m = sync.NamedMutex(name)
    total = [0]

    def work():
        for _ in range(500):
            with m:
                v = total[0]
                total[0] = v + 1

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert total[0] == 1500
    m.close()


def test_named_semaphore_api(pid_root, name):
    s = sync.NamedSemaphore(name, initial=2)
    assert s.value() == 2
    assert s.wait() is True and s.acquire() is True  # acquire = wait
    assert s.value() == 0
    assert s.P(blocking=False) is False
    assert s.wait(timeout=0.01) is False
    assert s.wait(blocking=False) is False
    assert s.wait_ns(timeout_ns=1_000_000) is False
    s.post(3)
    s.V()
    s.release(1)
    s.post1()
    assert s.value() == 6
    assert s.wait_ns() is True and s.last_pid() == os.getpid()
    assert s.last_acquired_ns() > 0
    attached = sync.NamedSemaphore(name, initial=99)  # not the creator
    assert attached.value() == 5
    with pytest.raises(OverflowError):
        s.post(-1)
    with pytest.raises(OverflowError):
        sync.NamedSemaphore(name, initial=-1)
    with pytest.raises(OverflowError):
        sync.NamedSemaphore(name, initial=2**32)
    attached.close()
    s.close()
    assert not shm_exists("__pyfastipc_sema_" + name)


def test_named_semaphore_post_n_wakes_exactly_n(pid_root, name):
    s = sync.NamedSemaphore(name, initial=0)
    results = []
    lock = threading.Lock()

    def waiter():
        ok = s.wait(timeout=20.0)
        with lock:
            results.append(ok)

    ts = [threading.Thread(target=waiter) for _ in range(3)]
    for t in ts:
        t.start()
    time.sleep(0.2)  # let them sleep
    s.post(2)
    deadline = time.monotonic() + 20
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)  # a third wake-up would show by now
    assert results == [True, True]
    assert s.value() == 0
    s.post(1)
    for t in ts:
        t.join(30)
    assert results == [True, True, True]
    s.close()


def test_named_event(pid_root, name):
    e = sync.NamedEvent(name)
    assert e.is_set() is False
    assert e.wait(0) is False
    assert e.wait(1_000_000) is False
    got = []
    t = threading.Thread(target=lambda: got.append(e.wait(20_000_000_000)))
    t.start()
    time.sleep(0.05)
    e.set()
    t.join(30)
    assert got == [True]
    # Already set: True at once (fastipc returns False here, defect F7).
    assert e.wait(0) is True and e.wait() is True
    e.clear()
    assert e.is_set() is False and e.wait(1000) is False
    other = sync.NamedEvent(name)  # attaching does not clear it
    e.set()
    other2 = sync.NamedEvent(name)
    assert other2.is_set() is True
    for x in (e, other, other2):
        x.close()
    assert not shm_exists("__pyfastipc_event_" + name)


def _wait_event(name, q):
    e = sync.NamedEvent(name)
    q.put("ready")
    q.put(e.wait(20_000_000_000))
    e.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_named_event_wakes_other_processes(pid_root, name, method):
    ctx = mp.get_context(method)
    e = sync.NamedEvent(name)
    q = ctx.Queue()
    procs = [ctx.Process(target=_wait_event, args=(name, q))
             for _ in range(2)]
    for p in procs:
        p.start()
    assert [q.get(timeout=60) for _ in procs] == ["ready", "ready"]
    time.sleep(0.05)
    e.set()
    assert sorted(q.get(timeout=60) for _ in procs) == [True, True]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    e.close()


# ---- owner death, stale names and cleanup --------------------------------

def _hold_named(name, q):
    m = sync.NamedMutex(name)
    m.acquire()
    q.put(os.getpid())
    time.sleep(60)


def test_named_mutex_holder_killed(pid_root, name):
    m = sync.NamedMutex(name)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_hold_named, args=(name, q))
    p.start()
    holder = q.get(timeout=30)
    assert m.owner_pid() == holder
    assert m.acquire_ns(60_000_000) is False
    os.kill(holder, signal.SIGKILL)
    p.join(30)
    assert m.acquire_ns(10_000_000_000) is True
    assert m.owner_died is True
    m.release()
    m.close()
    assert not shm_exists("__pyfastipc_mutex_" + name)
    assert os.listdir(pid_root) == []


KILLED_USER = """
import os, signal, sys
sys.path[:0] = []
if {fastipc!r}:
    from fastipc import NamedMutex, NamedSemaphore
else:
    from dispatchkit.sync import NamedMutex, NamedSemaphore
m = NamedMutex({name!r})
m.acquire()
s = NamedSemaphore({name!r}, initial=5)
s.wait()
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("peer", ["dispatchkit", "fastipc"])
def test_names_left_by_killed_processes_are_cleaned_up(pid_root, name,
                                                       peer):
    if peer == "fastipc":
        importlib.import_module("fastipc")
    p = run_py(KILLED_USER.format(fastipc=peer == "fastipc", name=name))
    assert read_line(p) == "holding"
    p.wait(30)
    assert p.returncode == -signal.SIGKILL
    assert shm_exists("__pyfastipc_mutex_" + name)
    assert shm_exists("__pyfastipc_sema_" + name)
    assert sorted(os.listdir(pid_root)) == [
        f"__pyfastipc_mutex_{name}.pids", f"__pyfastipc_sema_{name}.pids"]
    # The next user finds only dead users: fresh objects, not a held mutex
    # and a count of 4 from the crashed run.
    s = sync.NamedSemaphore(name, initial=1)
    assert s.value() == 1 and s._shm.reclaimed
    m = sync.NamedMutex(name)
    assert m.try_acquire() is True and m.owner_died is False
    m.release()
    m.close()
    s.close()
    assert not shm_exists("__pyfastipc_mutex_" + name)
    assert not shm_exists("__pyfastipc_sema_" + name)
    assert os.listdir(pid_root) == []


def test_names_left_by_a_dead_child_not_yet_reaped_are_reclaimed(pid_root,
                                                                 name):
    # The dead user is our own child, still a zombie: kill(pid, 0) finds
    # it, /proc says it is dead.
    p = run_py(KILLED_USER.format(fastipc=False, name=name))
    try:
        assert read_line(p) == "holding"
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        os.kill(p.pid, 0)
        s = sync.NamedSemaphore(name, initial=1)
        assert s.value() == 1 and s._shm.reclaimed
        m = sync.NamedMutex(name)
        assert m.try_acquire() is True
        m.release()
        m.close()
        s.close()
        assert os.listdir(pid_root) == []
    finally:
        p.wait(30)


def test_two_handles_in_one_process_do_not_split(pid_root, name):
    # fastipc: closing g1 unlinks the segment under g2, and g3 then gets a
    # fresh one (split brain).
    g1 = sync.GuardedSharedMemory(name, 64)
    g2 = sync.GuardedSharedMemory(name, 64)
    assert g1.created and not g2.created
    g1.close()
    assert shm_exists(name)
    g3 = sync.GuardedSharedMemory(name, 64)
    g2.buf[0] = 42
    assert g3.buf[0] == 42
    assert g3.get_num_procs() == 1
    g2.close()
    assert shm_exists(name)
    g3.close()
    assert not shm_exists(name)


def _child_keeps(name, go, done):
    g = sync.GuardedSharedMemory(name, 64, attach_only=True)
    g.buf[1] = 7
    done.set()
    go.wait(30)
    g.close()


def test_last_close_unlinks_only_when_nobody_is_left(pid_root, name):
    ctx = mp.get_context("spawn")
    g = sync.GuardedSharedMemory(name, 64)
    go, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_child_keeps, args=(name, go, done))
    p.start()
    assert done.wait(60)
    assert g.get_num_procs() == 2
    g.close()
    assert shm_exists(name)  # the child still uses it
    go.set()
    p.join(60)
    assert p.exitcode == 0
    assert not shm_exists(name)
    assert os.listdir(pid_root) == []


def test_forked_child_is_registered(pid_root, name):
    g = sync.GuardedSharedMemory(name, 64)
    ctx = mp.get_context("fork")
    go, seen = ctx.Event(), ctx.Queue()

    def child():
        seen.put(g.get_num_procs())
        go.wait(30)
        g.buf[0] = 9
        g.close()

    p = ctx.Process(target=child)
    p.start()
    assert seen.get(timeout=30) == 2
    g_view = sync.GuardedSharedMemory(name, 64)
    g.close()
    g_view.close()
    assert shm_exists(name)  # the forked child is still using it
    go.set()
    p.join(30)
    assert p.exitcode == 0
    # The child exited through os._exit (multiprocessing): its file is a
    # dead process's, pruned by the next user.
    again = sync.GuardedSharedMemory(name, 64)
    assert again.created  # stale (only dead users) -> fresh
    again.close()
    assert not shm_exists(name)


def test_closing_under_a_live_primitive_is_safe(pid_root, name):
    # fastipc segfaults here (no buffer export held, defect F8).
    g = sync.GuardedSharedMemory(name, 64)
    m = sync.Mutex(g.buf[:64])
    g.close()
    with pytest.raises(ValueError, match="closed"):
        g.buf
    assert m.acquire() is True  # the mapping lives as long as m
    m.release()
    del m


# ---- interop with fastipc --------------------------------------------------

FASTIPC_PEER = """
import os, sys
from fastipc import NamedEvent, NamedMutex, NamedSemaphore
m = NamedMutex({name!r})
e = NamedEvent({name!r})
s = NamedSemaphore({name!r})
m.acquire()
e.set()
print(os.getpid(), flush=True)
ok = s.wait(timeout=20.0)        # we post it (fastipc waits on count 0)
m.release()
print("got" if ok else "timeout", flush=True)
sys.stdin.readline()
"""


def test_named_objects_shared_with_fastipc(pid_root, name):
    importlib.import_module("fastipc")
    m = sync.NamedMutex(name)
    e = sync.NamedEvent(name)
    s = sync.NamedSemaphore(name, initial=0, fastipc_compat=True)
    p = run_py(FASTIPC_PEER.format(name=name))
    peer = int(read_line(p))
    assert e.wait(20_000_000_000) is True
    assert m.owner_pid() == peer and m.try_acquire() is False
    time.sleep(0.1)  # the peer is asleep in its wait
    s.post()
    assert read_line(p) == "got"
    assert m.acquire_ns(20_000_000_000) is True and m.owner_died is False
    m.release()
    # The peer is alive: our close leaves the names in place.
    for x in (m, e, s):
        x.close()
    assert shm_exists("__pyfastipc_mutex_" + name)
    p.stdin.write("\n")
    p.stdin.flush()
    p.wait(30)
    assert p.returncode == 0, p.stderr.read()
    # fastipc's atexit close found no other live user: all unlinked.
    assert not shm_exists("__pyfastipc_mutex_" + name)
    assert not shm_exists("__pyfastipc_event_" + name)
    assert not shm_exists("__pyfastipc_sema_" + name)


FASTIPC_CREATOR = """
import os, sys
from fastipc import NamedMutex
m = NamedMutex({name!r})       # creator: zeroes the header, magic included
m.acquire()
print(os.getpid(), flush=True)
sys.stdin.readline()
m.release()
print("released", flush=True)
sys.stdin.readline()
"""


def test_mutex_created_by_fastipc_and_held(pid_root, name):
    importlib.import_module("fastipc")
    p = run_py(FASTIPC_CREATOR.format(name=name))
    peer = int(read_line(p))
    m = sync.NamedMutex(name)  # magic 0 and state held: still accepted
    assert m.owner_pid() == peer
    assert m.try_acquire() is False
    p.stdin.write("\n")
    p.stdin.flush()
    assert read_line(p) == "released"
    assert m.acquire_ns(10_000_000_000) is True
    m.release()
    p.stdin.write("\n")
    p.stdin.flush()
    p.wait(30)
    assert p.returncode == 0, p.stderr.read()
    m.close()
    assert not shm_exists("__pyfastipc_mutex_" + name)


# ---- permissions, symlinks, bad input -------------------------------------

def test_created_0600_unless_asked(pid_root, name):
    g = sync.GuardedSharedMemory(name, 64)
    assert stat.S_IMODE(os.stat(f"{SHM}/{name}").st_mode) == 0o600
    pdir = pid_root / f"{name}.pids"
    assert stat.S_IMODE(os.stat(pdir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(pdir / str(os.getpid())).st_mode) == 0o600
    g.close()
    old = os.umask(0o077)
    try:
        g = sync.GuardedSharedMemory(name, 64, mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f"{SHM}/{name}").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(pdir).st_mode) == 0o750
    g.close()
    m = sync.NamedMutex(name)
    assert stat.S_IMODE(
        os.stat(f"{SHM}/__pyfastipc_mutex_{name}").st_mode) == 0o600
    m.close()


OTHER_UID = 54321


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to plant files owned by another user")


def test_pid_root_symlink_planted_by_another_user(tmp_path, monkeypatch,
                                                  name):
    _needs_root()
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "pids"
    link.symlink_to(target)
    os.lchown(link, OTHER_UID, OTHER_UID)
    monkeypatch.setenv("FASTIPC_PID_DIR", str(link))
    with pytest.raises(PermissionError, match="symlink owned by uid"):
        sync.NamedMutex(name)
    assert os.listdir(target) == []
    assert not shm_exists("__pyfastipc_mutex_" + name)


def test_own_pid_root_symlink_is_fine(tmp_path, monkeypatch, name):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "pids").symlink_to(target)
    monkeypatch.setenv("FASTIPC_PID_DIR", str(tmp_path / "pids"))
    m = sync.NamedMutex(name)
    assert os.listdir(target) == [f"__pyfastipc_mutex_{name}.pids"]
    m.close()
    assert os.listdir(target) == []


def test_planted_pids_entry_is_refused(pid_root, tmp_path, name):
    pid_root.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    entry = pid_root / f"__pyfastipc_mutex_{name}.pids"
    entry.symlink_to(victim)
    if os.geteuid() == 0:
        os.lchown(entry, OTHER_UID, OTHER_UID)
    with pytest.raises(PermissionError, match="symlink"):
        sync.NamedMutex(name)
    assert os.listdir(victim) == []  # nothing written through the link
    entry.unlink()
    if os.geteuid() == 0:
        entry.mkdir()
        os.chown(entry, OTHER_UID, OTHER_UID)
        with pytest.raises(PermissionError, match="owned by uid"):
            sync.NamedMutex(name)
        assert os.listdir(entry) == []


def test_segment_owned_by_another_user_is_refused(pid_root, name):
    _needs_root()
    g = sync.GuardedSharedMemory(name, 64)
    os.chown(f"{SHM}/{name}", OTHER_UID, OTHER_UID)
    with pytest.raises(PermissionError, match="owned by uid"):
        sync.GuardedSharedMemory(name, 64)
    os.chown(f"{SHM}/{name}", 0, 0)
    g.close()


@pytest.mark.parametrize("bad", ["", "a/b", ".", "..", "a..b", "x\0y",
                                 "n" * 251])
def test_bad_names(pid_root, bad):
    # os.h's one name rule, for the segment's name and the object's: "."
    # was an OSError from shm_open for GuardedSharedMemory and a valid
    # name for the Named* objects (prefixed) before the rule was shared.
    for ctor in (sync.NamedMutex, sync.NamedEvent, sync.NamedSemaphore,
                 lambda n: sync.GuardedSharedMemory(n, 64)):
        with pytest.raises(ValueError):
            ctor(bad)
    assert not pid_root.exists() or os.listdir(pid_root) == []


def test_named_name_length_limit_counts_the_prefix(pid_root):
    # The segment "__pyfastipc_mutex_" + name and its ".pids" directory
    # must fit NAME_MAX: the message gives the limit for the name itself.
    longest = 255 - len(".pids") - len("__pyfastipc_mutex_")
    with pytest.raises(ValueError, match=f"at most {longest} bytes"):
        sync.NamedMutex("n" * (longest + 1))
    m = sync.NamedMutex("n" * longest)
    m.close()
    assert os.listdir(pid_root) == []


def test_junk_pid_files_neither_keep_a_segment_nor_break_it(pid_root,
                                                             name):
    # os.h's liveness for PID files: "0" names no process (kill(0, 0)
    # found our own group, so it kept the segment alive forever), a pid
    # past 2**31 - 1 is none either (os.kill raised OverflowError and no
    # one could open or close the name), and a file name of non-ASCII
    # digits is no PID file (int("²") raised ValueError).
    g = sync.GuardedSharedMemory(name, 64)
    pdir = pid_root / f"{name}.pids"
    for junk in ("0", "2147483648", "9" * 30, "\u00b2", "\u0663"):
        (pdir / junk).write_text("")
    assert g.get_num_procs() == 1
    g2 = sync.GuardedSharedMemory(name, 64)
    assert not g2.created and not g2.reclaimed
    g2.close()
    g.close()
    assert not shm_exists(name)  # the last live user removed it
    assert sorted(os.listdir(pdir)) == ["\u00b2", "\u0663"]


def test_pid_file_of_a_reused_pid_does_not_keep_a_segment(pid_root, name):
    # The start time recorded in a PID file names one process: a live pid
    # with another start time is a dead user whose pid was given again.
    from dispatchkit import _dk
    g = sync.GuardedSharedMemory(name, 64)
    init_ticks = _dk._pid_start_time(1)
    assert init_ticks is not None
    (pid_root / f"{name}.pids" / "1").write_text(f"{init_ticks + 1}\n")
    assert g.get_num_procs() == 1
    g.close()
    assert not shm_exists(name)
    assert os.listdir(pid_root) == []


def test_bad_sizes_modes_and_attach_only(pid_root, name):
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="size"):
            sync.GuardedSharedMemory(name, size)
    for mode in (0o400, 0o1777, -1):
        with pytest.raises(ValueError, match="mode"):
            sync.GuardedSharedMemory(name, 64, mode=mode)
    with pytest.raises(TypeError):
        sync.NamedMutex(b"bytes")
    with pytest.raises(sync.NoShmFoundError):
        sync.GuardedSharedMemory(name, 64, attach_only=True)
    assert os.listdir(pid_root) == []  # no stray .pids directory
    assert issubclass(sync.NoShmFoundError, FileNotFoundError)
    small = sync.GuardedSharedMemory(name, 16)
    with pytest.raises(RuntimeError, match="after 3 attempts"):
        sync.GuardedSharedMemory(name, 64, max_attempts=3)
    small.close()


def test_explicit_pid_dir_wins_over_environment(pid_root, tmp_path, name):
    explicit = tmp_path / "explicit"
    g = sync.GuardedSharedMemory(name, 64, pid_dir=str(explicit))
    assert os.listdir(explicit) == [f"{name}.pids"]
    assert not pid_root.exists()
    g.close()


def test_signal_handler_exception_interrupts_named_waits(tmp_path):
    code = f"""
        import os, signal, threading
        import dispatchkit.sync as sync
        os.environ["FASTIPC_PID_DIR"] = {str(tmp_path)!r}

        class Stop(Exception):
            pass

        def handler(signum, frame):
            raise Stop()

        signal.signal(signal.SIGUSR1, handler)
        pid = os.getpid()
        e = sync.NamedEvent("dkint{os.getpid()}")
        s = sync.NamedSemaphore("dkint{os.getpid()}", initial=0)
        for what in (lambda: e.wait(), lambda: s.wait()):
            threading.Timer(0.2, os.kill, (pid, signal.SIGUSR1)).start()
            try:
                what()
                print("returned")
            except Stop:
                print("interrupted")
        e.close(); s.close()
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["interrupted", "interrupted"]


# ---- the Named* classes are subclasses of their primitives -----------------
# Their calls reach the C methods directly (docs/sync.md): what that makes
# reachable, and what the Python wrappers did before that must not change.

def test_named_classes_are_their_primitives(pid_root, name):
    m = sync.NamedMutex(name)
    s = sync.NamedSemaphore(name, initial=0)
    e = sync.NamedEvent(name)
    assert isinstance(m, sync.Mutex) and isinstance(s, sync.Semaphore)
    assert isinstance(e, sync.Event)
    # Each class has its own descriptor of each C method (the fast call).
    for cls, meth in ((sync.NamedMutex, "acquire"), (sync.NamedMutex,
                                                     "try_release"),
                      (sync.NamedSemaphore, "post"),
                      (sync.NamedSemaphore, "P"), (sync.NamedEvent, "set")):
        assert vars(cls)[meth].__objclass__ is cls
    # The aliases: P and acquire take a unit, V and release post.
    s.V()
    s.release(2)
    assert s.value() == 3
    assert s.P() is True and s.acquire(timeout=0.0) is True
    assert s.wait_ns(False) is True and s.P(blocking=False) is False
    assert m.try_release() is False and m.acquire() is True
    assert m.try_release() is True and m.owner_pid() == 0
    for x in (m, s, e):
        x.close()


class _CountingMutex(sync.NamedMutex):
    def acquire(self):
        self.calls = getattr(self, "calls", 0) + 1
        return super().acquire()


class _PlainSemaphore(sync.NamedSemaphore):
    pass


def test_user_subclasses_of_the_named_classes(pid_root, name):
    m = _CountingMutex(name)
    assert m.acquire() is True and m.calls == 1  # the override runs
    assert m.owner_pid() == os.getpid()
    m.release()  # inherited from C
    with m:      # the C __enter__, not the override
        pass
    assert m.calls == 1
    s = _PlainSemaphore(name, initial=1)
    assert vars(_PlainSemaphore)["wait"].__objclass__ is _PlainSemaphore
    assert s.wait(timeout=0.0) is True and s.wait(timeout=0.0) is False
    assert repr(s) == f"<_PlainSemaphore {name!r} value=0>"
    s.close()
    with pytest.raises(ValueError,
                       match=rf"^_PlainSemaphore\('{name}'\) is closed$"):
        s.post()
    m.close()


def test_user_subclasses_of_the_primitives():
    # Mutex, Semaphore and Event can be subclassed (fastipc's cannot);
    # each subclass is its base's kind.
    class M(sync.Mutex):
        pass

    class S(sync.Semaphore):
        pass

    class E(sync.Event):
        pass

    m, s, e = M(bytearray(64)), S(bytearray(64), initial=2), E(bytearray(4))
    assert m.acquire() is True and m.owner_pid() == os.getpid()
    assert m.owner_died is False
    m.release()
    assert s.value() == 2 and s.wait() is True and s.value() == 1
    e.set()
    assert e.is_set() and e.wait(0) is True
    with pytest.raises(ValueError, match="need 4-byte aligned >=64 buffer "
                                         "for S"):
        S(bytearray(8))
    for final in (sync.FutexWord, sync.AtomicU32, sync.AtomicU64):
        with pytest.raises(TypeError):
            type("Sub", (final,), {})


def _closed_calls(obj):
    """Every call a user can make on a named object but close()."""
    if isinstance(obj, sync.NamedMutex):
        def with_it():
            with obj:
                pass
        return [obj.acquire, lambda: obj.acquire_ns(10), obj.try_acquire,
                obj.release, obj.try_release, obj.force_release,
                obj.owner_pid, obj.last_acquired_ns, obj.magic,
                lambda: obj.owner_died, with_it,
                lambda: asyncio.run(dkio.wait(obj)),
                lambda: asyncio.run(obj.__aenter__())]
    if isinstance(obj, sync.NamedSemaphore):
        def with_it():
            with obj:
                pass
        return [obj.post, lambda: obj.post(2), obj.post1, obj.wait,
                lambda: obj.wait(timeout=float("nan")), obj.wait_ns, obj.P,
                obj.V, obj.acquire, obj.release, obj.value, obj.last_pid,
                obj.last_acquired_ns, obj.magic, with_it,
                lambda: asyncio.run(dkio.wait(obj)),
                lambda: asyncio.run(obj.__aenter__())]
    return [obj.set, obj.clear, obj.is_set, obj.wait, lambda: obj.wait(0),
            lambda: asyncio.run(dkio.wait(obj))]


@pytest.mark.parametrize("cls", ["NamedMutex", "NamedSemaphore",
                                 "NamedEvent"])
def test_closed_named_objects_refuse_every_call(pid_root, name, cls):
    obj = getattr(sync, cls)(name)
    calls = _closed_calls(obj)
    obj.close()
    for call in calls:
        with pytest.raises(ValueError, match=rf"^{cls}\('{name}'\) is "
                                             r"closed$"):
            call()
    assert repr(obj) == f"<{cls} {name!r} closed>"
    assert obj.name == name
    obj.close()  # idempotent
    prefix = {"NamedMutex": "mutex", "NamedSemaphore": "sema",
              "NamedEvent": "event"}[cls]
    assert not shm_exists(f"__pyfastipc_{prefix}_{name}")


def test_close_under_a_waiting_thread_is_safe(pid_root, name):
    s1 = sync.NamedSemaphore(name, initial=0)
    s2 = sync.NamedSemaphore(name)
    got = []
    t = threading.Thread(target=lambda: got.append(s1.wait(timeout=30.0)))
    t.start()
    time.sleep(0.1)  # asleep in the wait
    s1.close()       # its memory stays mapped while the wait runs
    s2.post()
    t.join(30)
    assert got == [True] and s2.value() == 0
    with pytest.raises(ValueError, match="is closed"):
        s1.wait(blocking=False)
    s2.close()
    assert not shm_exists("__pyfastipc_sema_" + name)


def test_named_objects_cannot_be_pickled_or_copied(pid_root, name):
    for obj in (sync.NamedMutex(name), sync.NamedSemaphore(name),
                sync.NamedEvent(name)):
        for how in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match="cannot pickle"):
                how(obj)
        obj.close()


# The seconds of NamedSemaphore.wait(timeout=...) become
# int(timeout * 1_000_000_000) ns, with the errors Python gives for it.
@pytest.mark.parametrize("timeout, error, message", [
    (float("nan"), ValueError, "cannot convert float NaN to integer"),
    (float("inf"), OverflowError, "cannot convert float infinity to integer"),
    (float("-inf"), OverflowError,
     "cannot convert float infinity to integer"),
    (None, TypeError, "unsupported operand type(s) for *: 'NoneType' and "
                      "'int'"),
    (1e30, OverflowError, None),
    (10**20, OverflowError, None),
    (object(), TypeError, "unsupported operand type(s) for *"),
])
def test_named_semaphore_wait_timeout_errors(pid_root, name, timeout, error,
                                             message):
    s = sync.NamedSemaphore(name, initial=0)
    try:
        with pytest.raises(error) as exc:
            s.wait(timeout=timeout)
        if message is not None:
            assert str(exc.value).startswith(message)
        with pytest.raises(error):
            s.P(True, timeout)
        assert s.value() == 0
    finally:
        s.close()


@pytest.mark.parametrize("timeout", [0, 0.0, 1e-12, -0.0, 0.02,
                                     decimal.Decimal("0.001"),
                                     fractions.Fraction(1, 1000)])
def test_named_semaphore_wait_timeouts_in_seconds(pid_root, name, timeout):
    s = sync.NamedSemaphore(name, initial=0)
    assert s.wait(timeout=timeout) is False
    assert s.wait(True, timeout, 4) is False
    s.post()
    assert s.wait(timeout=timeout) is True
    s.post()
    assert s.wait(timeout=-1.0) is True  # negative: no limit
    s.close()


def test_named_semaphore_wait_arguments(pid_root, name):
    s = sync.NamedSemaphore(name, initial=1)
    with pytest.raises(TypeError):
        s.wait(True, 1.0, 16, 4)
    with pytest.raises(TypeError):
        s.wait(timeout_ns=5)      # wait takes seconds
    with pytest.raises(TypeError):
        s.wait_ns(timeout=5)      # wait_ns takes nanoseconds
    with pytest.raises(TypeError):
        s.wait_ns(timeout_ns=1.5)
    with pytest.raises(TypeError):
        s.wait(True, 1.0, spin=1.5)
    assert s.value() == 1
    assert s.wait(blocking=True, timeout=1.0, spin=0) is True
    s.close()


def _take(m, way):
    if way == "acquire":
        assert m.acquire() is True
    elif way == "acquire_ns":
        assert m.acquire_ns(20_000_000_000, spin=0) is True
    elif way == "with":
        m.__enter__()
    else:
        async def main():
            return await m.__aenter__()
        assert asyncio.run(main()) is m


@pytest.mark.parametrize("way", ["acquire", "acquire_ns", "with",
                                 "async with"])
def test_takeover_is_logged_once_whichever_way_it_is_taken(pid_root, name,
                                                           caplog, way):
    # The C methods report a takeover to NamedMutex._took_over, which logs
    # it; the Python wrappers did it after each acquisition before.
    caplog.set_level(logging.INFO, logger="dispatchkit")
    m = sync.NamedMutex(name)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_hold_named, args=(name, q))
    p.start()
    try:
        holder = q.get(timeout=60)
        os.kill(holder, signal.SIGKILL)
        p.join(30)
        _take(m, way)
        assert m.owner_died is True
        logged = [r for r in caplog.records if "taken over" in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].name == "dispatchkit.sync"
        assert logged[0].levelno == logging.WARNING
        assert repr(name) in logged[0].getMessage()
        m.release()
        _take(m, way)  # an ordinary acquisition logs nothing
        assert m.owner_died is False
        m.release()
        assert len([r for r in caplog.records
                    if "taken over" in r.getMessage()]) == 1
    finally:
        p.kill()
        p.join(30)
        m.close()


class _Reporting(sync.NamedMutex):
    def _took_over(self):
        self.reported = getattr(self, "reported", 0) + 1
        raise KeyError("from _took_over")


def test_takeover_hook_of_a_subclass(pid_root, name, caplog):
    # A subclass's _took_over is the one called; what it raises reaches
    # the caller, who then holds the mutex (as with the Python wrappers).
    m = _Reporting(name)
    plain_shm = sync.GuardedSharedMemory(name + "p", 64)
    plain = sync.Mutex(plain_shm.buf[:64])
    ctx = mp.get_context("fork")

    def hold():
        m.acquire()
        plain.acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    p = ctx.Process(target=hold)
    p.start()
    p.join(30)
    try:
        with pytest.raises(KeyError, match="from _took_over"):
            m.acquire_ns(20_000_000_000)
        assert m.reported == 1 and m.owner_pid() == os.getpid()
        m.release()
        # A plain Mutex taken over only says so in owner_died.
        caplog.set_level(logging.INFO, logger="dispatchkit")
        assert plain.acquire_ns(20_000_000_000) is True
        assert plain.owner_died is True
        assert [r for r in caplog.records
                if "taken over" in r.getMessage()] == []
        plain.release()
    finally:
        m.close()
        del plain
        plain_shm.close()


def test_named_objects_keep_weakrefs_and_user_attributes(pid_root, name):
    # Their own attributes live in slots; a user's go to a __dict__, and
    # weak references work, as with the Python wrappers before.
    m = sync.NamedMutex(name)
    ref = weakref.ref(m)
    assert vars(m) == {}
    m.label = "jobs"
    assert m.label == "jobs" and vars(m) == {"label": "jobs"}
    assert m.acquire() is True
    m.release()
    m.close()
    del m
    assert ref() is None
