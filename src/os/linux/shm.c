/*
 * Names and named objects (os.h): the one name rule, shared memory
 * objects created with an exact mode, ZeroBuffer's guarded mappings, glibc
 * named semaphores and the flock'ed lock file. See os.h for the peers'
 * names and why they must be exactly theirs.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atomic.h"
#include "os/linux/os.h"

/* "/NAME" for shm_open and sem_open; -ENAMETOOLONG if it does not fit
 * (the callers' names are checked, so it always does). */
static int
slash_name(char *out, size_t cap, const char *name)
{
    int n = snprintf(out, cap, "/%s", name);
    return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

int
dk__os_name_check(const char *name, size_t len, size_t max, unsigned flags,
                  int *broken)
{
    int rule = 0;
    if (len == 0) {
        rule = DK__OS_NAME_EMPTY;
    } else if (len > max) {
        rule = DK__OS_NAME_LONG;
    } else if (memchr(name, '\0', len) != NULL) {
        rule = DK__OS_NAME_NUL;
    } else if (memchr(name, '/', len) != NULL) {
        rule = DK__OS_NAME_SLASH;
    } else if ((len == 1 && name[0] == '.') ||
               memmem(name, len, "..", 2) != NULL) {
        rule = DK__OS_NAME_DOTS;
    }
    if (rule == 0 && (flags & DK__OS_NAME_PRINTABLE)) {
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)name[i];
            if (c <= ' ' || c == 0x7f) {
                rule = DK__OS_NAME_UNPRINTABLE;
                break;
            }
        }
    }
    if (broken != NULL) {
        *broken = rule;
    }
    if (rule == 0) {
        return 0;
    }
    return rule == DK__OS_NAME_LONG ? -ENAMETOOLONG : -EINVAL;
}

/* ---- the truncation guard (see shm.h) ----------------------------------
 *
 * Registered mappings live in slots that the SIGBUS handler reads without
 * a lock: a slot is claimed (FREE -> SETUP) with a CAS, filled, then
 * published with a release store of ACTIVE that pairs with the handler's
 * acquire load (G), so a handler that sees ACTIVE sees base and len.
 * Chunks of slots are added with a release store of `next` (pairs with
 * the handler's acquire load, (H)) and never freed, so a handler never
 * follows a pointer into freed memory.
 *
 *   CPU0 (dk__shm_open)               CPU1 (SIGBUS handler, other thread)
 *   slot.base = p; slot.len = n
 *   store_release(slot.state, ACTIVE)  (G)
 *                                      load_acquire(slot.state) == ACTIVE (G)
 *                                      reads base and len: both set
 *
 * A mapping is unregistered before it is unmapped; a fault on a mapping
 * while another thread unmaps it is the caller's own use-after-free.
 */
enum { SLOT_FREE = 0, SLOT_SETUP = 1, SLOT_ACTIVE = 2 };
#define GUARD_SLOTS 64

struct guard_slot {
    uint32_t state;
    uint32_t faulted;
    uintptr_t base;
    size_t len;
};

struct guard_chunk {
    struct guard_slot slot[GUARD_SLOTS];
    struct guard_chunk *next;
};

static struct guard_chunk guard_first;
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static bool guard_installed;
static struct sigaction guard_old;
static uintptr_t guard_page_mask;

