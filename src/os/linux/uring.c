/*
 * io_uring futex waits (uring.h), with raw syscalls.
 *
 * The ring is used in one way only: every call writes its one or two
 * submission entries and submits them at once with io_uring_enter, so
 * the submission queue is empty between calls and never fills. Futex
 * waits and cancels are issued inline by the kernel during that call
 * (no kernel worker thread). A completion is posted by the kernel in the
 * context of the thread that submitted the wait (task work run when that
 * thread next leaves the kernel; a sleeping thread is woken for it, and
 * an epoll_wait it sleeps in returns EINTR, which event loops retry),
 * and each posting signals the registered eventfd, if any, and wakes
 * whoever polls the ring's fd.
 *
 * Sharing the rings with the kernel:
 *
 *   we (submit)                          kernel
 *   write sqe; sq.tail = t+1 (release)   reads sq.tail (acquire), sqe
 *   io_uring_enter
 *                                        write cqe; cq.tail = u+1 (release)
 *   cq.tail (acquire); read cqes         signal the eventfd, wake pollers
 *   cq.head = u+1 (release)              reads cq.head before reusing
 *
 * Constants newer than some build hosts' <linux/io_uring.h> are defined
 * here from the kernel's ABI (they never change once released).
 */
#include "os/linux/uring.h"

#include "atomic.h"
#include "dk/base.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define OP_ASYNC_CANCEL 14
#define OP_LINK_TIMEOUT 15
#define OP_FUTEX_WAIT 51 /* Linux 6.7 */
#define SQE_IO_LINK (1u << 2)
#define SETUP_CQSIZE (1u << 3)
#define SETUP_SUBMIT_ALL (1u << 7) /* 5.18: a failed entry stops nothing */
#define TIMEOUT_ABS (1u << 0)
#define FUTEX2_SIZE_U32 0x02u
#define FUTEX2_PRIVATE 128u
#define FUTEX_MATCH_ANY 0xffffffffull
#define ENTER_GETEVENTS (1u << 0)
#define SQ_CQ_OVERFLOW (1u << 1)
#define REGISTER_EVENTFD 4
#define REGISTER_PROBE 8
#define OFF_SQ_RING 0ull
#define OFF_SQES 0x10000000ull
#define FEAT_SINGLE_MMAP (1u << 0)
#define FEAT_NODROP (1u << 1)

#define SQ_ENTRIES 8
#define CQ_ENTRIES 1024

/* The kernel's 64-byte submission entry, the fields we use named. */
struct sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off; /* addr2 */
    uint64_t addr;
    uint32_t len;
    uint32_t op_flags; /* timeout_flags, futex_flags, cancel_flags */
    uint64_t user_data;
    uint16_t buf_index;
    uint16_t personality;
    int32_t file_index;
    uint64_t addr3;
    uint64_t pad;
};
_Static_assert(sizeof(struct sqe) == 64, "io_uring sqe ABI");

struct cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};
_Static_assert(sizeof(struct cqe) == 16, "io_uring cqe ABI");

struct dk__os_uring {
    int fd;
    void *rings;
    size_t rings_len;
    struct sqe *sqes;
    size_t sqes_len;
    uint32_t *sq_tail, *sq_mask, *sq_array, *sq_flags;
    uint32_t *cq_head, *cq_tail, *cq_mask;
    struct cqe *cqes;
};

static int
enter(int fd, unsigned submit, unsigned min_complete, unsigned flags)
{
    for (;;) {
        long rc = syscall(__NR_io_uring_enter, fd, submit, min_complete, flags,
                          NULL, 0);
        if (rc >= 0) {
            return (int)rc;
        }
        if (errno != EINTR) {
            return -errno;
        }
    }
}

void
dk__os_uring_close(dk__os_uring_t *r)
{
    if (r == NULL) {
        return;
    }
    if (r->sqes != NULL) {
        munmap(r->sqes, r->sqes_len);
    }
    if (r->rings != NULL) {
        munmap(r->rings, r->rings_len);
    }
    if (r->fd >= 0) {
        close(r->fd);
    }
    free(r);
}

