/*
 * Fuzz target: the in-place sync objects on arbitrary memory, as the
 * Python constructors of dispatchkit.sync hand it to the core (Mutex,
 * Semaphore: dk_shm_*_init on a caller's 64 bytes; Event and FutexWord:
 * dk_shm_event_check and the futex calls on a 4-byte word), at any
 * alignment and with any contents: wrong magic, impossible states, owner
 * pids of processes that exist, do not, or cannot. Then non-blocking
 * operations (try-lock, a lock whose deadline has passed, unlock,
 * semaphore wait/post, event set/clear/wait) with bytes of the object
 * rewritten between them, as a hostile process sharing the memory could.
 * Each return code must be one the header documents and each result
 * must match what the layout says (a small model of the fields).
 */
#include "fuzz.h"

#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "dk/futex.h"
#include "dk/mutex.h"
#include "dk/shm_event.h"

#define ARENA 256
#define MAX_OPS 128

struct obj {
    uint8_t *arena;
    uint8_t *p; /* the object, at any offset in the arena */
    uint8_t before[ARENA];
    uint32_t me, tid;
};

static uint32_t
u32_at(const uint8_t *p, size_t off)
{
    uint32_t v;
    memcpy(&v, p + off, 4);
    return v;
}

/* Init writes the magic (and a semaphore's count when asked) and not
 * one other byte of the arena; a failed init writes nothing. */
static void
check_init_writes(struct obj *o, int rc, uint32_t magic, bool set_count,
                  uint32_t count)
{
    size_t base = (size_t)(o->p - o->arena);
    if (rc == 0) {
        FUZZ_CHECK(u32_at(o->p, 0) == magic);
        memcpy(o->before + base, &magic, 4);
        if (set_count) {
            memcpy(o->before + base + 8, &count, 4);
        }
    }
    FUZZ_CHECK(memcmp(o->before, o->arena, ARENA) == 0);
}

static int
semaphore_init_expected(const struct obj *o)
{
    if ((uintptr_t)o->p % 4 != 0) {
        return -EINVAL;
    }
    uint32_t magic = u32_at(o->p, 0);
    return magic == 0 || magic == DK_SEMAPHORE_MAGIC ? 0 : -EBADMSG;
}

/* The stamp accessor reads the 8 bytes at +0x10, whatever the
 * alignment (native byte order). */
static void
check_stamp(const struct obj *o)
{
    uint64_t raw;
    memcpy(&raw, o->p + 0x10, sizeof raw);
    FUZZ_CHECK(dk_shm_header_last_ns(o->p) == raw);
}

/* A deadline of 0 is a try; 1 ns after boot has long passed, which takes
 * the timed path (owner liveness included) without ever sleeping. */
static uint64_t
pick_deadline(fuzz_in_t *in)
{
    return fuzz_u8(in) & 1;
}

static int
mutex_init_expected(const struct obj *o)
{
    if ((uintptr_t)o->p % 4 != 0) {
        return -EINVAL;
    }
    uint32_t magic = u32_at(o->p, 0);
    if (magic == DK_MUTEX_MAGIC) {
        return 0;
    }
    return magic == 0 && u32_at(o->p, 8) == 0 ? 0 : -EBADMSG;
}

