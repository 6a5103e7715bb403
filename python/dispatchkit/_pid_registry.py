"""The PID-directory protocol under dispatchkit.sync's named objects:
``GuardedSharedMemory`` (fastipc's), a POSIX shared memory segment shared
by name, whose users register in a directory so that the last one to
leave removes it. The Named* wrappers on top are in ``_sync_named``.

Interoperable with fastipc: the same names and the same PID-tracking
directory, so that processes of either library share one segment::

    /dev/shm/NAME                         the segment
    $FASTIPC_PID_DIR/NAME.pids/<pid>      one file per process using it
                                          ($FASTIPC_PID_DIR defaults to
                                          /dev/shm/fastipc)

A process closing a segment prunes the files of dead processes, removes
its own, and unlinks the segment when no live process is left, whichever
library each process uses.

What we do beyond fastipc, and why:

* Attach and last-close are serialised with ``flock`` on the ``.pids``
  directory, so a process attaching cannot lose its segment to a
  concurrent last ``close()`` (fastipc's attach/unlink window). fastipc
  processes do not take the lock; against them the window remains.
* Several handles on one name in one process are counted: closing one
  does not unlink the segment under the others (fastipc does, and a third
  handle then gets a fresh segment: split brain).
* A segment whose PID directory lists only dead processes is stale (every
  user was killed): the next opener unlinks it and creates a fresh one, so
  a crashed run cannot leave a held mutex or a stale semaphore count
  behind. The PID file also records the process's start time, so a pid
  reused by an unrelated process does not keep a segment alive.
* Liveness, names and the exact-mode create are os.h's, through
  ``dispatchkit._dk`` (src/python/os.c): the same answers as the C core's
  (pid 0, negatives and pids past 2**31 - 1 are no process; EPERM is a live
  process of another user; a zombie is dead; a file name that is not a
  decimal pid is not a PID file).
* A forked child registers its own PID file for the segments it inherits,
  so the parent's close does not unlink them under it.
* Segments and PID files are created 0600 and PID directories 0700 unless
  ``mode`` asks otherwise; a PID directory that is a symlink planted by
  another user, a ``.pids`` entry that is a symlink or belongs to another
  user, and a segment owned by another user (with the default mode) are
  refused with ``PermissionError``.
* Names are validated (os.h's rule): no ``/``, not ``.``, no ``..``, no
  NUL, length within NAME_MAX with ``.pids`` added.
* Closing the memory under a live primitive never leaves it pointing at
  unmapped memory (fastipc segfaults): primitives map shared memory a
  second time for themselves (or keep other buffers exported).

The protocol. Each of our steps on a segment runs under ``flock(LOCK_EX)``
on its ``.pids`` directory::

    attach (A)                              close (C)
    A1 mkdir/open NAME.pids (O_NOFOLLOW,    C1 flock NAME.pids
       ours), flock it, check the path      C2 prune dead PID files
       still names what we locked           C3 remove our PID file (our
    A2 prune dead PID files: pid gone,         last handle here only)
       zombie, or another start time        C4 no live user left:
    A3 shm_open NAME; absent: create it        shm_unlink NAME, rmdir
       O_EXCL, exact mode; stale: (R)       C5 unlock
    A4 write our PID file (start time)
    A5 unlock

Create vs create: the lock orders them, and the second finds the first's
segment and PID file::

    P0                                      P1
    A1 flock NAME.pids                      A1 flock NAME.pids: waits
    A3 shm_open: ENOENT; create O_EXCL
    A4 write P0's PID file
    A5 unlock                               (holds the lock)
                                            A2 P0 alive: nothing pruned
                                            A3 shm_open: P0's segment
                                            A4 write P1's PID file

fastipc processes take no lock: against one, O_EXCL decides (the loser's
create fails with EEXIST and it tries again), and a segment smaller than
asked for is one its fastipc creator has not sized yet (it ftruncates
after creating): tried again until it is, or until it is older than
_SIZING_GRACE_S with no live user, when it is stale.

Create vs reclaim-stale (R): a segment is stale when A2 pruned at least
one PID file and left no live user (and no other handle in this process
uses it): every user was killed. A directory with no PID file at all is
not enough: a fastipc creator leaves exactly that between its create and
its PID file::

    P0                                      P1
    A2 prune: only dead users               A1 flock: waits
    A3 shm_unlink; create afresh (R)
    A4 write P0's PID file
    A5 unlock                               (holds the lock)
                                            A2 P0 alive: nothing pruned
                                            A3 shm_open: P0's new segment

Close vs open: the last closer removes the directory under the lock; an
opener that was waiting for the lock then holds it on a directory nobody
else can find, so it checks that the path still names the directory it
locked, and starts again if not::

    P0 (the last user)                      P1
    C1 flock NAME.pids                      A1 open NAME.pids; flock: waits
    C2-C4 nobody else: shm_unlink,
          rmdir NAME.pids
    C5 unlock                               (holds a lock on the removed
                                            directory)
                                            A1 stat(path) is not it: close,
                                               mkdir afresh, flock
                                            A3 shm_open: ENOENT; create

Had P1 taken the lock first, its PID file would make P0's C4 see a live
user and keep the segment.

Holder death: a process killed while attached leaves its PID file, and
the next A2 or C2 prunes it (os.h: kill() says ESRCH, /proc says zombie,
or the start time differs because the pid was reused). The kernel drops
a killed process's flock with its fds, so nobody waits for a dead one.
Killed between A3 and A4, a creator leaves a segment with no PID file:
not stale by (R), so the next opener attaches to it, and its last closer
removes it::

    P0                                      P1
    A4 write P0's PID file
    A5 unlock
    (killed: its PID file stays)
                                            A1 flock NAME.pids
                                            A2 prune P0's file: dead
                                            A3 shm_open: stale (R): recreate
                                            A4 write P1's PID file
"""
import atexit
import errno
import fcntl
import logging
import mmap
import os
import random
import stat
import threading
import time
import weakref
from typing import List, Optional, Tuple

