/*
 * ZeroBuffer's system calls: shm_open/ftruncate/mmap, glibc named
 * semaphores, the flock'ed lock file and kill(pid, 0). See shm.h for the
 * names and why they must be exactly the peers'.
 */
#include "os/linux/shm.h"
#include "os/linux/sync_os.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atomic.h"
#include "os/linux/os.h"

/* "/NAME" for shm_open and sem_open; names were validated by the caller
 * (no '/', at most 240 bytes), so the buffer is always large enough. */
static int
slash_name(char *out, size_t cap, const char *name)
{
    int n = snprintf(out, cap, "/%s", name);
    return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

int
dk__shm_create(const char *name, size_t size, unsigned mode, void **base,
               int *fd)
{
    char path[300];
    int rc = slash_name(path, sizeof path, name);
    if (rc < 0) {
        return rc;
    }
    int f =
        shm_open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, (mode_t)mode);
    if (f < 0) {
        return -errno;
    }
    /* The umask would turn the peers' 0666 into 0644 and lock out a peer
     * running as another user; set the mode that was asked for. */
    if (fchmod(f, (mode_t)mode) < 0 || ftruncate(f, (off_t)size) < 0) {
        rc = -errno;
        close(f);
        shm_unlink(path);
        return rc;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    if (p == MAP_FAILED) {
        rc = -errno;
        close(f);
        shm_unlink(path);
        return rc;
    }
    *base = p;
    *fd = f;
    return 0;
}

int
dk__shm_open(const char *name, size_t min_size, void **base, size_t *size,
             int *fd)
{
    char path[300];
    int rc = slash_name(path, sizeof path, name);
    if (rc < 0) {
        return rc;
    }
    int f = shm_open(path, O_RDWR | O_CLOEXEC, 0);
    if (f < 0) {
        return -errno;
    }
    struct stat st;
    if (fstat(f, &st) < 0) {
        rc = -errno;
        close(f);
        return rc;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size < min_size ||
        (uint64_t)st.st_size > SIZE_MAX / 2) {
        close(f);
        return -EINVAL;
    }
    size_t len = (size_t)st.st_size;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    if (p == MAP_FAILED) {
        rc = -errno;
        close(f);
        return rc;
    }
    *base = p;
    *size = len;
    *fd = f;
    return 0;
}

void
dk__shm_close(void *base, size_t size, int fd)
{
    if (base != NULL) {
        munmap(base, size);
    }
    if (fd >= 0) {
        close(fd);
    }
}

int
dk__shm_unlink(const char *name)
{
    char path[300];
    int rc = slash_name(path, sizeof path, name);
    if (rc < 0) {
        return rc;
    }
    return shm_unlink(path) < 0 ? -errno : 0;
}

int
dk__nsem_create(const char *sem_name, unsigned mode, sem_t **out)
{
    char path[300];
    int rc = slash_name(path, sizeof path, sem_name);
    if (rc < 0) {
        return rc;
    }
    /* A leftover of the same name belongs to a reader that is gone (the
     * caller holds the lock file): the Python peer never unlinks its
     * semaphores. Unlink and create afresh; retry if another process
     * recreated it in between. */
    for (int attempt = 0; attempt < 4; attempt++) {
        sem_unlink(path);
        sem_t *s = sem_open(path, O_CREAT | O_EXCL, (mode_t)mode, 0);
        if (s != SEM_FAILED) {
            /* sem_open honours the umask; the peers may run as another
             * user, so set the requested mode on the backing file. */
            char file[320];
            snprintf(file, sizeof file, "/dev/shm/sem.%s", sem_name);
            chmod(file, (mode_t)mode);
            *out = s;
            return 0;
        }
        if (errno != EEXIST) {
            return -errno;
        }
    }
    return -EEXIST;
}

int
dk__nsem_open(const char *sem_name, sem_t **out)
{
    char path[300];
    int rc = slash_name(path, sizeof path, sem_name);
    if (rc < 0) {
        return rc;
    }
    sem_t *s = sem_open(path, 0);
    if (s == SEM_FAILED) {
        return -errno;
    }
    *out = s;
    return 0;
}

int
dk__nsem_unlink(const char *sem_name)
{
    char path[300];
    int rc = slash_name(path, sizeof path, sem_name);
    if (rc < 0) {
        return rc;
    }
    return sem_unlink(path) < 0 ? -errno : 0;
}

void
dk__nsem_close(sem_t *sem)
{
    if (sem != NULL) {
        sem_close(sem);
    }
}

int
dk__nsem_post(sem_t *sem)
{
    return sem_post(sem) < 0 ? -errno : 0;
}

int
dk__nsem_trywait(sem_t *sem)
{
    while (sem_trywait(sem) < 0) {
        if (errno != EINTR) {
            return -EAGAIN;
        }
    }
    return 0;
}

int
dk__nsem_wait(sem_t *sem, uint64_t deadline)
{
    if (deadline == DK_OS_FOREVER) {
        return sem_wait(sem) < 0 ? -errno : 0;
    }
    /* sem_clockwait takes a CLOCK_MONOTONIC deadline, so clock jumps do
     * not stretch or cut the wait (posix_ipc's sem_timedwait uses the
     * realtime clock; the semaphore is the same either way). */
    struct timespec ts = {
        .tv_sec = (time_t)(deadline / 1000000000u),
        .tv_nsec = (long)(deadline % 1000000000u),
    };
    if (sem_clockwait(sem, CLOCK_MONOTONIC, &ts) == 0) {
        return 0;
    }
    return errno == EINTR ? -EINTR : -ETIMEDOUT;
}

int
dk__nsem_value(sem_t *sem)
{
    int v = 0;
    sem_getvalue(sem, &v);
    return v < 0 ? 0 : v;
}

int
dk__lock_acquire(const char *name, unsigned mode, int *fd)
{
    char path[320];
    snprintf(path, sizeof path, "%s/%s.lock", DK_ZB_LOCK_DIR, name);
    if (mkdir(DK_ZB_LOCK_DIR, 0777) == 0) {
        /* Every user's readers create lock files here, as in /tmp. */
        chmod(DK_ZB_LOCK_DIR, 01777);
    } else if (errno != EEXIST) {
        return -errno;
    }
    for (int attempt = 0; attempt < 8; attempt++) {
        int f = open(path, O_CREAT | O_RDWR | O_CLOEXEC, (mode_t)mode);
        if (f < 0) {
            return -errno;
        }
        if (flock(f, LOCK_EX | LOCK_NB) < 0) {
            int err = errno;
            close(f);
            return err == EWOULDBLOCK ? -EWOULDBLOCK : -err;
        }
        /* A stale-lock sweep by another reader may have unlinked the path
         * between our open and flock: then we hold a lock on an orphan
         * inode that nobody else will see. Check and retry. */
        struct stat a, b;
        if (fstat(f, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev) {
            *fd = f;
            return 0;
        }
        close(f);
    }
    return -EAGAIN;
}

void
dk__lock_release(const char *name, int fd)
{
    char path[320];
    snprintf(path, sizeof path, "%s/%s.lock", DK_ZB_LOCK_DIR, name);
    /* Unlink while still holding the lock, so nobody takes a lock on the
     * path we are about to remove. */
    unlink(path);
    if (fd >= 0) {
        close(fd);
    }
}

bool
dk__pid_alive(uint64_t pid)
{
    if (pid == 0 || pid > (uint64_t)INT32_MAX) {
        return false;
    }
    if (kill((pid_t)pid, 0) < 0 && errno != EPERM) {
        return false;
    }
    return !dk__os_pid_is_zombie((uint32_t)pid);
}

uint64_t
dk__pid_self(void)
{
    return (uint64_t)getpid();
}

/*
 * Asynchronous waiters on a named semaphore. glibc's sem_t (2.21 and
 * later, 64-bit) is one u64 `data`: the value in the low 32 bits, the
 * number of sleeping waiters in the high 32; sem_post adds 1 and makes a
 * futex wake on the low word only when the waiter count is non-zero. A
 * waiter that sleeps elsewhere (the futex watcher) counts itself there
 * first, exactly as sem_wait does, so posts from any process wake it:
 *
 *   waiter                                 poster (sem_post)
 *   data += 1 << 32 (nwaiters)  (N1)       d = data++ (value)        (P1)
 *   value > 0 ? take it         (N2)       d >> 32 > 0 ? futex_wake  (P2)
 *   else watch the low word while 0
 *
 * N1 and P1 are RMWs on one word: either the post sees the waiter or the
 * waiter sees the value.
 */
#if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
#define NSEM_ANNOUNCE 1
_Static_assert(sizeof(sem_t) == 32, "glibc sem_t layout");
#endif

uint32_t *
dk__nsem_announce(sem_t *sem)
{
#ifdef NSEM_ANNOUNCE
    uint64_t *data = (uint64_t *)(void *)sem;
    dk_atomic_add_seq_cst(data, (uint64_t)1 << 32); /* (N1) */
    return (uint32_t *)(void *)sem; /* little-endian: the value half */
#else
    (void)sem;
    return NULL;
#endif
}

void
dk__nsem_unannounce(sem_t *sem)
{
#ifdef NSEM_ANNOUNCE
    uint64_t *data = (uint64_t *)(void *)sem;
    dk_atomic_sub_seq_cst(data, (uint64_t)1 << 32);
#else
    (void)sem;
#endif
}
