/* Tests of the object model (src/object.c): dk_retain/dk_release on
 * every kind of heap object, I/O channels included, contexts, and the
 * finalizer running exactly once with its context on the kind's queue. */
#include "objects.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dk/data.h"
#include "dk/group.h"
#include "dk/io.h"
#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/source.h"
#include "dk/time.h"

/* What a finalizer saw: how many calls, the context of each, and the
 * queue it ran on. */
struct fin {
    dk_semaphore_t *ran;
    int calls;
    void *ctx_seen;
    dk_queue_t *queue_seen;
};

static struct fin *fin_record; /* the one struct the finalizer fills */

static void
finalizer(void *ctx)
{
    struct fin *f = fin_record;
    __atomic_add_fetch(&f->calls, 1, __ATOMIC_ACQ_REL);
    f->ctx_seen = ctx;
    f->queue_seen = dk_queue_current();
    dk_semaphore_signal(f->ran);
}

static void
fin_init(struct fin *f)
{
    memset(f, 0, sizeof *f);
    f->ran = t_semaphore(0);
    fin_record = f;
}

/* The reference count as dk_object_describe prints it. */
static long
refcount_of(const void *object)
{
    char buf[512];
    CHECK(dk_object_describe(object, buf, sizeof buf) > 0);
    const char *p = strstr(buf, "refcnt = ");
    CHECK(p != NULL);
    return strtol(p + strlen("refcnt = "), NULL, 10);
}

/* Wait until the finalizer has run, then until the pool has run
 * everything submitted before (a second call, had the last release
 * submitted one, would have run by then), and check it ran once with
 * `ctx`. */
static void
fin_check_once(struct fin *f, void *ctx)
{
    CHECK_EQ(dk_semaphore_wait(f->ran, t_in_ms(10000)), 0);
    while (!dk_pool_quiescent()) {
        sched_yield();
    }
    CHECK_EQ(__atomic_load_n(&f->calls, __ATOMIC_ACQUIRE), 1);
    CHECK(f->ctx_seen == ctx);
    dk_release(f->ran);
}

/* Take a second reference, drop it (the object lives on), set a context
 * and finalizer, drop the last reference. */
static void
retain_release_finalize(void *object, struct fin *f, void *ctx)
{
    CHECK_EQ(refcount_of(object), 1);
    dk_retain(object);
    CHECK_EQ(refcount_of(object), 2);
    dk_object_set_context(object, ctx);
    dk_object_set_finalizer_f(object, finalizer);
    CHECK(dk_object_get_context(object) == ctx);
    dk_release(object);
    CHECK_EQ(refcount_of(object), 1);
    CHECK_EQ(__atomic_load_n(&f->calls, __ATOMIC_ACQUIRE), 0);
    dk_release(object);
    fin_check_once(f, ctx);
}

static int ctx_token;

DK_TEST(object_queue_retain_release_finalizer_once)
{
    struct fin f;
    fin_init(&f);
    dk_queue_t *q = t_queue("obj", 0, 0, 0, NULL);
    retain_release_finalize(q, &f, &ctx_token);
    /* A queue targeting a global queue finalizes on that queue. */
    CHECK(f.queue_seen == dk_queue_global(0));
}

DK_TEST(object_group_retain_release_finalizer_once)
{
    struct fin f;
    fin_init(&f);
    dk_group_t *g = t_group();
    retain_release_finalize(g, &f, &ctx_token);
}

DK_TEST(object_semaphore_retain_release_finalizer_once)
{
    struct fin f;
    fin_init(&f);
    dk_semaphore_t *s = t_semaphore(3);
    retain_release_finalize(s, &f, &ctx_token);
}

DK_TEST(object_data_retain_release_finalizer_once)
{
    struct fin f;
    fin_init(&f);
    dk_data_t *d = t_data("abc", 3);
    retain_release_finalize(d, &f, &ctx_token);
}

DK_TEST(object_source_finalizer_runs_on_its_target_queue)
{
    struct fin f;
    fin_init(&f);
    dk_queue_t *q = t_queue("src-target", 0, 0, 0, NULL);
    dk_source_t *s = t_source(DK_SOURCE_DATA_ADD, 0, 0, q);
    /* A source holds its target queue. */
    CHECK_EQ(refcount_of(q), 2);
    /* Never resumed, so no registration holds a reference. */
    retain_release_finalize(s, &f, &ctx_token);
    CHECK(f.queue_seen == q);
    dk_release(q);
}

static void
io_cleanup(void *ctx, int error)
{
    (void)error;
    dk_semaphore_signal(ctx);
}

struct io_seen {
    dk_io_t *io;
    dk_semaphore_t *done;
    long refcnt;
};

