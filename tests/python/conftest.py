import os
import sys
import threading

import pytest


@pytest.fixture
def unraisable():
    """Collect what reaches sys.unraisablehook during the test."""
    seen = []
    lock = threading.Lock()
    old = sys.unraisablehook

    def hook(info):
        with lock:
            seen.append(info)

    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = old


@pytest.fixture
def shm_pid_dir():
    """A private $FASTIPC_PID_DIR-to-be (not yet created) on /dev/shm, a
    tmpfs like the default /dev/shm/fastipc, removed afterwards. pytest's
    tmp_path lies on the disk, where each named object's pid file costs a
    journaled create and unlink: 1 to 3 ms a create-close cycle there
    against about 0.2 ms here (3 to 7 times as long, loaded machine),
    which made the loop tests wait on the disk."""
    import shutil
    import tempfile
    root = tempfile.mkdtemp(prefix="dk-test-pids-", dir="/dev/shm")
    try:
        yield os.path.join(root, "pids")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pytest_sessionstart(session):
    """In the sanitizer run, make sure the instrumented extension is the one
    under test, not an ordinary build that happens to be installed."""
    import os
    _install_if_stale()
    site = os.environ.get("PYTHONPATH", "")
    if os.environ.get("DK_SANITIZER_RUN") == "1":
        import dispatchkit._dk as ext
        assert site and ext.__file__.startswith(site), (ext.__file__, site)
        os.register_at_fork(before=_park_pool_before_fork)


def _park_pool_before_fork():
    """GCC 12's ASan allocator takes no lock around fork(): a thread inside
    it at that instant (allocating, or in ASan's thread set-up or teardown)
    leaves one of its locks held in the child, whose next malloc or thread
    start then waits on that lock for good. Seen: a child of
    test_futexword_wakes_another_process[fork] that never said "ready";
    reproduced with Python threads churning beside a fork loop, the child
    stuck in SizeClassAllocator64::GetFromAllocator's region mutex under
    AsanThread::Init. Not only pool workers allocate: the event, relief
    and watcher threads, a worker retiring after its idle time, a Python
    thread that released the GIL. In the sanitizer run, fork once every
    other thread of the process is asleep (a thread waiting for a lock
    another one holds sleeps while the holder runs, so all asleep means
    none is inside the allocator); bounded, since a thread may spin for
    good. A thread can still wake between this look and fork(): this
    narrows the window, it cannot close it. glibc's malloc is fork-safe:
    the normal run forks at once, and asserts the same things."""
    import threading
    import time
    me = str(threading.get_native_id())

    def all_asleep():
        return all(_asleep(tid) for tid in os.listdir("/proc/self/task")
                   if tid != me)

    for _ in range(2000):
        # Twice over: the threads are read one after another, and one read
        # asleep may have woken by the time the last is read.
        if all_asleep() and all_asleep():
            return
        time.sleep(0.001)


def _asleep(tid):
    """True when thread tid of this process is in an interruptible sleep
    (a futex, poll or epoll wait), or is gone."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "S"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Expected failures explain themselves in every run, whatever addopts
    the caller passes (make test overrides them): the summary lists each
    xfail and xpass with its reason, as -rxX would."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    for char in "xX":
        if char not in reporter.reportchars:
            reporter.reportchars += char


def _install_if_stale():
    """`.venv/bin/python -m pytest tests/python/test_x.py` tests the tree as
    it is: when a source of the package changed since the last install,
    `make install` (the Makefile's own rule, a no-op when nothing changed)
    runs first, before any test imports dispatchkit. Only for this
    checkout's .venv: the sanitizer run and `make test-pythons` install
    their own builds."""
    import os
    import pathlib
    import subprocess
    root = pathlib.Path(__file__).resolve().parents[2]
    venv = root / ".venv"
    if (os.environ.get("DK_SANITIZER_RUN") == "1"
            or "PYTEST_XDIST_WORKER" in os.environ  # the controller did it
            or pathlib.Path(sys.prefix).resolve() != venv.resolve()
            or not (root / "Makefile").exists()):
        return
    if subprocess.run(["make", "-q", "install"], cwd=root,
                      capture_output=True).returncode == 0:
        return
    subprocess.run(["make", "-s", "install"], cwd=root, check=True)