static void
mutex_ops(struct obj *o, fuzz_in_t *in)
{
    dk_shm_mutex_t *m = (dk_shm_mutex_t *)(void *)o->p;
    for (int i = 0; i < MAX_OPS && fuzz_more(in); i++) {
        uint8_t code = fuzz_u8(in);
        uint32_t s0 = m->state, owner0 = m->owner_pid, tid0 = m->owner_tid;
        switch (code % 4) {
        case 0: {
            uint64_t deadline = pick_deadline(in);
            uint8_t a = fuzz_u8(in);
            /* After a failed try (the Python binding's blocking path)
             * or plain: the same results either way. */
            unsigned flags = (a & 1 ? DK_SHARED : 0) |
                             (a & 2 ? DK_SHM_INTERRUPTIBLE : 0);
            int rc = (a & 4) ? dk_shm_mutex_lock_after_try(m, deadline, a % 4,
                                                           flags)
                             : dk_shm_mutex_lock(m, deadline, a % 4, flags);
            switch (rc) {
            case 0:
            case 1:
                check_stamp(o);
                FUZZ_CHECK(m->state != 0);
                FUZZ_CHECK(m->owner_pid == o->me);
                FUZZ_CHECK(m->owner_tid == o->tid);
                /* Taking over needs a dead owner and the timed path. */
                FUZZ_CHECK(rc == 0 ||
                           (deadline != 0 && owner0 != 0 && owner0 != o->me));
                FUZZ_CHECK((rc == 0) == (s0 == 0));
                break;
            case -ETIMEDOUT:
                FUZZ_CHECK(s0 != 0);
                break;
            case -EDEADLK:
                FUZZ_CHECK(s0 != 0 && owner0 == o->me && tid0 == o->tid);
                break;
            default:
                FUZZ_BAD_RC("mutex_lock", rc);
            }
            if (s0 == 0) {
                FUZZ_CHECK(rc == 0);
            }
            break;
        }
        case 1: {
            bool force = fuzz_u8(in) & 1;
            /* Ownership is per thread: a recorded thread id decides; with
             * none (a fastipc holder), the pid does. */
            bool ours = tid0 != 0 ? tid0 == o->tid : owner0 == o->me;
            int rc =
                dk_shm_mutex_unlock(m, DK_SHARED | (force ? DK_SHM_FORCE : 0));
            if (rc == 0) {
                FUZZ_CHECK(force || ours);
                FUZZ_CHECK(m->state == 0 && m->owner_pid == 0 &&
                           m->owner_tid == 0);
            } else if (rc == -EPERM) {
                FUZZ_CHECK(!force && !ours);
                FUZZ_CHECK(m->state == s0);
            } else {
                FUZZ_BAD_RC("mutex_unlock", rc);
            }
            break;
        }
        case 2: {
            size_t at = fuzz_u8(in) % DK_SHM_HEADER_SIZE;
            o->p[at] = fuzz_u8(in);
            check_stamp(o);
            break;
        }
        default: {
            memcpy(o->before, o->arena, ARENA);
            int want = mutex_init_expected(o);
            int rc = dk_shm_mutex_init(m);
            FUZZ_CHECK(rc == want);
            check_init_writes(o, rc, DK_MUTEX_MAGIC, false, 0);
            break;
        }
        }
    }
}

static void
semaphore_ops(struct obj *o, fuzz_in_t *in)
{
    dk_shm_semaphore_t *s = (dk_shm_semaphore_t *)(void *)o->p;
    for (int i = 0; i < MAX_OPS && fuzz_more(in); i++) {
        uint8_t code = fuzz_u8(in);
        uint32_t c0 = s->count, w0 = s->waiters;
        switch (code % 4) {
        case 0: {
            uint64_t deadline = pick_deadline(in);
            uint8_t a = fuzz_u8(in);
            int rc = dk_shm_semaphore_wait(
                s, deadline, a % 4,
                (a & 1 ? DK_SHARED : 0) | (a & 2 ? DK_SHM_INTERRUPTIBLE : 0));
            if (rc == 0) {
                check_stamp(o);
                FUZZ_CHECK(c0 > 0 && s->count == c0 - 1);
            } else if (rc == -ETIMEDOUT) {
                FUZZ_CHECK(c0 == 0 && s->count == 0);
            } else {
                FUZZ_BAD_RC("semaphore_wait", rc);
            }
            FUZZ_CHECK(s->waiters == w0);
            break;
        }
        case 1: {
            uint32_t n = fuzz_u8(in) & 1 ? fuzz_u32(in) : fuzz_u8(in);
            uint8_t a = fuzz_u8(in);
            int rc = dk_shm_semaphore_post(
                s, n,
                (a & 1 ? DK_SHARED : 0) | (a & 2 ? DK_SHM_FASTIPC_COMPAT : 0));
            if (rc == 0) {
                FUZZ_CHECK(n <= UINT32_MAX - c0 && s->count == c0 + n);
            } else if (rc == -EOVERFLOW) {
                FUZZ_CHECK(n > UINT32_MAX - c0 && s->count == c0);
            } else {
                FUZZ_BAD_RC("semaphore_post", rc);
            }
            break;
        }
        case 2: {
            size_t at = fuzz_u8(in) % DK_SHM_HEADER_SIZE;
            o->p[at] = fuzz_u8(in);
            check_stamp(o);
            break;
        }
        default: {
            bool set = fuzz_u8(in) & 1;
            uint32_t count = fuzz_u32(in);
            memcpy(o->before, o->arena, ARENA);
            int want = semaphore_init_expected(o);
            int rc =
                dk_shm_semaphore_init(s, count, set ? DK_SHM_SET_COUNT : 0);
            FUZZ_CHECK(rc == want);
            check_init_writes(o, rc, DK_SEMAPHORE_MAGIC, set, count);
            break;
        }
        }
    }
}

