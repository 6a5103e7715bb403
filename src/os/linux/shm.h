/*
 * The operating-system side of ZeroBuffer: POSIX shared memory objects,
 * POSIX named semaphores, the flock'ed lock file and process liveness.
 * Names are the peers' (zerobuffer-ipc, its C++ and C# siblings), so that
 * the objects are the very same kernel objects the peers open:
 *   shared memory   shm_open("/NAME")            -> /dev/shm/NAME
 *   semaphores      sem_open("/sem-w-NAME") etc. -> /dev/shm/sem.sem-w-NAME
 *   lock file       /tmp/zerobuffer/NAME.lock, flock(LOCK_EX | LOCK_NB)
 * The semaphores are glibc's POSIX named semaphores, the ones posix_ipc
 * uses. Every function returns 0 or -errno; deadlines are absolute
 * CLOCK_MONOTONIC nanoseconds (DK_TIME_FOREVER for none).
 */
#ifndef DK_SRC_OS_LINUX_SHM_H
#define DK_SRC_OS_LINUX_SHM_H

#include <semaphore.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DK_ZB_LOCK_DIR "/tmp/zerobuffer"

/* Create a new shared memory object "/NAME" of `size` bytes (O_EXCL: an
 * existing one gives -EEXIST), chmod'ed to `mode` whatever the umask,
 * with its pages allocated (fallocate: a full /dev/shm gives -ENOSPC now,
 * not SIGBUS at the first write), and map it, guarded (see below). On
 * success *base and *fd are set. */
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

/* shm_unlink("/NAME"); 0 or -ENOENT. */
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

/* Whether a process id read from shared memory names a live process:
 * kill(pid, 0) succeeds or fails with EPERM (alive, another user), and
 * it is not a zombie (see dk__os_process_gone). Values
 * that are not a valid pid (0, negative as pid_t, > INT32_MAX) are dead;
 * they are never passed to kill(), where -1 would mean "every process". */
bool dk__pid_alive(uint64_t pid);

/* getpid(), uncached: a forked child must see its own pid. */
uint64_t dk__pid_self(void);

#endif /* DK_SRC_OS_LINUX_SHM_H */
