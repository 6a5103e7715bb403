"""Named cross-process primitives of dispatchkit.sync, and the PID-tracked
shared memory under them (fastipc's ``GuardedSharedMemory``).

Interoperable with fastipc's named helpers: the same POSIX shared memory
names (``/__pyfastipc_{event,mutex,sema}_<name>``), sizes and layouts, and
the same PID-tracking directory (``$FASTIPC_PID_DIR`` or
``/dev/shm/fastipc``, then ``<shm name>.pids/<pid>``, one file per process
using the segment). A process closing a segment prunes the files of dead
processes, removes its own, and unlinks the segment when no live process
is left, whichever library each process uses.

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
* A forked child registers its own PID file for the segments it inherits,
  so the parent's close does not unlink them under it.
* Segments and PID files are created 0600 and PID directories 0700 unless
  ``mode`` asks otherwise; a PID directory that is a symlink planted by
  another user, a ``.pids`` entry that is a symlink or belongs to another
  user, and a segment owned by another user (with the default mode) are
  refused with ``PermissionError``.
* Names are validated: no ``/``, no ``..``, no NUL, length within NAME_MAX.
* Closing the memory under a live primitive never leaves it pointing at
  unmapped memory (fastipc segfaults): primitives map shared memory a
  second time for themselves (or keep other buffers exported).
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
import typing
import weakref
from types import TracebackType
from typing import List, Optional, Tuple, Type

import _posixshmem  # type: ignore[import-not-found]

from dispatchkit._dk import SyncAtomicU32 as _AtomicU32
from dispatchkit._dk import SyncEvent as _Event
from dispatchkit._dk import SyncMutex as _Mutex
from dispatchkit._dk import SyncSemaphore as _Semaphore

__all__ = ["GuardedSharedMemory", "NoShmFoundError", "NamedEvent",
           "NamedMutex", "NamedSemaphore"]

DEFAULT_PID_DIR = "/dev/shm/fastipc"
EVENT_PREFIX = "__pyfastipc_event_"
MUTEX_PREFIX = "__pyfastipc_mutex_"
SEMAPHORE_PREFIX = "__pyfastipc_sema_"
_MUTEX_MAGIC = 0x4D555458
_NAME_MAX = 255
_PIDS_SUFFIX = ".pids"
# A segment smaller than asked for, with no live user, is only taken for
# one being created (fastipc sizes it after creating it, without a lock)
# while it is younger than this; older, it is stale and reclaimed.
_SIZING_GRACE_S: float = 0.25

_log = logging.getLogger("dispatchkit.sync")


class NoShmFoundError(FileNotFoundError):
    """attach_only=True and the shared memory segment does not exist."""


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("name must be a non-empty string")
    if "/" in name:
        raise ValueError("name cannot contain '/' characters")
    if ".." in name:
        raise ValueError("name cannot contain '..'")
    if "\0" in name:
        raise ValueError("name cannot contain NUL characters")


def _check_mode(mode: object) -> None:
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError("mode must be an int between 0 and 0o777")
    if mode & 0o600 != 0o600:
        raise ValueError("mode must give the owner read and write (0o600)")


def _dir_mode(mode: int) -> int:
    # Whoever may read a segment may list its users: r -> rx.
    return mode | ((mode & 0o444) >> 2)


def _stat_fields(pid: int) -> Optional[List[bytes]]:
    """The fields of /proc/<pid>/stat after the command name (which may
    hold spaces and parentheses): [0] is the state, [19] the start time.
    None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()


def _start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks: with the pid, it names
    one process (a pid can be reused, the pair cannot)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        return int(fields[19])
    except (TypeError, IndexError, ValueError):
        return None