static void
guard_handler(int sig, siginfo_t *info, void *uctx)
{
    int saved = errno;
    /* si_code > 0: raised by the kernel for this access (a kill() or
     * raise() has si_code <= 0 and is never ours). */
    if (info != NULL && info->si_code > 0) {
        uintptr_t a = (uintptr_t)info->si_addr;
        for (struct guard_chunk *c = &guard_first; c != NULL;
             c = dk__atomic_load_acquire(&c->next)) { /* (H) */
            for (int i = 0; i < GUARD_SLOTS; i++) {
                struct guard_slot *s = &c->slot[i];
                if (dk__atomic_load_acquire(&s->state) != SLOT_ACTIVE) {
                    continue; /* (G) */
                }
                uintptr_t base = dk__atomic_load_relaxed(&s->base);
                size_t len = dk__atomic_load_relaxed(&s->len);
                if (a - base >= len) {
                    continue;
                }
                uintptr_t page = a & guard_page_mask;
                void *p = mmap((void *)page, base + len - page,
                               PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                if (p != MAP_FAILED) {
                    dk__atomic_store_relaxed(&s->faulted, 1);
                    errno = saved;
                    return;
                }
                goto not_ours;
            }
        }
    }
not_ours:
    if (guard_old.sa_handler != SIG_DFL && guard_old.sa_handler != SIG_IGN) {
        dk__os_signal_chain(&guard_old, sig, info, uctx);
        errno = saved;
        return;
    }
    /* The default action: put it back; a fault happens again when we
     * return and kills the process as it would have without us, and a
     * sent signal is sent again. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGBUS, &dfl, NULL);
    if (info == NULL || info->si_code <= 0) {
        raise(SIGBUS);
    }
    errno = saved;
}

static void guard_prefork(void);
static void guard_postfork(void);

static void
guard_register_atfork(void)
{
    pthread_atfork(guard_prefork, guard_postfork, guard_postfork);
}

/* A fork while another thread holds guard_lock would leave it held in
 * the child: take it around fork. */
static void
guard_prefork(void)
{
    pthread_mutex_lock(&guard_lock);
}

static void
guard_postfork(void)
{
    pthread_mutex_unlock(&guard_lock);
}

/* Register [base, base + len). 0 or -ENOMEM. */
static int
guard_add(void *base, size_t len)
{
    static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
    pthread_once(&atfork_once, guard_register_atfork);
    pthread_mutex_lock(&guard_lock);
    if (!guard_installed) {
        guard_page_mask = ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = guard_handler;
        /* SA_ONSTACK: a fault on a thread's alternate stack is handled
         * there if it has one. */
        sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, &guard_old) == 0) {
            guard_installed = true;
        }
    }
    struct guard_chunk *c = &guard_first, *last = NULL;
    for (; c != NULL; last = c, c = c->next) {
        for (int i = 0; i < GUARD_SLOTS; i++) {
            struct guard_slot *s = &c->slot[i];
            uint32_t expect = SLOT_FREE;
            if (dk__atomic_cas_acquire(&s->state, &expect, SLOT_SETUP)) {
                dk__atomic_store_relaxed(&s->base, (uintptr_t)base);
                dk__atomic_store_relaxed(&s->len, len);
                dk__atomic_store_relaxed(&s->faulted, 0);
                dk__atomic_store_release(&s->state, SLOT_ACTIVE); /* (G) */
                pthread_mutex_unlock(&guard_lock);
                return 0;
            }
        }
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        pthread_mutex_unlock(&guard_lock);
        return -ENOMEM;
    }
    c->slot[0].base = (uintptr_t)base;
    c->slot[0].len = len;
    c->slot[0].state = SLOT_ACTIVE;
    dk__atomic_store_release(&last->next, c); /* (H) */
    pthread_mutex_unlock(&guard_lock);
    return 0;
}

static struct guard_slot *
guard_find(const void *base)
{
    for (struct guard_chunk *c = &guard_first; c != NULL;
         c = dk__atomic_load_acquire(&c->next)) { /* (H) */
        for (int i = 0; i < GUARD_SLOTS; i++) {
            struct guard_slot *s = &c->slot[i];
            if (dk__atomic_load_acquire(&s->state) == SLOT_ACTIVE && /* (G) */
                dk__atomic_load_relaxed(&s->base) == (uintptr_t)base) {
                return s;
            }
        }
    }
    return NULL;
}

static void
guard_remove(const void *base)
{
    pthread_mutex_lock(&guard_lock);
    struct guard_slot *s = guard_find(base);
    if (s != NULL) {
        dk__atomic_store_relaxed(&s->state, SLOT_FREE);
    }
    pthread_mutex_unlock(&guard_lock);
}

const uint32_t *
dk__shm_fault_flag(const void *base)
{
    struct guard_slot *s = guard_find(base);
    return s != NULL ? &s->faulted : NULL;
}

/* Map fd's first `size` bytes shared and guard them. */
static int
map_guarded(int fd, size_t size, void **out)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        return -errno;
    }
    int rc = guard_add(p, size);
    if (rc < 0) {
        munmap(p, size);
        return rc;
    }
    *out = p;
    return 0;
}

/* "/NAME" in path, for a name dk__os_name_check accepts. */
static int
shm_path(char *path, size_t cap, const char *name)
{
    int rc =
        dk__os_name_check(name, strlen(name), DK__OS_SHM_NAME_MAX, 0, NULL);
    return rc < 0 ? rc : slash_name(path, cap, name);
}

int
dk__os_shm_create(const char *name, unsigned mode, uint64_t size,
                  unsigned flags)
{
    char path[300];
    int rc = shm_path(path, sizeof path, name);
    if (rc < 0) {
        return rc;
    }
    if (size > (uint64_t)INT64_MAX) {
        return -EFBIG;
    }
    int f = shm_open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW,
                     (mode_t)mode);
    if (f < 0) {
        return -errno;
    }
    /* The umask would turn the peers' 0666 into 0644 and lock out a peer
     * running as another user; set the mode that was asked for. */
    if (fchmod(f, (mode_t)mode) < 0) {
        rc = -errno;
    } else if (flags & DK__OS_SHM_ALLOCATE) {
        /* ftruncate alone makes a sparse file, and a ring larger than the
         * free space would "succeed" here and raise SIGBUS at the first
         * write that finds no page. */
        rc = -posix_fallocate(f, 0, (off_t)size);
    } else {
        rc = ftruncate(f, (off_t)size) < 0 ? -errno : 0;
    }
    if (rc < 0) {
        close(f);
        shm_unlink(path);
        return rc;
    }
    return f;
}