from dispatchkit import _dk

__all__ = ["DEFAULT_PID_DIR", "GuardedSharedMemory", "NoShmFoundError",
           "check_name"]

DEFAULT_PID_DIR = "/dev/shm/fastipc"
NAME_MAX = 255
PIDS_SUFFIX = ".pids"
# A segment smaller than asked for, with no live user, is only taken for
# one being created (fastipc sizes it after creating it, without a lock)
# while it is younger than this; older, it is stale and reclaimed.
_SIZING_GRACE_S: float = 0.25

_log = logging.getLogger("dispatchkit.sync")


class NoShmFoundError(FileNotFoundError):
    """attach_only=True and the shared memory segment does not exist."""


def check_name(name: object, prefix: str = "") -> None:
    """os.h's name rule for the segment ``prefix + name``: TypeError or
    ValueError naming the rule broken, the length limit counted for
    ``name`` (the ``.pids`` directory's name must fit NAME_MAX too)."""
    _dk._check_name(name, NAME_MAX - len(PIDS_SUFFIX) - len(prefix))


def _check_mode(mode: object) -> None:
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError("mode must be an int between 0 and 0o777")
    if mode & 0o600 != 0o600:
        raise ValueError("mode must give the owner read and write (0o600)")


def _dir_mode(mode: int) -> int:
    # Whoever may read a segment may list its users: r -> rx.
    return mode | ((mode & 0o444) >> 2)


# Handles open in this process, per segment, so that closing one handle
# does not unlink the segment under another; and the open handles, so a
# forked child can register itself for them.
_registry_lock = threading.Lock()
_handle_counts: "dict[Tuple[int, int, str], int]" = {}
_open_handles: "weakref.WeakSet[GuardedSharedMemory]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for h in list(_open_handles):
        try:
            h._write_pid_file()
        except Exception:
            pass


def _close_all_at_exit() -> None:
    # Held weakly, so a handle the program drops is closed (and its
    # segment unlinked if it was the last user) by __del__ right away;
    # fastipc's atexit.register(self.close) keeps every handle alive.
    for h in list(_open_handles):
        if h._try_cleanup_on_exit:
            try:
                h.close()
            except Exception:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