def _alive(pid: int, token: Optional[int] = None) -> bool:
    """Does process pid still exist (and, if token is a start time, is it
    still the same process)? A zombie (dead, not yet reaped by its parent)
    does not count, though kill() still finds it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    fields = _stat_fields(pid)
    if fields and fields[0] in (b"Z", b"X"):
        return False
    if token is not None:
        now = _start_time(pid)
        if now is not None and now != token:
            return False  # the pid was reused
    return True


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

        _check_name(name)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError("size must be a positive integer")
        _check_mode(mode)
        if len((name + _PIDS_SUFFIX).encode()) > _NAME_MAX:
            raise ValueError(f"name too long (at most "
                             f"{_NAME_MAX - len(_PIDS_SUFFIX)} bytes)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._name = name
        self._posix_name = "/" + name
        self._dir_name = name + _PIDS_SUFFIX
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
            if not fn.isdigit():
                continue
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
            if _alive(pid, token):
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
            token = _start_time(pid)
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
        fd = _posixshmem.shm_open(self._posix_name,
                                  os.O_RDWR | os.O_CREAT | os.O_EXCL,
                                  self._mode)
        try:
            os.fchmod(fd, self._mode)  # exactly, whatever the umask
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink(self._posix_name)
            raise
        return int(fd)

    def _attach_once(self, size: int, attach_only: bool) -> bool:
        """One attempt, under the directory lock. Returns True when
        attached, False to retry after a pause."""
        pruned, others = self._prune()
        with _registry_lock:
            ours = _handle_counts.get(self._key, 0) > 0
        created = False
        try:
            fd: int = _posixshmem.shm_open(self._posix_name, os.O_RDWR, 0)
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
            if (not created and st.st_uid != os.geteuid()
                    and self._mode & 0o077 == 0):
                raise PermissionError(
                    errno.EPERM,
                    f"refusing shared memory owned by uid {st.st_uid}",
                    self._posix_name)
            if (not created and pruned and not others and not ours
                    and not attach_only):
                # Every process that used it was killed: start afresh.
                stale, fd = fd, -1
                fd = self._replace_stale(stale, size)
                if fd < 0:
                    return False
                created = True
                self.reclaimed = True
                _log.info("shared memory %r reclaimed: every process that "
                          "used it had died", self._name)
                st = os.fstat(fd)
            if st.st_size < size:
                if (created or others or ours or attach_only
                        or time.time() - st.st_mtime < _SIZING_GRACE_S):
                    return False  # a creator has not sized it yet
                # Too small, and no live process uses it: its creator was
                # killed before sizing it, or it was truncated. Nobody can
                # ever attach to it, so reclaim it as a stale one.
                stale, fd = fd, -1
                fd = self._replace_stale(stale, size)
                if fd < 0:
                    return False
                created = True
                self.reclaimed = True
                st = os.fstat(fd)
            self._mmap = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_WRITE)
        except BaseException:
            if created:  # undo what this call made
                try:
                    _posixshmem.shm_unlink(self._posix_name)
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
            _posixshmem.shm_unlink(self._posix_name)
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
                       if _alive(pid, token))
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        """Stop using the segment: prune dead processes' PID files, remove
        ours, and unlink the segment if no live process (and no other
        handle in this process) uses it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with _registry_lock:
            _open_handles.discard(self)
            left = _handle_counts.get(self._key, 1) - 1
            if left > 0:
                _handle_counts[self._key] = left
            else:
                _handle_counts.pop(self._key, None)
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
            _posixshmem.shm_unlink(self._posix_name)
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
        with _registry_lock:
            _open_handles.discard(self)
            left = _handle_counts.get(self._key, 1) - 1
            if left > 0:
                _handle_counts[self._key] = left
            else:
                _handle_counts.pop(self._key, None)
        self.detach()
        self._close_fds()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._size}"
        return f"<GuardedSharedMemory name={self._name!r} {state}>"


class _ClosedPrimitive:
    """Stands in for a closed named object's primitive: any use raises a
    clear ValueError (as a closed file does) instead of an AttributeError
    about None."""

    def __init__(self, owner: "_Named") -> None:
        self._what = f"{type(owner).__name__}({owner.name!r})"

    def __getattr__(self, attr: str) -> "typing.NoReturn":
        raise ValueError(f"{self._what} is closed")


