/*
 * Randomized stress of the dispatch runtime. Producer threads submit work
 * to a random hierarchy of serial and concurrent queues (some serial and
 * concurrent queues target other serial queues), with barriers, nested
 * suspend/resume and groups. Every item checks, as it runs:
 *
 * - exactly once: a per-item counter must go 0 -> 1;
 * - FIFO: on a serial queue, items of one producer run in submission order;
 * - exclusion: nothing else runs on its serial queue or any serial
 *   ancestor; a barrier runs alone on its concurrent queue.
 *
 * A second test puts read sources and dispatch_after items on such a
 * hierarchy too (see there).
 *
 * DK_STRESS_ITERS sets the number of items per producer (default 20000;
 * a tenth of it, plus 100, for the second test).
 */
#include "../objects.h"
#include "../runner.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "dk/group.h"
#include "dk/queue.h"
#include "dk/source.h"
#include "dk/time.h"

#define NPRODUCERS 4
#define NSERIAL 6
#define NCONC 3

struct squeue {
    dk_queue_t *q;
    bool concurrent;
    int parent; /* index into serial queues, or -1 */
    atomic_int running;
    atomic_int barrier_running;
    atomic_long last_seq[NPRODUCERS];
};

static struct squeue sq[NSERIAL + NCONC];
static atomic_long errors;
static atomic_uchar *ran;
static long iters;

struct job {
    long id;
    int queue;
    int producer;
    long seq;
    bool barrier;
};

static void
check_ancestors_idle(int qi)
{
    /* While an item of a serial queue runs, nothing else runs on it or on
     * its serial ancestors (the item itself is counted once on each). */
    for (int p = qi; p >= 0; p = sq[p].parent) {
        if (!sq[p].concurrent && atomic_load(&sq[p].running) != 1) {
            atomic_fetch_add(&errors, 1);
        }
    }
}

static void
enter(int qi)
{
    for (int p = qi; p >= 0; p = sq[p].parent) {
        atomic_fetch_add(&sq[p].running, 1);
    }
}

static void
leave(int qi)
{
    for (int p = qi; p >= 0; p = sq[p].parent) {
        atomic_fetch_sub(&sq[p].running, 1);
    }
}

static void
job_run(void *p)
{
    struct job *j = p;
    struct squeue *s = &sq[j->queue];
    if (atomic_fetch_add(&ran[j->id], 1) != 0) {
        atomic_fetch_add(&errors, 1); /* ran twice */
    }
    enter(j->queue);
    if (!s->concurrent) {
        check_ancestors_idle(j->queue);
        long prev = atomic_exchange(&s->last_seq[j->producer], j->seq);
        if (prev >= j->seq) {
            atomic_fetch_add(&errors, 1); /* out of order */
        }
    } else if (j->barrier) {
        atomic_store(&s->barrier_running, 1);
        if (atomic_load(&s->running) != 1) {
            atomic_fetch_add(&errors, 1); /* barrier not alone */
        }
        for (int a = s->parent; a >= 0; a = sq[a].parent) {
            if (atomic_load(&sq[a].running) != 1) {
                atomic_fetch_add(&errors, 1);
            }
        }
        atomic_store(&s->barrier_running, 0);
    } else if (atomic_load(&s->barrier_running)) {
        atomic_fetch_add(&errors, 1); /* ran during a barrier */
    }
    leave(j->queue);
    free(j);
}

/* The checks of a plain item without a FIFO check: it runs once, alone
 * on a serial queue and its ancestors, never during a barrier. */
static void
job_check_unordered(const struct job *j)
{
    if (atomic_fetch_add(&ran[j->id], 1) != 0) {
        atomic_fetch_add(&errors, 1);
    }
    enter(j->queue);
    if (!sq[j->queue].concurrent) {
        check_ancestors_idle(j->queue);
    } else if (atomic_load(&sq[j->queue].barrier_running)) {
        atomic_fetch_add(&errors, 1);
    }
    leave(j->queue);
}

