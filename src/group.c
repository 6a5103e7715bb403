/*
 * Dispatch groups. The count is changed with atomics; waiters sleep on a
 * generation word bumped on every transition to zero; notify items sit in
 * a list under a mutex and are submitted on the transition.
 *
 *   waiter                                leave (count 1 -> 0)
 *   g = gen                               count -= 1           (L1)
 *   waiters += 1              (W1)        gen += 1
 *   count == 0? -> return     (W2)        waiters > 0? -> wake (L2)
 *   futex_wait(&gen, g)
 *
 * W1/W2 and L1/L2 are sequentially consistent, so the waiter sees the zero
 * or the leaver sees the waiter; a waiter that has not slept yet finds the
 * generation changed and returns from futex_wait at once.
 */
#include "internal.h"
#include "watch.h"

#include <errno.h>
#include <limits.h>

struct notify {
    struct notify *next;
    dk_queue_t *queue;
    void *ctx;
    dk_function_t fn;
};

struct dk_group_s {
    struct dk__object obj;
    long count;
    uint32_t gen;
    uint32_t waiters;
    pthread_mutex_t lock;
    struct notify *notify_head, *notify_tail;
    dk_group_t *reg_prev, *reg_next; /* in `groups` (groups_lock) */
};

/*
 * fork(). A group's lock may be held by another thread when one forks (a
 * leave that emptied the group, a notify being added), and the child,
 * which does not have that thread, would wait for it for ever. So every
 * group is on a list, and the forking thread holds the list's lock and
 * every group's lock across fork(): no thread is between lock and unlock
 * of one then, so each notify list is whole in the child, which makes the
 * locks anew (the runtime's fork handlers in pool.c call these three).
 * Lock order: groups_lock, then a group's lock; nothing that holds a
 * group's lock takes another lock.
 */
static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static dk_group_t *groups;

void
dk__group_fork_prepare(void)
{
    pthread_mutex_lock(&groups_lock);
    for (dk_group_t *g = groups; g != NULL; g = g->reg_next) {
        pthread_mutex_lock(&g->lock);
    }
}

void
dk__group_fork_parent(void)
{
    for (dk_group_t *g = groups; g != NULL; g = g->reg_next) {
        pthread_mutex_unlock(&g->lock);
    }
    pthread_mutex_unlock(&groups_lock);
}

void
dk__group_fork_child(void)
{
    for (dk_group_t *g = groups; g != NULL; g = g->reg_next) {
        pthread_mutex_init(&g->lock, NULL);
    }
    pthread_mutex_init(&groups_lock, NULL);
}

int
dk_group_create(dk_group_t **out)
{
    dk__runtime_ensure();
    dk_group_t *g = calloc(1, sizeof *g);
    *out = g;
    if (g == NULL) {
        return -ENOMEM;
    }
    dk__object_init(&g->obj, DK_KIND_GROUP);
    pthread_mutex_init(&g->lock, NULL);
    pthread_mutex_lock(&groups_lock);
    g->reg_next = groups;
    if (groups != NULL) {
        groups->reg_prev = g;
    }
    groups = g;
    pthread_mutex_unlock(&groups_lock);
    return 0;
}

/* The group's part of the object model (object.c). */
static dk_queue_t *
group_finalize(struct dk__object *o)
{
    dk_group_t *g = (dk_group_t *)o;
    if (dk__atomic_load_acquire(&g->count) != 0) {
        DK_CLIENT_CRASH("Group object deallocated while in use");
    }
    return dk__default_root();
}

static void
group_dispose(struct dk__object *o)
{
    dk_group_t *g = (dk_group_t *)o;
    pthread_mutex_lock(&groups_lock);
    if (g->reg_prev != NULL) {
        g->reg_prev->reg_next = g->reg_next;
    } else {
        groups = g->reg_next;
    }
    if (g->reg_next != NULL) {
        g->reg_next->reg_prev = g->reg_prev;
    }
    pthread_mutex_unlock(&groups_lock);
    for (struct notify *n = g->notify_head, *next; n != NULL; n = next) {
        next = n->next;
        dk_release(n->queue);
        free(n);
    }
    pthread_mutex_destroy(&g->lock);
    free(g);
}

static int
group_describe(const struct dk__object *o, const char *refcnt, char *buf,
               size_t len)
{
    return snprintf(buf, len, "group[%p] = { refcnt = %s, count = %ld }",
                    (const void *)o, refcnt,
                    dk_group_count((const dk_group_t *)o));
}

const struct dk__vtable dk__group_vtable = {
    .kind = DK_KIND_GROUP,
    .name = "group",
    .finalize = group_finalize,
    .dispose = group_dispose,
    .describe = group_describe,
};

void
dk_group_enter(dk_group_t *g)
{
    dk__atomic_add_acq_rel(&g->count, 1);
}