class _Named:
    """Common lifetime of the named primitives: close() drops the
    primitive, then the segment; usable as a context manager for that
    only where the class does not define its own (NamedMutex locks)."""

    _shm: Optional[GuardedSharedMemory] = None
    _name: str

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        """Detach from the named object (unlinked by the last user).
        Using the object afterwards raises ValueError."""
        # Each subclass types its own _prim; all of them drop it here.
        setattr(self, "_prim", _ClosedPrimitive(self))
        if self._shm is not None:
            self._shm.close()

    def _state(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        prim = getattr(self, "_prim", None)
        live = prim is not None and not isinstance(prim, _ClosedPrimitive)
        state = self._state() if live else "closed"
        return f"<{type(self).__name__} {self._name!r} {state}>"


class NamedEvent(_Named):
    """A cross-process manual-reset event by name (fastipc's NamedEvent:
    shared memory ``__pyfastipc_event_<name>``, one 4-byte word).

    ``wait`` returns True as soon as it sees the event set, at once if it
    already is (fastipc returns False then), and never reports a spurious
    wake-up as the event.
    """

    def __init__(self, name: str, *, mode: int = 0o600) -> None:
        _check_name(name)
        self._name = name
        self._shm = GuardedSharedMemory(EVENT_PREFIX + name, size=4,
                                        mode=mode)
        self._prim = _Event(self._shm.buf[:4], shared=True)

    def set(self) -> None:
        """Set the event, waking every waiter in every process."""
        self._prim.set()

    def clear(self) -> None:
        """Reset the event."""
        self._prim.clear()

    def wait(self, timeout_ns: int = -1) -> bool:
        """Wait until set; False after timeout_ns (negative: forever)."""
        return self._prim.wait(timeout_ns)

    def is_set(self) -> bool:
        return self._prim.is_set()

    def _state(self) -> str:
        return "set" if self._prim.is_set() else "clear"

    def __enter__(self) -> "NamedEvent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NamedMutex(_Named):
    """A cross-process mutex by name (fastipc's NamedMutex: shared memory
    ``__pyfastipc_mutex_<name>``, fastipc's 64-byte Mutex header).

    Ownership is per thread; a holder whose process died is taken over by
    a waiter, which ``owner_died`` then reports (see ``Mutex``).
    """

    def __init__(self, name: str, *, mode: int = 0o600) -> None:
        _check_name(name)
        self._name = name
        self._shm = GuardedSharedMemory(MUTEX_PREFIX + name, size=64,
                                        mode=mode)
        header = self._shm.buf[:64]
        # fastipc's creator zeroes the whole header after creating it,
        # magic included (its attachers rewrite it): accept that.
        magic = _AtomicU32(header[:4])
        magic.cas(0, _MUTEX_MAGIC)
        del magic
        self._prim = _Mutex(header, shared=True)

    def _took_over(self) -> None:
        # Logged here, where the Python layer sees it; owner_died tells
        # the caller, who must check the data the dead holder left.
        if self._prim.owner_died:
            _log.warning("NamedMutex %r taken over from a holder whose "
                         "process died holding it", self._name)

    def acquire(self) -> bool:
        """Block until held (Ctrl-C interrupts). True."""
        got = self._prim.acquire()
        self._took_over()
        return got

    def acquire_ns(self, timeout_ns: int = -1, spin: int = 16) -> bool:
        got = bool(self._prim.acquire_ns(timeout_ns, spin))
        if got:
            self._took_over()
        return got

    def try_acquire(self) -> bool:
        got = bool(self._prim.try_acquire())
        if got:
            self._took_over()
        return got

    def release(self) -> None:
        """RuntimeError if the caller does not hold it."""
        self._prim.release()

    def try_release(self) -> bool:
        """Release; False (instead of RuntimeError) if not the holder."""
        try:
            self._prim.release()
            return True
        except RuntimeError:
            return False

    def force_release(self) -> None:
        """Release whoever holds it (recovery)."""
        self._prim.force_release()

    def owner_pid(self) -> int:
        return int(self._prim.owner_pid())

    def last_acquired_ns(self) -> int:
        return int(self._prim.last_acquired_ns())

    def _state(self) -> str:
        pid = self._prim.owner_pid()
        return f"owner={pid}" if pid else "unlocked"

    @property
    def owner_died(self) -> bool:
        """True if the last acquisition through this object took the mutex
        over from a process that died holding it."""
        return self._prim.owner_died

    def __enter__(self) -> "NamedMutex":
        self._prim.acquire()
        self._took_over()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self._prim.release()

    async def __aenter__(self) -> "NamedMutex":
        """``async with named_mutex:`` acquire it through
        dispatchkit.asyncio (the futex watcher; no thread parked)."""
        from dispatchkit import asyncio as _dkio
        await _dkio.wait(self)
        self._took_over()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._prim.release()


class NamedSemaphore(_Named):
    """A cross-process counting semaphore by name (fastipc's
    NamedSemaphore: shared memory ``__pyfastipc_sema_<name>``, fastipc's
    64-byte Semaphore header). ``initial`` applies only when this call
    creates the semaphore. ``fastipc_compat=True`` also wakes fastipc's
    waiters (one futex syscall per post from zero; see ``Semaphore``).
    """

    def __init__(self, name: str, initial: Optional[int] = None, *,
                 mode: int = 0o600, fastipc_compat: bool = False) -> None:
        _check_name(name)
        if initial is not None:
            if not isinstance(initial, int):
                raise TypeError("initial must be an int or None")
            if initial < 0:
                raise OverflowError(
                    "can't convert negative value to unsigned int")
            if initial > 0xFFFFFFFF:
                raise OverflowError("initial out of range for uint32")
        self._name = name
        self._shm = GuardedSharedMemory(SEMAPHORE_PREFIX + name, size=64,
                                        mode=mode)
        init_val = initial if self._shm.created else None
        self._prim = _Semaphore(self._shm.buf[:64], initial=init_val,
                                shared=True, fastipc_compat=fastipc_compat)

    def last_acquired_ns(self) -> int:
        return int(self._prim.last_acquired_ns())

    def last_pid(self) -> int:
        return int(self._prim.last_pid())

    def post(self, n: int = 1) -> None:
        """Add n units and wake that many waiters."""
        self._prim.post(n)

    def post1(self) -> None:
        self._prim.post1()

    def wait(self, blocking: bool = True, timeout: float = -1.0,
             spin: int = 128) -> bool:
        """Take one unit; timeout in seconds (negative: forever)."""
        return self._prim.wait(blocking, int(timeout * 1_000_000_000), spin)

    def wait_ns(self, blocking: bool = True, timeout_ns: int = -1,
                spin: int = 128) -> bool:
        """Take one unit; timeout in nanoseconds (negative: forever)."""
        return self._prim.wait(blocking, timeout_ns, spin)

    def value(self) -> int:
        return self._prim.value()

    def _state(self) -> str:
        return f"value={self._prim.value()}"

    def __enter__(self) -> bool:
        """``with sem:`` as threading.Semaphore: wait() with no timeout."""
        return self._prim.wait(True, -1)

    def __exit__(self, *exc: object) -> None:
        self._prim.post1()

    async def __aenter__(self) -> bool:
        """``async with sem:`` take a unit through dispatchkit.asyncio (the
        futex watcher; no thread parked). True."""
        from dispatchkit import asyncio as _dkio
        return await _dkio.wait(self)

    async def __aexit__(self, *exc: object) -> None:
        self._prim.post1()

    P = wait
    acquire = wait
    V = post
    release = post