static void
io_cleanup_counts(void *ctx, int error)
{
    (void)error;
    struct io_seen *s = ctx;
    s->refcnt = refcount_of(s->io);
    dk_semaphore_signal(s->done);
}

/* The cleanup handler runs after the channel dropped its own reference:
 * only the owner's is left, whichever thread gets there first. */
DK_TEST(object_io_cleanup_handler_sees_only_the_owners_reference)
{
    int fds[2];
    CHECK_EQ(pipe(fds), 0);
    struct io_seen seen = {0};
    seen.done = t_semaphore(0);
    for (int i = 0; i < 200; i++) {
        seen.refcnt = -1;
        CHECK_EQ(dk_io_create(DK_IO_STREAM, fds[0], NULL, &seen,
                              io_cleanup_counts, &seen.io),
                 0);
        dk_io_close(seen.io, DK_IO_STOP);
        CHECK_EQ(dk_semaphore_wait(seen.done, t_in_ms(10000)), 0);
        CHECK_EQ(seen.refcnt, 1);
        CHECK_EQ(refcount_of(seen.io), 1);
        dk_io_release(seen.io);
    }
    dk_release(seen.done);
    close(fds[0]);
    close(fds[1]);
}

/* The same promise when a read's final call, run on the reading thread,
 * is relieved by the watchdog (io.c, "Handlers on the reading thread"):
 * the relieving item runs the barrier, finds the list empty and the
 * channel closed while that call still waits. The call holds the channel
 * until it returns, so the cleanup handler must wait for it; the call
 * looks for the cleanup for a while first (so that a cleanup run beside
 * it is seen, with the call's reference counted), then returns. */
struct relieved_cleanup {
    struct io_seen seen; /* first: io_cleanup_counts takes it */
    int barrier_ran, cleaned, calls;
    bool saw_barrier;
};

static void *
relieved_alloc(void *actx, size_t size)
{
    (void)actx;
    return malloc(size > 0 ? size : 1);
}

static void
relieved_free(void *actx, void *buf)
{
    (void)actx;
    free(buf);
}

static void
relieved_barrier(void *p)
{
    struct relieved_cleanup *r = p;
    __atomic_store_n(&r->barrier_ran, 1, __ATOMIC_RELEASE);
}

static void
relieved_cleanup_counts(void *p, int error)
{
    struct relieved_cleanup *r = p;
    r->seen.refcnt = refcount_of(r->seen.io);
    __atomic_store_n(&r->cleaned, 1, __ATOMIC_RELEASE);
    (void)error;
    dk_semaphore_signal(r->seen.done);
}

static void
relieved_final_call(void *p, bool done, const void *data, size_t len,
                    int error)
{
    struct relieved_cleanup *r = p;
    (void)len;
    (void)error;
    free((void *)data);
    r->calls++;
    if (!done) {
        return;
    }
    /* Only a relieving thread runs the barrier while this call waits. */
    for (int i = 0; i < 10000 && !__atomic_load_n(&r->barrier_ran,
                                                  __ATOMIC_ACQUIRE);
         i++) {
        usleep(1000);
    }
    r->saw_barrier = __atomic_load_n(&r->barrier_ran, __ATOMIC_ACQUIRE);
    for (int i = 0; i < 200 && !__atomic_load_n(&r->cleaned,
                                                __ATOMIC_ACQUIRE);
         i++) {
        usleep(1000);
    }
}

DK_TEST(object_io_cleanup_waits_for_a_relieved_final_call)
{
    for (int round = 0; round < 3; round++) {
        int fds[2];
        CHECK_EQ(pipe(fds), 0);
        char block[4096];
        memset(block, 'x', sizeof block);
        CHECK_EQ(write(fds[1], block, sizeof block), (ssize_t)sizeof block);
        static struct relieved_cleanup r;
        memset(&r, 0, sizeof r);
        r.seen.done = t_semaphore(0);
        r.seen.refcnt = -1;
        CHECK_EQ(dk_io_create(DK_IO_STREAM, fds[0], NULL, &r,
                              relieved_cleanup_counts, &r.seen.io),
                 0);
        dk_io_t *io = r.seen.io;
        dk_io_set_allocator(io, relieved_alloc, relieved_free, NULL);
        CHECK_EQ(dk_io_read(io, 0, sizeof block, NULL, &r,
                            relieved_final_call),
                 0);
        CHECK_EQ(dk_io_barrier_f(io, &r, relieved_barrier), 0);
        dk_io_close(io, 0);
        CHECK_EQ(dk_semaphore_wait(r.seen.done, t_in_ms(30000)), 0);
        CHECK_EQ(r.seen.refcnt, 1);
        CHECK(r.saw_barrier); /* the call had returned */
        CHECK_EQ(r.calls, 1);
        CHECK_EQ(refcount_of(io), 1);
        dk_io_release(io);
        dk_release(r.seen.done);
        close(fds[0]);
        close(fds[1]);
    }
}

