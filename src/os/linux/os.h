/*
 * The written contract between the core and Linux (as mimalloc keeps its
 * prim.h): every futex, eventfd, timerfd, epoll, pidfd, signal, mmap,
 * kill, /proc and shm_open/sem_open call the core makes goes through the
 * functions declared here, and nowhere else. The wrappers return what a
 * correct program can see (0, -ETIMEDOUT, -EINTR, -EAGAIN, ...) and abort
 * on errors that only a bug can cause. Deadlines are absolute
 * CLOCK_MONOTONIC nanoseconds, so a retry after EINTR never stretches a
 * wait; DK_TIME_FOREVER waits without limit.
 *
 * Implemented in os.c (time, futexes, threads, fds, signals, mappings),
 * futex_waitv.c, process.c (liveness of other processes) and shm.c (names
 * and named objects: shared memory, semaphores, the lock file).
 */
#ifndef DK_SRC_OS_LINUX_OS_H
#define DK_SRC_OS_LINUX_OS_H

#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "atomic.h"
#include "dk/base.h"

/* CLOCK_MONOTONIC and CLOCK_REALTIME in ns. Both use the vDSO: no syscall. */
uint64_t dk__os_monotonic_ns(void);
/* Let another runnable thread have this CPU (a spinning thread's courtesy
 * when the machine is oversubscribed); returns at once when none waits. */
void dk__os_yield(void);
/* Sleep for `ns` nanoseconds (a signal may end it early). */
void dk__os_sleep_ns(uint64_t ns);
uint64_t dk__os_realtime_ns(void);
/* CLOCK_REALTIME_COARSE: the time at the last kernel tick (1-4 ms old at
 * most), read from the vDSO without touching the clock hardware. Inline:
 * the shared-memory mutex stamps every acquisition with it. */
static inline uint64_t
dk__os_realtime_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Sleep while *word == expected, until woken or deadline (absolute
 * CLOCK_MONOTONIC ns, DK_TIME_FOREVER for none). `shared` selects a futex
 * usable across processes (the word may live in shared memory).
 * Returns 0 when woken (possibly spuriously), -EAGAIN if *word != expected
 * on entry, -ETIMEDOUT past the deadline, -EINTR on a signal.
 */
int dk__os_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline,
                      bool shared);

/* Wake up to n waiters on word; returns how many were woken (>= 0). */
int dk__os_futex_wake(uint32_t *word, int n, bool shared);

/*
 * Sleep on several words at once (futex_waitv, Linux 5.16+): until one is
 * woken, or one differs from its `expected` on entry, or the deadline.
 * Returns the index of a woken word (>= 0; the wake may be spurious),
 * -EAGAIN (some word differed on entry), -ETIMEDOUT, -EINTR, -EFAULT (a
 * word is no longer mapped), or -ENOSYS (no futex_waitv in this kernel):
 * the caller falls back to
 * dk__os_futex_wait on one word. At most DK__OS_WAITV_MAX words.
 */
#define DK__OS_WAITV_MAX 128
struct dk__os_waitv {
    uint32_t *word;
    uint32_t expected;
    bool shared;
};
int dk__os_futex_waitv(const struct dk__os_waitv *v, int n, uint64_t deadline);

/* Number of CPUs this process may run on (>= 1). */
int dk__os_ncpu(void);
/* The same, asked once and remembered (no syscall after the first call):
 * for spin decisions, where an affinity changed later matters little. */
int dk__os_ncpu_cached(void);

/* The kernel's id of the calling thread (cached per thread). */
int dk__os_tid(void);

/*
 * Start a detached thread running fn(arg) with all asynchronous signals
 * blocked, so that SIGINT and friends are delivered to the application's
 * own threads. Returns 0 or -errno (-EAGAIN when out of threads).
 */
int dk__os_thread_start(void *(*fn)(void *), void *arg, const char *name);

/* Lower the calling thread's timer slack to 1 ns (for the timer thread). */
void dk__os_thread_precise_timers(void);
/* Ask for a scheduler slice of ns (Linux 6.12+): woken sooner on a busy
 * CPU; ignored elsewhere. */
void dk__os_thread_short_slice(uint64_t ns);

/* eventfd used as a wake-up signal: create (nonblocking, cloexec),
 * signal (add 1), drain (read and discard). */
int dk__os_eventfd_create(void);
void dk__os_eventfd_signal(int fd);
void dk__os_eventfd_drain(int fd);