/* A plain item without a FIFO check (the sources' producers interleave
 * them with other kinds of work). */
static void
job_run_unordered(void *p)
{
    job_check_unordered(p);
    free(p);
}

struct producer_arg {
    int index;
    dk_group_t *group;
    unsigned seed;
};

/* NPRODUCERS threads running fn, producer i seeded with seed * (i + 1);
 * returns once they have all submitted and every item in g has run. */
static void
run_producers(void *(*fn)(void *), dk_group_t *g, unsigned seed)
{
    pthread_t t[NPRODUCERS];
    struct producer_arg args[NPRODUCERS];
    for (int i = 0; i < NPRODUCERS; i++) {
        args[i] = (struct producer_arg){i, g, seed * (unsigned)(i + 1)};
        pthread_create(&t[i], NULL, fn, &args[i]);
    }
    for (int i = 0; i < NPRODUCERS; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK_EQ(dk_group_wait(g, dk_now() + 300ull * DK_NSEC_PER_SEC), 0);
}

static unsigned
rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

static void *
producer(void *p)
{
    struct producer_arg *a = p;
    long seqs[NSERIAL + NCONC] = {0};
    for (long i = 0; i < iters; i++) {
        int qi = (int)(rnd(&a->seed) % (NSERIAL + NCONC));
        struct job *j = malloc(sizeof *j);
        j->id = a->index * iters + i;
        j->queue = qi;
        j->producer = a->index;
        j->seq = ++seqs[qi];
        j->barrier = sq[qi].concurrent && rnd(&a->seed) % 16 == 0;
        unsigned r = rnd(&a->seed) % 64;
        if (r == 0 && !sq[qi].concurrent) {
            /* Suspend briefly: items queue up, then drain in order. */
            dk_queue_suspend(sq[qi].q);
            CHECK_EQ(dk_group_async_f(a->group, sq[qi].q, j, job_run), 0);
            CHECK_EQ(dk_queue_resume(sq[qi].q), 0);
        } else if (j->barrier) {
            dk_group_enter(a->group);
            CHECK_EQ(dk_queue_barrier_async_f(sq[qi].q, j, job_run), 0);
            CHECK_EQ(dk_group_leave(a->group),
                     0); /* counted through the sync below */
        } else {
            CHECK_EQ(dk_group_async_f(a->group, sq[qi].q, j, job_run), 0);
        }
    }
    return NULL;
}

static void
noop(void *p)
{
    (void)p;
}

DK_TEST_T(stress_random_hierarchies, 600)
{
    const char *env = getenv("DK_STRESS_ITERS");
    iters = env != NULL ? atol(env) : 20000;
    ran = calloc((size_t)(NPRODUCERS * iters), 1);
    /* Serial 0..2 target the root; 3..5 target a lower-numbered serial
     * queue; concurrent queues target the root or a serial queue. */
    for (int i = 0; i < NSERIAL + NCONC; i++) {
        bool conc = i >= NSERIAL;
        int parent = -1;
        if (i >= 3) {
            parent = i % 3;
        }
        if (i == NSERIAL) {
            parent = -1; /* one concurrent queue on the root */
        }
        sq[i].concurrent = conc;
        sq[i].parent = parent;
        sq[i].q = t_queue(conc ? "stress.c" : "stress.s",
                          conc ? DK_QUEUE_CONCURRENT : 0, 0, 0,
                          parent >= 0 ? sq[parent].q : NULL);
    }
    dk_group_t *g = t_group();
    run_producers(producer, g, 0x9e3779b9u);
    for (int i = 0; i < NSERIAL + NCONC; i++) {
        CHECK_EQ(dk_queue_barrier_sync_f(sq[i].q, NULL, noop),
                 0); /* barriers done */
    }
    long missing = 0;
    for (long i = 0; i < NPRODUCERS * iters; i++) {
        if (atomic_load(&ran[i]) != 1) {
            missing++;
        }
    }
    printf("# stress: %ld items, %ld errors, %ld not run exactly once\n",
           NPRODUCERS * iters, atomic_load(&errors), missing);
    CHECK_EQ(atomic_load(&errors), 0);
    CHECK_EQ(missing, 0);
}

/* ---- sources and after items on the same hierarchy ------------------
 *
 * Read sources on pipes and dispatch_after items target the same random
 * hierarchy while producers submit plain items to it; handlers may run on
 * the event thread (when their queue is idle) or on workers. Every
 * handler and item checks the same exclusion rules as above; plain items
 * also check FIFO; after items run exactly once; a source's handler never
 * runs after its cancel handler, and the cancel handler runs once.
 */

#define NSOURCES 6

struct ssource {
    dk_source_t *s;
    int fd[2];
    int queue;
    atomic_long bytes;    /* read by the handler */
    atomic_int cancelled; /* the cancel handler ran (count) */
    atomic_int inside;
};

static struct ssource ss[NSOURCES];
static atomic_long after_runs;

static void
source_handler(void *p)
{
    struct ssource *x = p;
    if (atomic_load(&x->cancelled) != 0) {
        atomic_fetch_add(&errors, 1); /* after the cancel handler */
    }
    if (atomic_fetch_add(&x->inside, 1) != 0) {
        atomic_fetch_add(&errors, 1); /* the handler overlaps itself */
    }
    enter(x->queue);
    if (!sq[x->queue].concurrent) {
        check_ancestors_idle(x->queue);
    } else if (atomic_load(&sq[x->queue].barrier_running)) {
        atomic_fetch_add(&errors, 1);
    }
    char buf[64];
    ssize_t n = read(x->fd[0], buf, sizeof buf);
    if (n > 0) {
        atomic_fetch_add(&x->bytes, n);
    }
    leave(x->queue);
    atomic_fetch_sub(&x->inside, 1);
}

static void
source_cancel_handler(void *p)
{
    struct ssource *x = p;
    if (atomic_load(&x->inside) != 0) {
        atomic_fetch_add(&errors, 1); /* while a handler runs */
    }
    atomic_fetch_add(&x->cancelled, 1);
}

static void
after_run(void *p)
{
    job_check_unordered(p);
    atomic_fetch_add(&after_runs, 1);
    free(p);
}

static void *
source_producer(void *p)
{
    struct producer_arg *a = p;
    long seqs[NSERIAL + NCONC] = {0};
    for (long i = 0; i < iters; i++) {
        unsigned r = rnd(&a->seed) % 16;
        int qi = (int)(rnd(&a->seed) % (NSERIAL + NCONC));
        struct job *j = malloc(sizeof *j);
        j->id = a->index * iters + i;
        j->queue = qi;
        j->producer = a->index;
        j->barrier = false;
        if (r < 4) {
            struct ssource *x = &ss[rnd(&a->seed) % NSOURCES];
            if (write(x->fd[1], "x", 1) != 1) {
                atomic_fetch_add(&errors, 1);
            }
            j->seq = 0;
            CHECK_EQ(
                dk_group_async_f(a->group, sq[qi].q, j, job_run_unordered), 0);
        } else if (r < 6) {
            j->seq = 0;
            dk_group_enter(a->group);
            CHECK_EQ(
                dk_queue_after_f(
                    sq[qi].q,
                    dk_time(DK_TIME_NOW, (int64_t)(rnd(&a->seed) % 200000)), j,
                    after_run),
                0);
            CHECK_EQ(dk_group_leave(a->group), 0); /* counted by after_runs */
        } else if (r == 6) {
            struct ssource *x = &ss[rnd(&a->seed) % NSOURCES];
            dk_source_suspend(x->s);
            usleep(rnd(&a->seed) % 50);
            CHECK_EQ(dk_source_resume(x->s), 0);
            j->seq = 0;
            CHECK_EQ(
                dk_group_async_f(a->group, sq[qi].q, j, job_run_unordered), 0);
        } else {
            j->seq = ++seqs[qi];
            CHECK_EQ(dk_group_async_f(a->group, sq[qi].q, j, job_run), 0);
        }
    }
    return NULL;
}

DK_TEST_T(stress_sources_and_after_items_on_hierarchies, 600)
{
    const char *env = getenv("DK_STRESS_ITERS");
    iters = (env != NULL ? atol(env) : 20000) / 10 + 100;
    ran = calloc((size_t)(NPRODUCERS * iters), 1);
    for (int i = 0; i < NSERIAL + NCONC; i++) {
        bool conc = i >= NSERIAL;
        int parent = i >= 3 ? i % 3 : -1;
        if (i == NSERIAL) {
            parent = -1;
        }
        sq[i].concurrent = conc;
        sq[i].parent = parent;
        sq[i].q = t_queue(conc ? "stress.c" : "stress.s",
                          conc ? DK_QUEUE_CONCURRENT : 0, 0, 0,
                          parent >= 0 ? sq[parent].q : NULL);
    }
    for (int i = 0; i < NSOURCES; i++) {
        struct ssource *x = &ss[i];
        CHECK_EQ(pipe(x->fd), 0);
        /* Serial queues on the root, one targeting another serial queue,
         * a concurrent queue, the root itself. */
        x->queue = i < 3 ? i : i == 3 ? 4 : NSERIAL;
        x->s = t_source(DK_SOURCE_READ, (uintptr_t)x->fd[0], 0,
                        i == 5 ? NULL : sq[x->queue].q);
        if (i == 5) {
            x->queue = NSERIAL; /* the root: checks as a concurrent one */
        }
        dk_source_set_context(x->s, x);
        dk_source_set_event_handler_f(x->s, source_handler);
        dk_source_set_cancel_handler_f(x->s, source_cancel_handler);
        CHECK_EQ(dk_source_resume(x->s), 0);
    }
    dk_group_t *g = t_group();
    run_producers(source_producer, g, 0x85ebca6bu);
    /* After items are not in the group: wait until every item ran. */
    long ran_once = 0;
    uint64_t until = dk_now() + 60ull * DK_NSEC_PER_SEC;
    for (;;) {
        long runs = 0;
        for (long i = 0; i < NPRODUCERS * iters; i++) {
            runs += atomic_load(&ran[i]) != 0;
        }
        if (runs == NPRODUCERS * iters || dk_now() > until) {
            ran_once = runs;
            break;
        }
        usleep(1000);
    }
    for (int i = 0; i < NSOURCES; i++) {
        dk_source_cancel(ss[i].s);
    }
    for (int i = 0; i < NSOURCES; i++) {
        while (atomic_load(&ss[i].cancelled) == 0 && dk_now() < until) {
            usleep(1000);
        }
        CHECK_EQ(atomic_load(&ss[i].cancelled), 1);
    }
    for (int i = 0; i < NSERIAL + NCONC; i++) {
        CHECK_EQ(dk_queue_barrier_sync_f(sq[i].q, NULL, noop), 0);
    }
    long missing = 0;
    for (long i = 0; i < NPRODUCERS * iters; i++) {
        if (atomic_load(&ran[i]) != 1) {
            missing++;
        }
    }
    long bytes = 0;
    for (int i = 0; i < NSOURCES; i++) {
        bytes += atomic_load(&ss[i].bytes);
    }
    printf("# stress sources: %ld items (%ld after items), %ld bytes read, "
           "%ld errors, %ld not run exactly once\n",
           NPRODUCERS * iters, atomic_load(&after_runs), bytes,
           atomic_load(&errors), missing);
    CHECK_EQ(ran_once, NPRODUCERS * iters);
    CHECK_EQ(atomic_load(&errors), 0);
    CHECK_EQ(missing, 0);
}
