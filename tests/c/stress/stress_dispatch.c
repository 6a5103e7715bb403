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
 * DK_STRESS_ITERS sets the number of items per producer (default 20000).
 */
#include "../objects.h"
#include "../runner.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "dk/group.h"
#include "dk/queue.h"
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

struct producer_arg {
    int index;
    dk_group_t *group;
    unsigned seed;
};

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
    pthread_t t[NPRODUCERS];
    struct producer_arg args[NPRODUCERS];
    for (int i = 0; i < NPRODUCERS; i++) {
        args[i] = (struct producer_arg){i, g, 0x9e3779b9u * (unsigned)(i + 1)};
        pthread_create(&t[i], NULL, producer, &args[i]);
    }
    for (int i = 0; i < NPRODUCERS; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK_EQ(dk_group_wait(g, dk_now() + 300ull * DK_NSEC_PER_SEC), 0);
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