static struct sqe *
next_sqe(dk__os_uring_t *r, unsigned k)
{
    /* Only we write the tail; the kernel consumed every earlier entry. */
    uint32_t t = dk__atomic_load_relaxed(r->sq_tail) + k;
    uint32_t i = t & *r->sq_mask;
    r->sq_array[i] = i;
    struct sqe *e = &r->sqes[i];
    memset(e, 0, sizeof *e);
    return e;
}

static int
submit(dk__os_uring_t *r, unsigned n)
{
    uint32_t t = dk__atomic_load_relaxed(r->sq_tail);
    /* Publish the entries (partner: the kernel's acquire of sq.tail). */
    dk__atomic_store_release(r->sq_tail, t + n);
    int rc = enter(r->fd, n, 0, 0);
    if (rc < 0) {
        /* Nothing consumed (-EBUSY, -ENOMEM): take the entries back. */
        dk__atomic_store_release(r->sq_tail, t);
        return rc;
    }
    return 0;
}

int
dk__os_uring_futex_wait(dk__os_uring_t *r, uint32_t *word, uint32_t expected,
                        bool shared, uint64_t deadline, uint64_t user_data)
{
    if (user_data == 0) {
        return -EINVAL;
    }
    struct sqe *w = next_sqe(r, 0);
    w->opcode = OP_FUTEX_WAIT;
    w->fd = (int32_t)(FUTEX2_SIZE_U32 | (shared ? 0 : FUTEX2_PRIVATE));
    w->addr = (uint64_t)(uintptr_t)word;
    w->off = expected;
    w->addr3 = FUTEX_MATCH_ANY;
    w->user_data = user_data;
    if (deadline == DK_TIME_FOREVER) {
        return submit(r, 1);
    }
    /* The kernel copies the timespec while we submit: the stack will do. */
    struct __kernel_timespec ts = {
        .tv_sec = (long long)(deadline / 1000000000u),
        .tv_nsec = (long long)(deadline % 1000000000u),
    };
    w->flags = SQE_IO_LINK;
    struct sqe *t = next_sqe(r, 1);
    t->opcode = OP_LINK_TIMEOUT;
    t->fd = -1;
    t->addr = (uint64_t)(uintptr_t)&ts;
    t->len = 1;
    t->op_flags = TIMEOUT_ABS; /* CLOCK_MONOTONIC, the default */
    t->user_data = 0;          /* bookkeeping: reap skips it */
    return submit(r, 2);
}

int
dk__os_uring_cancel(dk__os_uring_t *r, uint64_t user_data)
{
    struct sqe *c = next_sqe(r, 0);
    c->opcode = OP_ASYNC_CANCEL;
    c->fd = -1;
    c->addr = user_data;
    c->user_data = 0;
    return submit(r, 1);
}

int
dk__os_uring_reap(dk__os_uring_t *r, struct dk__os_uring_cqe *out, int max)
{
    if (dk__atomic_load_relaxed(r->sq_flags) & SQ_CQ_OVERFLOW) {
        /* Completions that found the ring full wait in the kernel: move
         * them in (we reap them below or on the next call). */
        (void)enter(r->fd, 0, 0, ENTER_GETEVENTS);
    }
    int n = 0;
    uint32_t head = dk__atomic_load_relaxed(r->cq_head);
    /* partner: the kernel's release of cq.tail after writing the cqe */
    uint32_t tail = dk__atomic_load_acquire(r->cq_tail);
    while (head != tail && n < max) {
        const struct cqe *c = &r->cqes[head & *r->cq_mask];
        if (c->user_data != 0) {
            out[n].user_data = c->user_data;
            out[n].res = c->res;
            n++;
        }
        head++;
    }
    /* Give the slots back (partner: the kernel's read of cq.head). */
    dk__atomic_store_release(r->cq_head, head);
    return n;
}