DK_TEST(object_io_channel_joins_the_refcount_model)
{
    struct fin f;
    fin_init(&f);
    int fds[2];
    CHECK_EQ(pipe(fds), 0);
    dk_queue_t *q = t_queue("io-cleanup", 0, 0, 0, NULL);
    dk_semaphore_t *cleaned = t_semaphore(0);
    dk_io_t *io = t_io(DK_IO_STREAM, fds[0], q, cleaned, io_cleanup);
    char buf[128];
    CHECK(dk_object_describe(io, buf, sizeof buf) > 0);
    CHECK(strncmp(buf, "io[", 3) == 0);
    /* dk_io_retain/dk_io_release and dk_retain/dk_release count alike. */
    dk_io_retain(io);
    CHECK_EQ(refcount_of(io), 2);
    dk_io_release(io);
    dk_io_close(io, DK_IO_STOP);
    CHECK_EQ(dk_semaphore_wait(cleaned, t_in_ms(10000)), 0);
    retain_release_finalize(io, &f, &ctx_token);
    /* The finalizer runs on the cleanup handler's queue. */
    CHECK(f.queue_seen == q);
    dk_release(cleaned);
    dk_release(q);
    close(fds[0]);
    close(fds[1]);
}

DK_TEST(object_finalizer_needs_a_context)
{
    /* As in GCD, a finalizer runs only with a context. */
    struct fin f;
    fin_init(&f);
    dk_group_t *g = t_group();
    dk_object_set_finalizer_f(g, finalizer);
    dk_release(g);
    while (!dk_pool_quiescent()) {
        sched_yield();
    }
    CHECK_EQ(__atomic_load_n(&f.calls, __ATOMIC_ACQUIRE), 0);
    dk_release(f.ran);
}

DK_TEST(object_immortals_ignore_retain_release_and_context)
{
    dk_queue_t *g = dk_queue_global(0);
    for (int i = 0; i < 3; i++) {
        dk_release(g);
    }
    dk_retain(g);
    dk_object_set_context(g, &ctx_token);
    CHECK(dk_object_get_context(g) == NULL);
    char buf[256];
    CHECK(dk_object_describe(g, buf, sizeof buf) > 0);
    CHECK(strstr(buf, "refcnt = immortal") != NULL);
    dk_data_t *e = dk_data_empty();
    dk_release(e);
    CHECK_EQ(dk_data_get_size(e), 0);
}

DK_TEST(object_describe_names_each_kind)
{
    char buf[256];
    dk_queue_t *q = t_queue("described", DK_QUEUE_CONCURRENT, 0, 0, NULL);
    CHECK(dk_object_describe(q, buf, sizeof buf) > 0);
    CHECK(strstr(buf, "queue[") == buf);
    CHECK(strstr(buf, "label = \"described\"") != NULL);
    CHECK(strstr(buf, "kind = concurrent") != NULL);
    dk_group_t *g = t_group();
    dk_group_enter(g);
    CHECK(dk_object_describe(g, buf, sizeof buf) > 0);
    CHECK(strcmp(strstr(buf, "count = "), "count = 1 }") == 0);
    CHECK_EQ(dk_group_leave(g), 0);
    dk_semaphore_t *s = t_semaphore(2);
    CHECK(dk_object_describe(s, buf, sizeof buf) > 0);
    CHECK(strstr(buf, "semaphore[") == buf);
    CHECK(strstr(buf, "value = 2") != NULL);
    dk_data_t *d = t_data("abcd", 4);
    CHECK(dk_object_describe(d, buf, sizeof buf) > 0);
    CHECK(strstr(buf, "size = 4") != NULL);
    dk_source_t *src = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    CHECK(dk_object_describe(src, buf, sizeof buf) > 0);
    CHECK(strstr(buf, "type = timer") != NULL);
    /* The length of the whole line is returned even when cut short. */
    int full = dk_object_describe(q, buf, sizeof buf);
    CHECK_EQ(dk_object_describe(q, buf, 8), full);
    CHECK_EQ(strlen(buf), 7);
    dk_source_cancel(src);
    dk_release(src);
    dk_release(d);
    dk_release(s);
    dk_release(g);
    dk_release(q);
}

/* Misuse from C aborts with a message naming it: each in its own child. */
static void
expect_abort(void (*fn)(void))
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        fn();
        _exit(0);
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGABRT);
}

static void
release_non_object(void)
{
    static uint32_t not_an_object[8] = {1, 0x12345678};
    dk_release(not_an_object);
}

DK_TEST(object_misuse_aborts)
{
    expect_abort(release_non_object);
}
