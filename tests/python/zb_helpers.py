"""What the zerobuffer tests (test_zerobuffer*.py) share: a buffer name per
test whose every file system name is removed afterwards, a third party's
mapping of a buffer's segment, and Python children started from source
text. A test module takes the fixture with ``from zb_helpers import name``.
"""
import mmap
import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Iterator, List

import pytest

PY = sys.executable


def names_of(name: str) -> List[str]:
    """Every file system name a buffer called name has while it exists."""
    return [f"/dev/shm/{name}", f"/dev/shm/sem.sem-w-{name}",
            f"/dev/shm/sem.sem-r-{name}", f"/tmp/zerobuffer/{name}.lock"]


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A buffer name of this test's own; the buffer and a duplex channel's
    two buffers of that name are removed afterwards, whatever the test
    left behind."""
    n = f"dkzb-{os.getpid()}-{request.node.name[:50]}"
    n = "".join(c if c.isalnum() or c in "-_" else "_" for c in n)
    yield n
    for base in (n, f"{n}_request", f"{n}_response"):
        for path in names_of(base):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def segment(name: str) -> mmap.mmap:
    """The buffer's segment as a third party maps it."""
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def child(code: str, *args: object, prelude: str = "",
          **popen: Any) -> subprocess.Popen:
    """Start a Python child running prelude + code (sys.argv[1:] = args),
    its stdout and stderr piped (popen: more of Popen's arguments)."""
    return subprocess.Popen(
        [PY, "-c", prelude + textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finish(p: subprocess.Popen, timeout: float = 60) -> str:
    """The child's stdout once it has exited 0 (bounded)."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"child timed out: {err.decode()}")
    assert p.returncode == 0, err.decode()
    return out.decode()


def wait_line(proc: subprocess.Popen, expect: str,
              timeout: float = 10) -> None:
    """Read stdout lines until one equals expect (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode().strip()
        if line == expect:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"child did not print {expect!r}: "
                         f"{proc.stderr.read().decode()}")