/* Does this kernel have IORING_OP_FUTEX_WAIT? */
static bool
has_futex_wait(int fd)
{
    size_t len =
        sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *p = calloc(1, len);
    if (p == NULL) {
        return false;
    }
    long rc = syscall(__NR_io_uring_register, fd, REGISTER_PROBE, p, 256);
    bool ok = rc == 0 && p->last_op >= OP_FUTEX_WAIT &&
              (p->ops[OP_FUTEX_WAIT].flags & IO_URING_OP_SUPPORTED) != 0;
    free(p);
    return ok;
}

/* A wait on a word that differs must complete at once with -EAGAIN: the
 * entry layout and flags are what this kernel expects. */
static bool
self_test(dk__os_uring_t *r)
{
    uint32_t word = 1;
    if (dk__os_uring_futex_wait(r, &word, 0, false, DK_TIME_FOREVER, 1) < 0) {
        return false;
    }
    struct dk__os_uring_cqe c;
    for (int tries = 0; tries < 2; tries++) {
        if (dk__os_uring_reap(r, &c, 1) == 1) {
            return c.user_data == 1 && c.res == -EAGAIN;
        }
        if (enter(r->fd, 0, 1, ENTER_GETEVENTS) < 0) {
            return false;
        }
    }
    return false;
}

int
dk__os_uring_fd(const dk__os_uring_t *r)
{
    return r->fd;
}

int
dk__os_uring_open(int eventfd, dk__os_uring_t **out)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = SETUP_CQSIZE | SETUP_SUBMIT_ALL;
    p.cq_entries = CQ_ENTRIES;
    long fd = syscall(__NR_io_uring_setup, SQ_ENTRIES, &p);
    if (fd < 0) {
        int e = errno;
        /* EPERM (io_uring_disabled, seccomp), ENOSYS, EINVAL (flags this
         * kernel lacks): no ring here. */
        return e == ENOMEM || e == EMFILE || e == ENFILE ? -e : -ENOSYS;
    }
    dk__os_uring_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        close((int)fd);
        return -ENOMEM;
    }
    r->fd = (int)fd;
    int rc = -ENOSYS;
    if ((p.features & FEAT_SINGLE_MMAP) == 0 ||
        (p.features & FEAT_NODROP) == 0 || !has_futex_wait(r->fd)) {
        goto fail;
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct cqe);
    r->rings_len = sq_len > cq_len ? sq_len : cq_len;
    void *rings = mmap(NULL, r->rings_len, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_POPULATE, r->fd, OFF_SQ_RING);
    if (rings == MAP_FAILED) {
        rc = -ENOMEM;
        goto fail;
    }
    r->rings = rings;
    r->sqes_len = p.sq_entries * sizeof(struct sqe);
    void *sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_POPULATE, r->fd, OFF_SQES);
    if (sqes == MAP_FAILED) {
        rc = -ENOMEM;
        goto fail;
    }
    r->sqes = sqes;
    char *base = rings;
    r->sq_tail = (uint32_t *)(base + p.sq_off.tail);
    r->sq_mask = (uint32_t *)(base + p.sq_off.ring_mask);
    r->sq_array = (uint32_t *)(base + p.sq_off.array);
    r->sq_flags = (uint32_t *)(base + p.sq_off.flags);
    r->cq_head = (uint32_t *)(base + p.cq_off.head);
    r->cq_tail = (uint32_t *)(base + p.cq_off.tail);
    r->cq_mask = (uint32_t *)(base + p.cq_off.ring_mask);
    r->cqes = (struct cqe *)(base + p.cq_off.cqes);
    if (!self_test(r)) {
        goto fail;
    }
    int32_t efd = eventfd;
    if (eventfd >= 0 && syscall(__NR_io_uring_register, r->fd,
                                REGISTER_EVENTFD, &efd, 1) < 0) {
        goto fail;
    }
    *out = r;
    return 0;
fail:
    dk__os_uring_close(r);
    return rc;
}