/* epoll and timerfd for the event thread. */
int dk__os_epoll_create(void);
int dk__os_epoll_add(int epfd, int fd, uint32_t events, uint64_t data);
int dk__os_epoll_mod(int epfd, int fd, uint32_t events, uint64_t data);
int dk__os_epoll_del(int epfd, int fd);
/* Returns the number of events (>= 0); -EINTR is retried internally. */
int dk__os_epoll_wait(int epfd, void *events, int max, int timeout_ms);
int dk__os_timerfd_create(void);
/* Arm for an absolute CLOCK_MONOTONIC deadline; DK_TIME_FOREVER disarms. */
void dk__os_timerfd_arm(int fd, uint64_t deadline);
void dk__os_close(int fd);
/* munmap a mapping the program made (a data object's buffer). */
void dk__os_munmap(void *addr, size_t len);
/* Map the pages under [addr, addr + len) again, at a new address, when
 * they belong to a shared mapping (mremap with old size 0). Returns the
 * new address of addr's byte, or NULL with errno: EINVAL for private
 * memory, EFAULT or ENOMEM when the mapping cannot be duplicated. */
void *dk__os_map_again(void *addr, size_t len);
/* Unmap what dk__os_map_again returned for the same len. */
void dk__os_unmap_again(void *alias, size_t len);

/* Wait until fd is readable or the deadline passes. Returns 0, -ETIMEDOUT
 * or -EINTR (a signal handler ran). */
int dk__os_poll_readable(int fd, uint64_t deadline);

/* Reset per-thread caches in a forked child (the calling thread). */
void dk__os_fork_child(void);

/* The process id, cached (no syscall); refreshed by dk__os_fork_child. */
int dk__os_pid(void);

/* The caches behind dk__os_pid and dk__os_tid (0: not filled in yet), for
 * fast paths that read them inline: dk__os_pid_cached and
 * dk__os_tid_cached fall back on the functions to fill them. */
extern int dk__os_pid_cache;
extern __thread int dk__os_tid_cache;

static inline int
dk__os_pid_cached(void)
{
    int pid = dk__atomic_load_relaxed(&dk__os_pid_cache);
    return dk_likely(pid != 0) ? pid : dk__os_pid();
}

static inline int
dk__os_tid_cached(void)
{
    int tid = dk__os_tid_cache;
    return dk_likely(tid != 0) ? tid : dk__os_tid();
}

/* pidfd_open: an fd readable once the process exits. Returns the fd or
 * -ESRCH (no such process), -EINVAL, -EMFILE, -ENOSYS. */
int dk__os_pidfd_open(int pid);

/* 0 if fd is open (*regular set for regular files), else -EBADF. */
int dk__os_fd_check(int fd, bool *regular);
/* Estimated bytes readable now (0 if unknown). */
long dk__os_fd_readable(int fd);
/* The same for an fd known not to be a regular file: FIONREAD alone. */
long dk__os_fd_nread(int fd);
/* Estimated bytes writable without blocking (0 if unknown). */
long dk__os_fd_writable(int fd);

/* ---- channel reads and writes (io.c) ---------------------------------- */

/* read(2) (at == false: at the file position) or pread(2) at offset, and
 * the same for writes; EINTR is retried. Bytes moved (0: end of file), or
 * -errno (-EAGAIN from a non-blocking fd that is not ready). */
long dk__os_fd_read(int fd, void *buf, size_t len, bool at, int64_t offset);
long dk__os_fd_write(int fd, const void *buf, size_t len, bool at,
                     int64_t offset);
/* The file position of fd, or -errno (-ESPIPE: fd cannot seek). */
int64_t dk__os_fd_tell(int fd);

/* Signals: install `handler` (SA_SIGINFO|SA_RESTART|SA_ONSTACK) for sig,
 * storing the previous action in *old_action (a struct sigaction); restore
 * it later. Returns 0 or -EINVAL. */
typedef void (*dk__os_sighandler)(int sig, siginfo_t *info, void *uctx);
int dk__os_signal_install(int sig, dk__os_sighandler handler,
                          void *old_action);
void dk__os_signal_restore(int sig, const void *old_action);
/* Call a saved action's handler function, if it is one (not SIG_DFL or
 * SIG_IGN). Async-signal-safe. */
void dk__os_signal_chain(const void *old_action, int sig, siginfo_t *info,
                         void *uctx);
/* Size of a saved action, for storage. */
#define DK_OS_SIGACTION_SIZE 256

