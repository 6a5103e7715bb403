/*
 * The object model: reference counting, contexts and finalizers, and the
 * generic dk_object_* operations, for every heap object of the runtime.
 * What differs between kinds (what destroying one means, where its
 * finalizer runs, how it describes itself) is in each kind's vtable,
 * defined beside its code; this file dispatches through them.
 *
 * The last reference: dk_release's acquire-release decrement that takes
 * the count from 1 to 0 pairs with every other owner's decrement, so all
 * their uses happen before the destruction. Nothing can take a new
 * reference then (a retain from 0 is a resurrection and aborts).
 */
#include "internal.h"

#include "dk/io.h"

#include <errno.h>

static const struct dk__vtable *const vtables[] = {
    &dk__queue_vtable,  &dk__group_vtable, &dk__semaphore_vtable,
    &dk__source_vtable, &dk__data_vtable,  &dk__io_vtable,
};

static const struct dk__vtable *
vtable_of(const struct dk__object *o)
{
    for (size_t i = 0; i < sizeof vtables / sizeof vtables[0]; i++) {
        if (vtables[i]->kind == o->kind) {
            return vtables[i];
        }
    }
    DK_CLIENT_CRASH("a dk object function called on something that is not "
                    "an object (or on a destroyed one)");
}

static bool
is_immortal(const struct dk__object *o)
{
    return (dk__atomic_load_relaxed(&o->refcnt) & DK_REFCNT_IMMORTAL) != 0;
}

void
dk__object_init(struct dk__object *o, uint32_t kind)
{
    o->refcnt = 1;
    o->kind = kind;
    o->context = NULL;
    o->finalizer = NULL;
}

dk_queue_t *
dk__finalize_on_root(struct dk__object *o)
{
    (void)o;
    return dk__default_root();
}

void
dk__finalizer_run(dk_queue_t *q, void *ctx, dk_function_t fn)
{
    if (fn == NULL || ctx == NULL) {
        return;
    }
    if (dk_queue_async_f(q, ctx, fn) < 0) {
        fn(ctx); /* out of memory: run it here rather than lose it */
    }
}

void
dk_retain(void *object)
{
    struct dk__object *o = object;
    if (o == NULL || is_immortal(o)) {
        return;
    }
    if (dk__atomic_add_relaxed(&o->refcnt, 1) == 0) {
        DK_CLIENT_CRASH("Resurrection of an object");
    }
}

void
dk_release(void *object)
{
    struct dk__object *o = object;
    if (o == NULL || is_immortal(o)) {
        return;
    }
    /* Acquire-release: every use by other owners happens before the
     * destruction by whoever drops the last reference (see the top). */
    uint32_t old = dk__atomic_sub_acq_rel(&o->refcnt, 1);
    if (old > 1) {
        return;
    }
    const struct dk__vtable *vt = vtable_of(o);
    if (old == 0) {
        fprintf(stderr, "dispatchkit: BUG IN CLIENT: Over-release of a %s\n",
                vt->name);
        abort();
    }
    dk_queue_t *fq = vt->finalize(o);
    dk__finalizer_run(fq, o->context, o->finalizer);
    vt->dispose(o);
}

void
dk_object_suspend(void *object)
{
    struct dk__object *o = object;
    if (o->kind == DK_KIND_QUEUE) {
        dk_queue_suspend(object);
    } else if (o->kind == DK_KIND_SOURCE) {
        dk_source_suspend(object);
    }
}

int
dk_object_resume(void *object)
{
    struct dk__object *o = object;
    if (o->kind == DK_KIND_QUEUE) {
        return dk_queue_resume(object);
    }
    if (o->kind == DK_KIND_SOURCE) {
        return dk_source_resume(object);
    }
    return -EINVAL;
}

int
dk_object_activate(void *object)
{
    struct dk__object *o = object;
    if (o->kind == DK_KIND_QUEUE) {
        return dk_queue_activate(object);
    }
    if (o->kind == DK_KIND_SOURCE) {
        /* Activating a source starts it once (GCD's dispatch_activate):
         * one already started refuses the resume (-EOVERFLOW), and
         * activating it again does nothing. */
        if (!dk_source_testcancel(object)) {
            int rc = dk_source_resume(object);
            (void)rc;
        }
        return 0;
    }
    return -EINVAL;
}

void
dk_object_set_context(void *object, void *ctx)
{
    struct dk__object *o = object;
    if (is_immortal(o)) {
        return; /* global queues ignore contexts, as in GCD */
    }
    dk__atomic_store_release(&o->context, ctx);
}

void *
dk_object_get_context(const void *object)
{
    const struct dk__object *o = object;
    return dk__atomic_load_acquire(&o->context);
}

void
dk_object_set_finalizer_f(void *object, dk_function_t fn)
{
    struct dk__object *o = object;
    if (is_immortal(o)) {
        return;
    }
    dk__atomic_store_release(&o->finalizer, fn);
}

int
dk_object_describe(const void *object, char *buf, size_t len)
{
    const struct dk__object *o = object;
    uint32_t refs = dk__atomic_load_relaxed(&o->refcnt);
    char refcnt[16];
    if (refs & DK_REFCNT_IMMORTAL) {
        snprintf(refcnt, sizeof refcnt, "immortal");
    } else {
        snprintf(refcnt, sizeof refcnt, "%u", refs);
    }
    for (size_t i = 0; i < sizeof vtables / sizeof vtables[0]; i++) {
        if (vtables[i]->kind == o->kind) {
            return vtables[i]->describe(o, refcnt, buf, len);
        }
    }
    return snprintf(buf, len, "unknown object [%p]", object);
}
