/*
 * Parallel loops. The caller and up to ncpu-1 helper items claim chunks of
 * the index space with fetch_add on `next`; each finished chunk adds its
 * length to `completed`, and the chunk that completes the loop wakes the
 * caller. The shared state is reference counted, so a helper that starts
 * after the loop is done (it sat behind other work) finds nothing to claim
 * and only drops its reference: the caller never waits for helpers that
 * have not started.
 */
#include "internal.h"

#include <errno.h>

struct apply {
    uint32_t refcnt;
    uint32_t done; /* futex word: 1 when completed == n */
    size_t n;
    size_t chunk;
    size_t next DK_CACHE_ALIGNED;
    size_t completed DK_CACHE_ALIGNED;
    void *ctx;
    dk_apply_function_t fn;
    dk_apply_range_function_t range_fn;
    dk_apply_range_while_function_t while_fn;
    const dk_apply_caller_t *caller; /* NULL: the caller runs while_fn */
};

static void
apply_unref(struct apply *a)
{
    if (dk__atomic_sub_acq_rel(&a->refcnt, 1) == 1) {
        free(a);
    }
}

/* Count `count` iterations as finished; the one that finishes the loop
 * wakes the caller. */
static void
apply_finish(struct apply *a, size_t count)
{
    /* Release: the iterations happen before the caller's return. */
    size_t done = dk__atomic_add_acq_rel(&a->completed, count);
    if (done + count == a->n) {
        dk__atomic_store_release(&a->done, 1);
        dk__os_futex_wake(&a->done, 1, false);
    }
}

/* One thread's share: claim ranges until none is left. `own` is the
 * calling thread's function (a->caller->run), NULL on helpers. */
static void
apply_work(struct apply *a, dk_apply_range_while_function_t own)
{
    for (;;) {
        size_t begin = dk__atomic_add_relaxed(&a->next, a->chunk);
        if (begin >= a->n) {
            return;
        }
        size_t end = begin + a->chunk < a->n ? begin + a->chunk : a->n;
        bool go_on = true;
        if (own != NULL) {
            go_on = own(a->ctx, begin, end);
        } else if (a->while_fn != NULL) {
            go_on = a->while_fn(a->ctx, begin, end);
        } else if (a->range_fn != NULL) {
            a->range_fn(a->ctx, begin, end);
        } else {
            for (size_t i = begin; i < end; i++) {
                a->fn(a->ctx, i);
            }
        }
        if (!go_on) {
            /* Stop claiming: move `next` to the end at once and count
             * what nobody claimed yet as finished. Chunks already claimed
             * finish (and are counted) as usual, so the total still
             * reaches n exactly once. */
            size_t old = dk__atomic_xchg_relaxed(&a->next, a->n);
            if (old < a->n) {
                apply_finish(a, a->n - old);
            }
        }
        apply_finish(a, end - begin);
    }
}

static void
apply_helper(void *p)
{
    struct apply *a = p;
    apply_work(a, NULL);
    apply_unref(a);
}

struct serial_apply {
    size_t n;
    void *ctx;
    dk_apply_function_t fn;
    dk_apply_range_function_t range_fn;
    dk_apply_range_while_function_t while_fn;
};

static void
serial_apply_run(void *p)
{
    struct serial_apply *s = p;
    if (s->while_fn != NULL) {
        (void)s->while_fn(s->ctx, 0, s->n);
        return;
    }
    if (s->range_fn != NULL) {
        s->range_fn(s->ctx, 0, s->n);
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        s->fn(s->ctx, i);
    }
}

static int
apply_common(size_t n, dk_queue_t *q, void *ctx, dk_apply_function_t fn,
             dk_apply_range_function_t range_fn,
             dk_apply_range_while_function_t while_fn,
             const dk_apply_caller_t *caller)
{
    if (n == 0) {
        return 0;
    }
    if (q == NULL) {
        q = dk__default_root();
    }
    if (q->type == DK_Q_SERIAL || q->type == DK_Q_MAIN) {
        struct serial_apply s = {n, ctx, fn, range_fn, while_fn};
        return dk_queue_sync_f(q, &s, serial_apply_run);
    }
    unsigned ncpu = dk__pool_ncpu();
    struct apply *a = malloc(sizeof *a);
    if (a == NULL) {
        return -ENOMEM;
    }
    /* Several chunks per thread balance uneven iterations; the cap keeps
     * claims rare when iterations are tiny. */
    size_t chunk = n / ((size_t)ncpu * 8);
    if (chunk == 0) {
        chunk = 1;
    } else if (chunk > 4096) {
        chunk = 4096;
    }
    size_t nchunks = (n + chunk - 1) / chunk;
    size_t helpers = ncpu > 1 ? ncpu - 1 : 0;
    if (helpers > nchunks - 1) {
        helpers = nchunks - 1;
    }
    a->refcnt = 1 + (uint32_t)helpers;
    a->done = 0;
    a->n = n;
    a->chunk = chunk;
    a->next = 0;
    a->completed = 0;
    a->ctx = ctx;
    a->fn = fn;
    a->range_fn = range_fn;
    a->while_fn = while_fn;
    a->caller = caller;
    for (size_t i = 0; i < helpers; i++) {
        if (dk_queue_async_f(q, a, apply_helper) < 0) {
            /* The caller does that helper's share. Its own reference keeps
             * the count above zero, so this never frees. */
            dk__atomic_sub_relaxed(&a->refcnt, 1);
        }
    }
    apply_work(a, caller != NULL ? caller->run : NULL);
    if (caller != NULL) {
        caller->unlock(a->ctx); /* helpers may need what it holds */
    }
    dk__wait_word(&a->done, 0, DK_TIME_FOREVER);
    if (caller != NULL) {
        caller->relock(a->ctx);
    }
    apply_unref(a);
    return 0;
}

int
dk_apply_f(size_t n, dk_queue_t *q, void *ctx, dk_apply_function_t fn)
{
    return apply_common(n, q, ctx, fn, NULL, NULL, NULL);
}

int
dk_apply_range_f(size_t n, dk_queue_t *q, void *ctx,
                 dk_apply_range_function_t fn)
{
    return apply_common(n, q, ctx, NULL, fn, NULL, NULL);
}

int
dk_apply_range_while_f(size_t n, dk_queue_t *q, void *ctx,
                       dk_apply_range_while_function_t fn)
{
    return apply_common(n, q, ctx, NULL, NULL, fn, NULL);
}

int
dk_apply_range_caller_f(size_t n, dk_queue_t *q, void *ctx,
                        dk_apply_range_while_function_t fn,
                        const dk_apply_caller_t *caller)
{
    if (q != NULL && (q->type == DK_Q_SERIAL || q->type == DK_Q_MAIN)) {
        return -EINVAL;
    }
    return apply_common(n, q, ctx, NULL, NULL, fn, caller);
}