class GuardedSharedMemory:
    """A POSIX shared memory segment with PID tracking, attached or created
    by name (fastipc's GuardedSharedMemory).

    ``GuardedSharedMemory(name, size, attach_only=False, *, pid_dir=None,
    max_attempts=128, backoff_base=0.002, try_cleanup_on_exit=True,
    mode=0o600)``

    ``pid_dir`` defaults to ``$FASTIPC_PID_DIR``, else ``/dev/shm/fastipc``
    (an explicit ``pid_dir`` wins over the environment; fastipc lets the
    environment win). ``mode`` is the permission of a segment this call
    creates (its PID directory gets the matching x bits).
    """

    def __init__(self, name: str, size: int, attach_only: bool = False, *,
                 pid_dir: Optional[str] = None, max_attempts: int = 128,
                 backoff_base: float = 0.002,
                 try_cleanup_on_exit: bool = True,
                 mode: int = 0o600) -> None:
        # Everything close()/__del__ look at exists before anything fails.
        self._closed = True
        self._unlinked = False
        self._try_cleanup_on_exit = bool(try_cleanup_on_exit)
        self._mmap: Optional[mmap.mmap] = None
        self._buf: Optional[memoryview] = None
        self._root_fd = -1
        self._dir_fd = -1
        self._key: Tuple[int, int, str] = (-1, -1, "")  # set by _attach
        self.created = False
        self.reclaimed = False

        check_name(name)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError("size must be a positive integer")
        _check_mode(mode)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._name = name
        self._dir_name = name + PIDS_SUFFIX
        self._mode = mode
        self._size = size
        if pid_dir is None:
            pid_dir = os.environ.get("FASTIPC_PID_DIR", DEFAULT_PID_DIR)
        self._pid_root = pid_dir.rstrip("/") or "/"
        self._pdir = f"{self._pid_root}/{self._dir_name}"

        self._root_fd = self._open_root()
        try:
            self._attach(size, attach_only, max_attempts, backoff_base)
        except BaseException:
            self._close_fds()
            raise
        self._closed = False
        with _registry_lock:
            _open_handles.add(self)

    # ---- the PID directory ---------------------------------------------

    def _open_root(self) -> int:
        root = self._pid_root
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            os.makedirs(root, mode=_dir_mode(self._mode), exist_ok=True)
            st = os.lstat(root)
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (os.geteuid(), 0):
            raise PermissionError(
                errno.EPERM,
                f"refusing PID directory: it is a symlink owned by uid "
                f"{st.st_uid}, not by this user (planted?)", root)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Whoever owns the root, or may write it without the sticky bit,
        # can delete or replace our .pids directories.
        st = os.fstat(fd)
        why = None
        if st.st_uid not in (os.geteuid(), 0):
            why = f"it is owned by uid {st.st_uid}, not by this user or root"
        elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            why = (f"others may write it (mode "
                   f"{stat.S_IMODE(st.st_mode):04o}) and it is not sticky")
        if why is not None:
            os.close(fd)
            raise PermissionError(errno.EPERM,
                                  f"refusing PID directory: {why}", root)
        return fd

    def _open_pid_dir(self) -> int:
        """Open (creating it if needed) and lock this segment's .pids
        directory; returns its fd, locked."""
        for _ in range(64):
            made = False
            try:
                os.mkdir(self._dir_name, _dir_mode(self._mode),
                         dir_fd=self._root_fd)
                made = True
            except FileExistsError:
                pass
            try:
                fd = os.open(self._dir_name,
                             os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC, dir_fd=self._root_fd)
            except FileNotFoundError:
                continue  # removed by a last close() in between
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.lstat(self._dir_name, dir_fd=self._root_fd)
                what = ("a symlink" if stat.S_ISLNK(st.st_mode)
                        else "not a directory")
                raise PermissionError(
                    errno.EPERM,
                    f"refusing PID directory: it is {what} (owner uid "
                    f"{st.st_uid}; planted?)", self._pdir) from None
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                os.close(fd)
                raise PermissionError(
                    errno.EPERM,
                    f"refusing PID directory owned by uid {st.st_uid}, not "
                    f"by this user", self._pdir)
            if made:
                os.fchmod(fd, _dir_mode(self._mode))  # whatever the umask
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A last close() may have removed the directory while we
            # waited for the lock: then start again with a fresh one.
            try:
                now = os.stat(self._dir_name, dir_fd=self._root_fd,
                              follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev,
                                                                 st.st_ino):
                return fd
            os.close(fd)
        raise RuntimeError(f"PID directory {self._pdir!r} keeps vanishing")

    def _pid_entries(self) -> List[Tuple[int, Optional[int]]]:
        """(pid, token) for every PID file, token being the start time the
        file records (None for fastipc's empty files)."""
        out: List[Tuple[int, Optional[int]]] = []
        for fn in os.listdir(self._dir_fd):
            if not (fn.isascii() and fn.isdigit()):
                continue  # not a pid ("²" and "٣" are digits to isdigit)
            token: Optional[int] = None
            try:
                fd = os.open(fn, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self._dir_fd)
                try:
                    data = os.read(fd, 64)
                finally:
                    os.close(fd)
                token = int(data) if data.strip() else None
            except (OSError, ValueError):
                pass
            out.append((int(fn), token))
        return out

    def _prune(self) -> Tuple[int, bool]:
        """Delete the PID files of dead processes; returns (number pruned,
        whether another live process is registered)."""
        pruned, others = 0, False
        me = os.getpid()
        for pid, token in self._pid_entries():
            if pid == me:
                continue
            if _dk._pid_alive(pid, token):
                others = True
                continue
            try:
                os.unlink(str(pid), dir_fd=self._dir_fd)
                pruned += 1
            except FileNotFoundError:
                pass
        return pruned, others

    def _write_pid_file(self) -> None:
        pid = os.getpid()
        fd = os.open(str(pid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                     | os.O_NOFOLLOW | os.O_CLOEXEC, self._mode & 0o666,
                     dir_fd=self._dir_fd)
        try:
            token = _dk._pid_start_time(pid)
            if token is not None:
                os.write(fd, b"%d\n" % token)
        finally:
            os.close(fd)

    def _remove_pid_file(self) -> None:
        try:
            os.unlink(str(os.getpid()), dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass

    # ---- attach / create -------------------------------------------------

    def _create(self, size: int) -> int:
        # O_EXCL, exactly self._mode whatever the umask, sized; a failure
        # leaves no segment behind (os.h's dk__os_shm_create).
        return _dk._shm_create(self._name, self._mode, size)

    def _attach_once(self, size: int, attach_only: bool) -> bool:
        """One attempt, under the directory lock. Returns True when
        attached, False to retry after a pause."""
        pruned, others = self._prune()
        with _registry_lock:
            ours = _handle_counts.get(self._key, 0) > 0
        created = False
        try:
            # A private segment (no group or other access) owned by
            # another user is refused: PermissionError.
            fd = _dk._shm_open(self._name, self._mode & 0o077 == 0)
        except FileNotFoundError:
            if attach_only:
                raise NoShmFoundError(
                    f"Shared memory segment '{self._name}' does not exist")
            try:
                fd = self._create(size)
            except FileExistsError:
                return False  # created by someone else meanwhile
            created = True
        try:
            st = os.fstat(fd)
            in_use = created or others or ours or attach_only
            all_died = pruned and not in_use
            too_small = st.st_size < size
            if too_small and not all_died and (
                    in_use or time.time() - st.st_mtime < _SIZING_GRACE_S):
                return False  # a creator has not sized it yet
            if all_died or (too_small and not in_use):
                # Every process that used it was killed, or it is too small
                # and no live process uses it (its creator was killed before
                # sizing it, or it was truncated: nobody can ever attach to
                # it): start afresh.
                stale, fd = fd, -1
                fd = self._replace_stale(stale, size)
                if fd < 0:
                    return False
                created = True
                self.reclaimed = True
                if all_died:
                    _log.info("shared memory %r reclaimed: every process "
                              "that used it had died", self._name)
                st = os.fstat(fd)
            self._mmap = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_WRITE)
        except BaseException:
            if created:  # undo what this call made
                try:
                    _dk._shm_unlink(self._name)
                except FileNotFoundError:
                    pass
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        self._buf = memoryview(self._mmap)
        self._size = st.st_size
        self.created = created
        return True

    def _replace_stale(self, stale_fd: int, size: int) -> int:
        """Close and unlink a stale segment and create it afresh: the new
        fd, or -1 when another process created it first."""
        os.close(stale_fd)
        try:
            _dk._shm_unlink(self._name)
        except FileNotFoundError:
            pass
        try:
            return self._create(size)
        except FileExistsError:
            return -1

    def _attach(self, size: int, attach_only: bool, max_attempts: int,
                backoff_base: float) -> None:
        st = os.fstat(self._root_fd)
        self._key = (st.st_dev, st.st_ino, self._name)
        for _ in range(max_attempts):
            self._dir_fd = self._open_pid_dir()  # locked
            done = False
            try:
                if self._attach_once(size, attach_only):
                    try:
                        self._write_pid_file()
                    except FileNotFoundError:
                        # A fastipc closer removed the directory (it does
                        # not take the lock): start again.
                        self.detach()
                    else:
                        with _registry_lock:
                            _handle_counts[self._key] = (
                                _handle_counts.get(self._key, 0) + 1)
                        done = True
            except NoShmFoundError:
                self._rmdir_if_empty()  # still locked: nobody is attaching
                raise
            except BaseException:
                self.detach()
                if not done:
                    # A failed create leaves nothing: the segment was
                    # unlinked above; the .pids directory goes too if it
                    # is empty (we still hold its lock).
                    self._rmdir_if_empty()
                raise
            finally:
                fcntl.flock(self._dir_fd, fcntl.LOCK_UN)
                if not done:
                    os.close(self._dir_fd)
                    self._dir_fd = -1
            if done:
                return
            time.sleep(backoff_base * (1 + random.random()))
        raise RuntimeError(f"Failed to attach/create shm '{self._name}' "
                           f"after {max_attempts} attempts")

    def _rmdir_if_empty(self) -> None:
        try:
            os.rmdir(self._dir_name, dir_fd=self._root_fd)
        except OSError:
            pass  # not empty: a fastipc process or a stray file

    # ---- public API ------------------------------------------------------

    @property
    def buf(self) -> memoryview:
        if self._buf is None or self._closed:
            raise ValueError("Shared memory is closed")
        return self._buf

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    def get_num_procs(self) -> int:
        """Number of live processes registered as using the segment."""
        if self._dir_fd < 0:
            return 0
        try:
            return sum(1 for pid, token in self._pid_entries()
                       if _dk._pid_alive(pid, token))
        except FileNotFoundError:
            return 0

    def _unregister(self) -> int:
        """Stop counting this handle among the process's handles of its
        name; returns how many are left."""
        with _registry_lock:
            _open_handles.discard(self)
            left = _handle_counts.get(self._key, 1) - 1
            if left > 0:
                _handle_counts[self._key] = left
            else:
                _handle_counts.pop(self._key, None)
        return left

    def close(self) -> None:
        """Stop using the segment: prune dead processes' PID files, remove
        ours, and unlink the segment if no live process (and no other
        handle in this process) uses it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        left = self._unregister()
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX)
            try:
                _, others = self._prune()
                if left <= 0:
                    self._remove_pid_file()
                if left <= 0 and not others:
                    self.unlink()
                    self._rmdir_if_empty()
            finally:
                fcntl.flock(self._dir_fd, fcntl.LOCK_UN)
        except FileNotFoundError:
            pass  # the directory went away (removed by a fastipc closer)
        finally:
            self.detach()
            self._close_fds()

    def unlink(self) -> None:
        """Remove the segment's name (idempotent; mappings stay valid)."""
        if self._unlinked:
            return
        try:
            _dk._shm_unlink(self._name)
        except FileNotFoundError:
            pass
        self._unlinked = True

    def detach(self) -> None:
        """Unmap, unless primitives still use the memory: then the mapping
        lives until the last of them is gone (never a dangling pointer)."""
        buf, mm = self._buf, self._mmap
        self._buf = self._mmap = None
        try:
            if buf is not None:
                buf.release()
            if mm is not None:
                mm.close()
        except BufferError:
            pass  # exported: freed with its last user

    def _close_fds(self) -> None:
        for attr in ("_dir_fd", "_root_fd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, -1)

    def __enter__(self) -> "GuardedSharedMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_try_cleanup_on_exit", False):
            try:
                self.close()
            except Exception:
                pass
        elif not getattr(self, "_closed", True):
            self._forget()

    def _forget(self) -> None:
        """A handle dropped without cleanup (try_cleanup_on_exit=False):
        its PID file stays, as asked, but it no longer counts as one of
        this process's handles, so the close of a later handle of the same
        name is the process's last (as in fastipc, where registration is
        per process): it removes the PID file, and the segment and its
        directory when no live process is left."""
        self._closed = True
        self._unregister()
        self.detach()
        self._close_fds()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._size}"
        return f"<GuardedSharedMemory name={self._name!r} {state}>"