/* ---- other processes (process.c) ----------------------------------------
 *
 * Whether a process id read from shared memory or from a file names a live
 * process. One answer for every caller: the shared-memory mutex's owner
 * death, ZeroBuffer's reader and writer checks, and the named objects' PID
 * directories (through the binding).
 *
 *   pid, or what kill(pid, 0) says                    alive?
 *   0, or above INT32_MAX (negative as a pid_t)       no: not a process id
 *   kill() succeeds                                   yes, unless a zombie
 *   EPERM: it exists and belongs to another user      yes, unless a zombie
 *   ESRCH: no such process                            no
 *   any other error (a sandbox filtering kill)        yes
 *   state Z or X in /proc/<pid>/stat (a zombie)       no
 *
 * An invalid pid is never passed to kill(), where 0 means our own process
 * group and -1 every process we may signal. A caller whose protocol
 * writes 0 for "no process" tests for 0 itself; to everyone else 0 names
 * no process. A zombie died but its parent has not reaped it yet; it still
 * answers kill(), and its parent is often the very process asking (a
 * reader that forked its writer). An unexpected error counts as alive:
 * taking a live peer for dead would steal its lock or unlink its segment,
 * while the converse only makes a waiter wait for its deadline. /proc is
 * read only for a process kill() found (the slow path); when /proc cannot
 * be read (hidepid), kill() alone decides.
 */
bool dk__os_pid_alive(uint64_t pid);
/* dk__os_pid_alive, and also the same process as when start_ticks was
 * read with dk__os_pid_start_ticks: a pid the kernel has given to a new
 * process since is dead. When /proc cannot be read, kill() decides. */
bool dk__os_pid_alive_since(uint64_t pid, uint64_t start_ticks);
/* The process's start time in clock ticks since boot (field 22 of
 * /proc/<pid>/stat): with the pid, it names one process. 0, or -ESRCH
 * (an invalid pid, no such process, or /proc unreadable). */
int dk__os_pid_start_ticks(uint64_t pid, uint64_t *ticks);
/* getpid(), uncached: a forked child must see its own pid even when no
 * fork handler ran. */
uint64_t dk__pid_self(void);

/* ---- names of shared objects (shm.c) ------------------------------------
 *
 * One rule for every name that becomes a file the kernel keeps for us
 * (/dev/shm/NAME, a semaphore, a lock file, a PID directory): 1 to `max`
 * bytes, no NUL, no '/', neither "." nor any "..", and, with
 * DK__OS_NAME_PRINTABLE, no space, control character or DEL (ZeroBuffer's
 * names, which its peers also put on command lines). Returns 0,
 * -ENAMETOOLONG, or -EINVAL; *broken (if not NULL) gets the rule broken
 * (enum dk__os_name_rule, 0 for none), for a message that names it.
 */
#define DK__OS_NAME_PRINTABLE 1u
enum dk__os_name_rule {
    DK__OS_NAME_EMPTY = 1,
    DK__OS_NAME_LONG,
    DK__OS_NAME_NUL,
    DK__OS_NAME_SLASH,
    DK__OS_NAME_UNPRINTABLE,
    DK__OS_NAME_DOTS,
};
int dk__os_name_check(const char *name, size_t len, size_t max, unsigned flags,
                      int *broken);
/* The longest name shm_open and sem_open take (glibc: NAME_MAX - 2). */
#define DK__OS_SHM_NAME_MAX 253u

/* ---- shared memory objects (shm.c) -------------------------------------
 *
 * dk__os_shm_create makes a new object "/NAME" (O_CREAT | O_EXCL: an
 * existing one gives -EEXIST; O_NOFOLLOW) with exactly `mode`, whatever
 * the umask (fchmod after the create: the umask would turn a peer's 0666
 * into 0644 and lock out a peer running as another user), `size` bytes
 * long: sparse (ftruncate), or with DK__OS_SHM_ALLOCATE its pages
 * allocated (posix_fallocate: a full /dev/shm gives -ENOSPC now rather
 * than SIGBUS at the first write). Returns the fd (close-on-exec) or
 * -errno (-EFBIG for a size past an off_t, -ENOSPC, -EACCES, ...); a
 * failed call leaves no object behind.
 * dk__os_shm_open opens an existing "/NAME" read-write: the fd, -ENOENT,
 * or, with DK__OS_SHM_OURS and an object another user owns, -EPERM (its
 * owner's uid in *owner when owner is not NULL). Both check the name
 * (dk__os_name_check, DK__OS_SHM_NAME_MAX): -EINVAL, -ENAMETOOLONG.
 */
#define DK__OS_SHM_ALLOCATE 1u
#define DK__OS_SHM_OURS 2u
int dk__os_shm_create(const char *name, unsigned mode, uint64_t size,
                      unsigned flags);