static void
group_became_empty(dk_group_t *g)
{
    dk__atomic_add_seq_cst(&g->gen, 1);
    if (dk__atomic_load_seq_cst(&g->waiters) > 0) { /* (L2) */
        dk__os_futex_wake(&g->gen, INT_MAX, false);
    }
    /* Only while still empty: a notify added after an enter that followed
     * our (L1) waits for that enter's leave, whose transition to zero
     * takes it (dk_group_notify_f appends only under the lock, seeing a
     * count above zero). Acquire pairs with the enter's and (L1)'s RMWs. */
    pthread_mutex_lock(&g->lock);
    struct notify *n = NULL;
    if (dk__atomic_load_acquire(&g->count) == 0) {
        n = g->notify_head;
        g->notify_head = g->notify_tail = NULL;
    }
    pthread_mutex_unlock(&g->lock);
    while (n != NULL) {
        struct notify *next = n->next;
        if (dk_queue_async_f(n->queue, n->ctx, n->fn) < 0) {
            n->fn(n->ctx); /* out of memory: run it here, never lose it */
        }
        dk_release(n->queue);
        free(n);
        n = next;
    }
}

int
dk_group_leave(dk_group_t *g)
{
    long old = dk__atomic_load_relaxed(&g->count);
    do {
        if (old <= 0) {
            return -EOVERFLOW;
        }
    } while (!dk__atomic_cas_seq_cst(&g->count, &old, old - 1)); /* (L1) */
    if (old == 1) {
        group_became_empty(g);
    }
    return 0;
}

void dk__group_leave_item(dk_group_t *g);
void
dk__group_leave_item(dk_group_t *g)
{
    if (dk_group_leave(g) < 0) {
        DK_INTERNAL_CRASH("group count underflow on item completion");
    }
    dk_release(g); /* the item's reference */
}

int
dk_group_async_f(dk_group_t *g, dk_queue_t *q, void *ctx, dk_function_t fn)
{
    struct dk__item *it = dk__item_new(ctx, fn, DK_ITEM_GROUP);
    if (it == NULL) {
        return -ENOMEM;
    }
    it->group = g;
    dk_retain(g);
    dk_group_enter(g);
    dk__queue_push(q, it);
    return 0;
}

static int
group_wait(dk_group_t *g, uint64_t deadline, bool interruptible)
{
    for (;;) {
        uint32_t gen = dk__atomic_load_acquire(&g->gen);
        if (dk__atomic_load_acquire(&g->count) == 0) {
            return 0;
        }
        if (deadline == 0) {
            return -ETIMEDOUT;
        }
        dk__atomic_add_seq_cst(&g->waiters, 1);        /* (W1) */
        if (dk__atomic_load_seq_cst(&g->count) == 0) { /* (W2) */
            dk__atomic_sub_relaxed(&g->waiters, 1);
            return 0;
        }
        int rc = dk__os_futex_wait(&g->gen, gen, deadline, false);
        dk__atomic_sub_relaxed(&g->waiters, 1);
        if (rc == -ETIMEDOUT) {
            return dk__atomic_load_acquire(&g->count) == 0 ? 0 : -ETIMEDOUT;
        }
        if (rc == -EINTR && interruptible) {
            return -EINTR;
        }
    }
}

int
dk_group_wait(dk_group_t *g, uint64_t deadline)
{
    return group_wait(g, deadline, false);
}

int
dk_group_wait_interruptible(dk_group_t *g, uint64_t deadline)
{
    return group_wait(g, deadline, true);
}

int
dk_group_notify_f(dk_group_t *g, dk_queue_t *q, void *ctx, dk_function_t fn)
{
    struct notify *n = malloc(sizeof *n);
    if (n == NULL) {
        return -ENOMEM;
    }
    n->next = NULL;
    n->queue = q;
    n->ctx = ctx;
    n->fn = fn;
    dk_retain(q);
    pthread_mutex_lock(&g->lock);
    if (dk__atomic_load_acquire(&g->count) == 0) {
        pthread_mutex_unlock(&g->lock);
        int rc = dk_queue_async_f(q, ctx, fn);
        dk_release(q);
        free(n);
        return rc;
    }
    if (g->notify_tail != NULL) {
        g->notify_tail->next = n;
    } else {
        g->notify_head = n;
    }
    g->notify_tail = n;
    pthread_mutex_unlock(&g->lock);
    return 0;
}

long
dk_group_count(const dk_group_t *g)
{
    return dk__atomic_load_acquire(&g->count);
}

/* ---- steps for asynchronous waiters (watch.h) ------------------------ */

int
dk__group_wait_step(dk_group_t *g, uint32_t **word, uint32_t *busy)
{
    uint32_t gen = dk__atomic_load_acquire(&g->gen);
    if (dk__atomic_load_acquire(&g->count) == 0) {
        return 0;
    }
    dk__atomic_add_seq_cst(&g->waiters, 1);        /* (W1) */
    if (dk__atomic_load_seq_cst(&g->count) == 0) { /* (W2) */
        dk__atomic_sub_relaxed(&g->waiters, 1);
        return 0;
    }
    *word = &g->gen;
    *busy = gen;
    return -EAGAIN;
}

void
dk__group_unannounce(dk_group_t *g)
{
    dk__atomic_sub_relaxed(&g->waiters, 1);
}
