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
    """GCC 12's ASan allocator takes no lock around fork(): a pool worker
    freeing memory at that instant leaves a size-class lock held in the
    child, which then hangs in malloc. In the sanitizer run, fork once the
    workers have parked (bounded: a worker blocked in a callback never
    parks). glibc's malloc is fork-safe; the normal run forks at once."""
    import time
    import dispatchkit._dk as ext
    for _ in range(2000):
        if ext._pool_quiescent():
            return
        time.sleep(0.001)


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
            or pathlib.Path(sys.prefix).resolve() != venv.resolve()
            or not (root / "Makefile").exists()):
        return
    if subprocess.run(["make", "-q", "install"], cwd=root,
                      capture_output=True).returncode == 0:
        return
    subprocess.run(["make", "-s", "install"], cwd=root, check=True)