static void
event_ops(struct obj *o, fuzz_in_t *in)
{
    dk_shm_event_t *e = (dk_shm_event_t *)(void *)o->p;
    for (int i = 0; i < MAX_OPS && fuzz_more(in); i++) {
        uint8_t code = fuzz_u8(in);
        uint32_t w0 = e->word;
        bool shared = code & 0x80;
        switch (code % 6) {
        case 0:
            dk_shm_event_set(e, shared ? DK_SHARED : 0);
            FUZZ_CHECK(e->word == 1 && dk_shm_event_is_set(e));
            break;
        case 1:
            dk_shm_event_clear(e);
            FUZZ_CHECK(e->word == 0 && !dk_shm_event_is_set(e));
            break;
        case 2: {
            int rc = dk_shm_event_wait(e, pick_deadline(in),
                                       shared ? DK_SHARED : 0);
            FUZZ_CHECK(rc == (w0 != 0 ? 0 : -ETIMEDOUT));
            FUZZ_CHECK(dk_shm_event_is_set(e) == (w0 != 0));
            break;
        }
        case 3: {
            /* FutexWord.wait(expected) with a deadline that has passed. */
            uint32_t expected = fuzz_u8(in) & 1 ? w0 : fuzz_u32(in);
            int rc =
                dk_futex_wait(&e->word, expected, 1, shared ? DK_SHARED : 0);
            FUZZ_CHECK(rc == (expected == w0 ? -ETIMEDOUT : -EAGAIN));
            break;
        }
        case 4: {
            int rc = dk_futex_wake(&e->word, 1 + fuzz_u8(in) % 4,
                                   shared ? DK_SHARED : 0);
            FUZZ_CHECK(rc == 0); /* nobody waits */
            break;
        }
        default: {
            uint32_t v = fuzz_u32(in);
            memcpy(&e->word, &v, 4);
            break;
        }
        }
        FUZZ_CHECK(e->word == 0 || e->word == 1 || code % 6 >= 2);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    struct obj o;
    uint8_t kind = fuzz_u8(&in);
    size_t off = fuzz_u8(&in) % (ARENA - DK_SHM_HEADER_SIZE + 1);
    o.arena = aligned_alloc(64, ARENA);
    FUZZ_CHECK(o.arena != NULL);
    fuzz_bytes(&in, o.arena, ARENA);
    o.p = o.arena + off;
    o.me = (uint32_t)getpid();
    o.tid = (uint32_t)syscall(SYS_gettid);
    memcpy(o.before, o.arena, ARENA);
    switch (kind % 3) {
    case 0: {
        int want = mutex_init_expected(&o);
        int rc = dk_shm_mutex_init((dk_shm_mutex_t *)(void *)o.p);
        FUZZ_CHECK(rc == want);
        check_init_writes(&o, rc, DK_MUTEX_MAGIC, false, 0);
        /* The binding raises on failure: nothing more reaches the core. */
        if (rc == 0) {
            mutex_ops(&o, &in);
        }
        break;
    }
    case 1: {
        int want = semaphore_init_expected(&o);
        bool set = kind & 0x80;
        uint32_t count = fuzz_u32(&in);
        int rc = dk_shm_semaphore_init((dk_shm_semaphore_t *)(void *)o.p,
                                       count, set ? DK_SHM_SET_COUNT : 0);
        FUZZ_CHECK(rc == want);
        check_init_writes(&o, rc, DK_SEMAPHORE_MAGIC, set, count);
        if (rc == 0) {
            semaphore_ops(&o, &in);
        }
        break;
    }
    default: {
        int rc = dk_shm_event_check((const dk_shm_event_t *)(void *)o.p);
        FUZZ_CHECK(rc == ((uintptr_t)o.p % 4 != 0 ? -EINVAL : 0));
        check_init_writes(&o, -1, 0, false, 0);
        if (rc == 0) {
            event_ops(&o, &in);
        }
        break;
    }
    }
    free(o.arena);
    return 0;
}
