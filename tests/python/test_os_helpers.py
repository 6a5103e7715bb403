"""The OS helpers the Python layer shares with the C core (os.h, through
src/python/os.c): process liveness with every edge case of os.h's table
(pid 0, negatives, pids past 2**31 - 1, EPERM, zombies, reaped children,
reused pids), the one name rule, and shared memory created with an exact
mode and opened with an owner check. Real processes and real /dev/shm."""
import errno
import os
import stat
import uuid

import pytest

from dispatchkit import _dk

SHM = "/dev/shm"


@pytest.fixture
def shm_name():
    n = "dk-os-" + uuid.uuid4().hex[:12]
    yield n
    try:
        os.unlink(f"{SHM}/{n}")
    except FileNotFoundError:
        pass


# ---- liveness ----------------------------------------------------------


@pytest.mark.parametrize("pid", [0, -1, -2, -2**31, 2**31, 2**32 - 1,
                                 2**63, 2**100, -2**100])
def test_values_that_are_not_pids_name_no_process(pid):
    # kill(0, 0) and kill(-1, 0) succeed (our group, every process): the
    # Python helper asked exactly that before and called them alive.
    assert _dk._pid_alive(pid) is False
    assert _dk._pid_alive(pid, 0) is False
    assert _dk._pid_start_time(pid) is None


def test_own_process_and_its_start_time():
    me = os.getpid()
    assert _dk._pid_alive(me) is True
    ticks = _dk._pid_start_time(me)
    assert isinstance(ticks, int) and ticks >= 0
    assert _dk._pid_start_time(me) == ticks
    assert _dk._pid_alive(me, ticks) is True
    # Another start time: the pid now names another process.
    assert _dk._pid_alive(me, ticks + 1) is False
    # Junk a PID file may hold (negative, past 64 bits) matches nothing.
    assert _dk._pid_alive(me, -1) is False
    assert _dk._pid_alive(me, 2**80) is False
    assert _dk._pid_alive(me, None) is True


def _exited_child():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def test_zombie_is_dead():
    pid = _exited_child()
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        os.kill(pid, 0)  # kill() still finds it
        assert _dk._pid_alive(pid) is False
    finally:
        os.waitpid(pid, 0)


def test_reaped_child_is_dead():
    pid = _exited_child()
    os.waitpid(pid, 0)
    assert _dk._pid_alive(pid) is False
    assert _dk._pid_start_time(pid) is None


def test_another_users_process_is_alive():
    # kill(pid, 0) fails with EPERM: the process exists. As root, a child
    # that became nobody asks about its root parent.
    target = 1
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            if os.geteuid() == 0:
                target = os.getppid()
                os.setgid(65534)
                os.setuid(65534)
            try:
                os.kill(target, 0)
                code = 2  # no EPERM here: not the case under test
            except PermissionError:
                code = 0 if _dk._pid_alive(target) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_pid_arguments_must_be_ints():
    with pytest.raises(TypeError, match="pid must be an int"):
        _dk._pid_alive("1")
    with pytest.raises(TypeError, match="pid must be an int"):
        _dk._pid_start_time(1.0)
    with pytest.raises(TypeError, match="start_time"):
        _dk._pid_alive(os.getpid(), "0")


# ---- names -------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    ("", "non-empty"),
    ("a/b", "'/'"),
    ("/", "'/'"),
    ("a\0b", "NUL"),
    (".", "'.'"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("x" * 9, "at most 8 bytes"),
    ("\u00e9" * 5, "at most 8 bytes"),  # 10 bytes of UTF-8
])
def test_name_rule(bad, message):
    with pytest.raises(ValueError, match=message):
        _dk._check_name(bad, 8)


def test_names_the_rule_allows():
    for good in ("a", ".a", "a.", "a b", "a\tb", "\u00e9" * 4, "x" * 8):
        _dk._check_name(good, 8)


def test_name_must_be_a_str():
    with pytest.raises(TypeError, match="name must be a str"):
        _dk._check_name(b"abc", 8)
    with pytest.raises(ValueError):  # UnicodeEncodeError: a lone surrogate
        _dk._check_name("\udc80", 8)


# ---- shared memory with an exact mode ----------------------------------


def test_create_sets_the_exact_mode_whatever_the_umask(shm_name):
    old = os.umask(0o077)
    try:
        fd = _dk._shm_create(shm_name, 0o666, 4096)
    finally:
        os.umask(old)
    try:
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o666
        assert st.st_size == 4096 and st.st_uid == os.geteuid()
        assert not os.get_inheritable(fd)
        with pytest.raises(FileExistsError):
            _dk._shm_create(shm_name, 0o600, 64)  # O_EXCL
        fd2 = _dk._shm_open(shm_name, True)
        assert os.fstat(fd2).st_ino == st.st_ino
        os.close(fd2)
    finally:
        os.close(fd)
    _dk._shm_unlink(shm_name)
    with pytest.raises(FileNotFoundError):
        _dk._shm_unlink(shm_name)
    with pytest.raises(FileNotFoundError):
        _dk._shm_open(shm_name, False)


def test_open_refuses_another_users_object_when_asked(shm_name):
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    fd = _dk._shm_create(shm_name, 0o600, 64)
    try:
        os.fchown(fd, 65534, 65534)
        with pytest.raises(PermissionError,
                           match="owned by uid 65534") as e:
            _dk._shm_open(shm_name, True)
        assert e.value.errno == errno.EPERM
        assert e.value.filename == "/" + shm_name
        os.close(_dk._shm_open(shm_name, False))
    finally:
        os.close(fd)
        _dk._shm_unlink(shm_name)


def test_bad_create_arguments_create_nothing(shm_name):
    for name in ("", ".", "a/b", "a\0b", "n" * 254):
        with pytest.raises(ValueError):
            _dk._shm_create(name, 0o600, 64)
    with pytest.raises(ValueError, match="size"):
        _dk._shm_create(shm_name, 0o600, -1)
    with pytest.raises(OverflowError):
        _dk._shm_create(shm_name, 0o600, 2**63)
    with pytest.raises(ValueError, match="mode"):
        _dk._shm_create(shm_name, 0o10000, 64)
    with pytest.raises(TypeError):
        _dk._shm_create(shm_name, 0o600, 1.5)
    assert not os.path.exists(f"{SHM}/{shm_name}")