int
dk__os_shm_open(const char *name, unsigned flags, uint32_t *owner)
{
    char path[300];
    int rc = shm_path(path, sizeof path, name);
    if (rc < 0) {
        return rc;
    }
    int f = shm_open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    if (f < 0) {
        return -errno;
    }
    if (flags & DK__OS_SHM_OURS) {
        struct stat st;
        if (fstat(f, &st) < 0) {
            rc = -errno;
            close(f);
            return rc;
        }
        if (st.st_uid != geteuid()) {
            if (owner != NULL) {
                *owner = (uint32_t)st.st_uid;
            }
            close(f);
            return -EPERM;
        }
    }
    return f;
}

int
dk__shm_create(const char *name, size_t size, unsigned mode, void **base,
               int *fd)
{
    int f = dk__os_shm_create(name, mode, size, DK__OS_SHM_ALLOCATE);
    if (f < 0) {
        return f;
    }
    void *p = NULL;
    int rc = map_guarded(f, size, &p);
    if (rc < 0) {
        char path[300];
        close(f);
        if (slash_name(path, sizeof path, name) == 0) {
            shm_unlink(path);
        }
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
    int f = dk__os_shm_open(name, 0, NULL);
    if (f < 0) {
        return f;
    }
    int rc;
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
    void *p = NULL;
    rc = map_guarded(f, len, &p);
    if (rc < 0) {
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
        guard_remove(base);
        munmap(base, size);
    }
    if (fd >= 0) {
        close(fd);
    }
}

/* Unlink a named object: path_of checks the name and prefixes the "/",
 * unlink_fn is shm_unlink or sem_unlink. */
static int
named_unlink(const char *name, int (*path_of)(char *, size_t, const char *),
             int (*unlink_fn)(const char *))
{
    char path[300];
    int rc = path_of(path, sizeof path, name);
    if (rc < 0) {
        return rc;
    }
    return unlink_fn(path) < 0 ? -errno : 0;
}

int
dk__shm_unlink(const char *name)
{
    return named_unlink(name, shm_path, shm_unlink);
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
            /* Through an O_NOFOLLOW descriptor: chmod() on the path would
             * follow a symlink swapped in meanwhile. */
            int f = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            if (f >= 0) {
                fchmod(f, (mode_t)mode);
                close(f);
            }
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
    return named_unlink(sem_name, slash_name, sem_unlink);
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
    if (deadline == DK_TIME_FOREVER) {
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

/* Whether DK_ZB_LOCK_DIR can be trusted with our lock files: a real
 * directory (not a symlink), owned by root or by us, and, if others may
 * write it, sticky (so they cannot delete or replace our files). */
static int
lock_dir_check(void)
{
    struct stat st;
    if (lstat(DK_ZB_LOCK_DIR, &st) < 0) {
        return -errno;
    }
    if (!S_ISDIR(st.st_mode)) {
        return -EPERM;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        return -EPERM;
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && !(st.st_mode & S_ISVTX)) {
        return -EPERM;
    }
    return 0;
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
    int rc = lock_dir_check();
    if (rc < 0) {
        return rc;
    }
    for (int attempt = 0; attempt < 8; attempt++) {
        /* O_NOFOLLOW: a symlink planted at the path would make us open
         * (and create) its target. */
        int f = open(path, O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW,
                     (mode_t)mode);
        if (f < 0) {
            return errno == ELOOP ? -EPERM : -errno;
        }
        struct stat a, b;
        if (fstat(f, &a) < 0 || !S_ISREG(a.st_mode)) {
            close(f);
            return -EPERM;
        }
        if (flock(f, LOCK_EX | LOCK_NB) < 0) {
            int err = errno;
            close(f);
            return err == EWOULDBLOCK ? -EWOULDBLOCK : -err;
        }
        /* A free lock file of another user: a reader of theirs that is
         * gone left it, and we could not remove it when we close. */
        if (a.st_uid != geteuid()) {
            close(f);
            return -EPERM;
        }
        /* The mode asked for, whatever the umask (as for the segment). */
        if ((a.st_mode & 07777) != (mode_t)mode) {
            fchmod(f, (mode_t)mode);
        }
        /* A stale-lock sweep by another reader may have unlinked the path
         * between our open and flock: then we hold a lock on an orphan
         * inode that nobody else will see. Check and retry. */
        if (lstat(path, &b) == 0 && a.st_ino == b.st_ino &&
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
    dk__atomic_add_seq_cst(data, (uint64_t)1 << 32); /* (N1) */
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
    dk__atomic_sub_seq_cst(data, (uint64_t)1 << 32);
#else
    (void)sem;
#endif
}
