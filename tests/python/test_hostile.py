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