int dk__os_shm_open(const char *name, unsigned flags, uint32_t *owner);

/* The guarded mappings below (dk__shm_*) are ZeroBuffer's. Names are the
 * peers' (zerobuffer-ipc, its C++ and C# siblings), so that the objects
 * are the very same kernel objects the peers open:
 *   shared memory   shm_open("/NAME")            -> /dev/shm/NAME
 *   semaphores      sem_open("/sem-w-NAME") etc. -> /dev/shm/sem.sem-w-NAME
 *   lock file       /tmp/zerobuffer/NAME.lock, flock(LOCK_EX | LOCK_NB)
 * The semaphores are glibc's POSIX named semaphores, the ones posix_ipc
 * uses. */
#define DK_ZB_LOCK_DIR "/tmp/zerobuffer"

/* Create "/NAME" with dk__os_shm_create(DK__OS_SHM_ALLOCATE) and map it,
 * guarded (see below). On success *base and *fd are set. */
int dk__shm_create(const char *name, size_t size, unsigned mode, void **base,
                   int *fd);

/* Open and map an existing "/NAME" read-write, guarded; *size is its size
 * as fstat says now. -ENOENT if it does not exist, -EINVAL if it is too
 * small to hold min_size bytes. */
int dk__shm_open(const char *name, size_t min_size, void **base, size_t *size,
                 int *fd);

/* Unmap and close what create/open returned (fd may be -1). */
void dk__shm_close(void *base, size_t size, int fd);

/*
 * The truncation guard. Any process that may write a segment can shrink
 * its file; touching a mapped page past the new end raises SIGBUS, which
 * would kill us. Mappings made by dk__shm_create/open are registered with
 * a SIGBUS handler (installed at the first one) which, for a fault inside
 * one, maps anonymous zero pages over the rest of that mapping, sets its
 * fault flag and returns: the access is retried on the new pages and the
 * process lives. The owner checks the flag and reports the segment as
 * broken. Faults outside registered mappings go to the handler that was
 * there before ours, or to the default action. (libwayland-server guards
 * its clients' shm pools the same way.)
 * dk__shm_fault_flag gives the flag of the mapping at `base` (non-zero
 * once it faulted), or NULL if base is not a guarded mapping.
 */
const uint32_t *dk__shm_fault_flag(const void *base);

/* shm_unlink("/NAME"); 0, -ENOENT, or -EINVAL / -ENAMETOOLONG for a name
 * dk__os_name_check refuses. */
int dk__shm_unlink(const char *name);

/* Named semaphore "/PREFIX-NAME": create with value 0 (a leftover of the
 * same name is unlinked first: a dead Python reader leaves its semaphores
 * behind), open an existing one, unlink, close. */
int dk__nsem_create(const char *sem_name, unsigned mode, sem_t **out);
int dk__nsem_open(const char *sem_name, sem_t **out);
int dk__nsem_unlink(const char *sem_name);
void dk__nsem_close(sem_t *sem);

/* Post: 0, or -EOVERFLOW when the count is at SEM_VALUE_MAX. */
int dk__nsem_post(sem_t *sem);
/* Take one token without blocking: 0 or -EAGAIN. */
int dk__nsem_trywait(sem_t *sem);
/* Take one token, waiting until the deadline: 0, -ETIMEDOUT or -EINTR. */
int dk__nsem_wait(sem_t *sem, uint64_t deadline);
/* The current count (>= 0). */
int dk__nsem_value(sem_t *sem);
/* Count an asynchronous waiter in the semaphore's own waiter count (so
 * every sem_post wakes its futex word) and return that word, to watch
 * while it is 0; NULL where the sem_t layout is not glibc's. Undo with
 * dk__nsem_unannounce. */
uint32_t *dk__nsem_announce(sem_t *sem);
void dk__nsem_unannounce(sem_t *sem);

/* Take the reader's lock file DK_ZB_LOCK_DIR/NAME.lock (created with
 * `mode`; the directory is created world-writable and sticky like /tmp).
 * -EWOULDBLOCK when another live process holds it; -EPERM when the
 * directory is not to be trusted (a symlink, not owned by root or us, or
 * writable by others without the sticky bit) or the lock file is not a
 * regular file of ours (a symlink is never followed). On success *fd
 * holds the lock until dk__lock_release. */
int dk__lock_acquire(const char *name, unsigned mode, int *fd);
/* Unlink the lock file and drop the lock. */
void dk__lock_release(const char *name, int fd);

#endif /* DK_SRC_OS_LINUX_OS_H */
