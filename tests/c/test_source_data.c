/* Tests of data sources (DATA_ADD, DATA_OR, DATA_REPLACE) and of the
 * registration handler: coalescing under concurrent merges, a handler
 * never concurrent with itself, every return code. */
#include "objects.h"
#include "runner.h"

#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include "dk/queue.h"
#include "dk/sem.h"
#include "dk/source.h"
#include "dk/time.h"

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)

struct tally {
    dk_source_t *s;
    dk_semaphore_t *sem;
    long calls;
    uintptr_t sum;    /* DATA_ADD: the sum of the data seen */
    uintptr_t last;   /* the data of the latest call */
    uintptr_t target; /* signal sem once sum reaches it (0: every call) */
    int inside;
    int overlaps;
    int registered;    /* registration handler calls */
    long calls_at_reg; /* event handler calls before the registration */
    dk_semaphore_t *cancelled;
};

static void
tally_handler(void *p)
{
    struct tally *t = p;
    if (__atomic_exchange_n(&t->inside, 1, __ATOMIC_ACQ_REL)) {
        __atomic_add_fetch(&t->overlaps, 1, __ATOMIC_RELAXED);
    }
    uintptr_t data = dk_source_get_data(t->s);
    __atomic_add_fetch(&t->calls, 1, __ATOMIC_ACQ_REL);
    uintptr_t sum = __atomic_add_fetch(&t->sum, data, __ATOMIC_ACQ_REL);
    __atomic_store_n(&t->last, data, __ATOMIC_RELEASE);
    if ((t->calls & 63) == 0) {
        usleep(200); /* let merges pile up behind a running handler */
    }
    __atomic_store_n(&t->inside, 0, __ATOMIC_RELEASE);
    if (t->target == 0 || sum == t->target) {
        dk_semaphore_signal(t->sem);
    }
}

static void
tally_registered(void *p)
{
    struct tally *t = p;
    __atomic_store_n(&t->calls_at_reg, LOAD(t->calls), __ATOMIC_RELEASE);
    __atomic_add_fetch(&t->registered, 1, __ATOMIC_ACQ_REL);
    dk_semaphore_signal(t->sem);
}

static void
tally_cancelled(void *p)
{
    struct tally *t = p;
    dk_semaphore_signal(t->cancelled);
}

static void
tally_init(dk_source_t *s, struct tally *t)
{
    CHECK(s != NULL);
    t->s = s;
    t->sem = t_semaphore(0);
    t->cancelled = t_semaphore(0);
    dk_source_set_context(s, t);
    dk_source_set_event_handler_f(s, tally_handler);
    dk_source_set_cancel_handler_f(s, tally_cancelled);
}

static dk_source_t *
data_source(dk_source_type_t type, dk_queue_t *q, struct tally *t)
{
    dk_source_t *s = t_source(type, 0, 0, q);
    tally_init(s, t);
    return s;
}

/* Cancel s and wait for its cancel handler, which runs after any event
 * handler call: then nothing touches t any more. */
static void
tally_done(dk_source_t *s, struct tally *t)
{
    dk_source_cancel(s);
    CHECK_EQ(dk_semaphore_wait(t->cancelled, t_in_ms(5000)), 0);
    dk_release(s);
    dk_release(t->sem);
    dk_release(t->cancelled);
}

#define THREADS 4
#define MERGES 20000

static void *
merge_many(void *p)
{
    dk_source_t *s = p;
    for (int i = 0; i < MERGES; i++) {
        CHECK_EQ(dk_source_merge_data(s, (uintptr_t)(i % 7 + 1)), 0);
    }
    return NULL;
}

DK_TEST(data_add_coalesces_concurrent_merges_into_their_sum)
{
    /* On a concurrent queue, so only the source keeps its handler from
     * overlapping with itself. */
    struct tally t = {0};
    dk_queue_t *q = t_queue("add", DK_QUEUE_CONCURRENT, 0, 0, NULL);
    dk_source_t *s = data_source(DK_SOURCE_DATA_ADD, q, &t);
    dk_release(q); /* the source holds it */
    uintptr_t expect = 0;
    for (int i = 0; i < MERGES; i++) {
        expect += (uintptr_t)(i % 7 + 1);
    }
    expect *= THREADS;
    t.target = expect;
    CHECK_EQ(dk_source_resume(s), 0);
    t_run_threads(THREADS, merge_many, s);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(20000)), 0);
    CHECK_EQ(LOAD(t.sum), expect);
    CHECK_EQ(LOAD(t.overlaps), 0);
    /* Coalescing: never more calls than merges, and every call had data. */
    CHECK(LOAD(t.calls) >= 1 && LOAD(t.calls) <= THREADS * MERGES);
    tally_done(s, &t);
}

/* Resume s, which merged data while suspended, wait for a call and check
 * the data it saw last and the number of calls so far. */
static void
resume_and_expect(dk_source_t *s, struct tally *t, uintptr_t last, long calls)
{
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_semaphore_wait(t->sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(t->last), last);
    CHECK_EQ(LOAD(t->calls), calls);
}

DK_TEST(data_add_or_replace_while_suspended_deliver_one_call)
{
    struct tally t = {0};
    dk_queue_t *q = t_queue("serial", 0, 0, 0, NULL);

    dk_source_t *add = data_source(DK_SOURCE_DATA_ADD, q, &t);
    for (uintptr_t i = 1; i <= 100; i++) {
        CHECK_EQ(dk_source_merge_data(add, i), 0);
    }
    CHECK_EQ(dk_source_merge_data(add, 0), 0); /* no event */
    resume_and_expect(add, &t, 5050, 1);
    tally_done(add, &t);

    struct tally o = {0};
    dk_source_t * or = data_source(DK_SOURCE_DATA_OR, q, &o);
    CHECK_EQ(dk_source_merge_data(or, 1), 0);
    CHECK_EQ(dk_source_merge_data(or, 4), 0);
    CHECK_EQ(dk_source_merge_data(or, 4), 0);
    CHECK_EQ(dk_source_merge_data(or, 0), 0);
    resume_and_expect(or, &o, 5, 1);
    tally_done(or, &o);

    struct tally r = {0};
    dk_source_t *rep = data_source(DK_SOURCE_DATA_REPLACE, q, &r);
    CHECK_EQ(dk_source_merge_data(rep, 5), 0);
    CHECK_EQ(dk_source_merge_data(rep, 9), 0);
    resume_and_expect(rep, &r, 9, 1); /* the last value, not a sum */
    /* A 0 replaces a pending value: no call for it. */
    dk_source_suspend(rep);
    CHECK_EQ(dk_source_merge_data(rep, 3), 0);
    CHECK_EQ(dk_source_merge_data(rep, 0), 0);
    CHECK_EQ(dk_source_resume(rep), 0);
    CHECK_EQ(dk_source_merge_data(rep, 7), 0);
    CHECK_EQ(dk_semaphore_wait(r.sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(r.last), 7);
    CHECK_EQ(LOAD(r.calls), 2);
    tally_done(rep, &r);
    dk_release(q);
}

static void
merge_from_handler(void *p)
{
    struct tally *t = p;
    tally_handler(p);
    if (LOAD(t->calls) < 10) {
        CHECK_EQ(dk_source_merge_data(t->s, 1), 0);
    }
}

DK_TEST(data_source_merge_from_its_own_handler_runs_it_again_later)
{
    struct tally t = {0};
    dk_source_t *s = data_source(DK_SOURCE_DATA_ADD, NULL, &t);
    dk_source_set_event_handler_f(s, merge_from_handler);
    t.target = 10;
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_source_merge_data(s, 1), 0);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(t.calls), 10);
    CHECK_EQ(LOAD(t.overlaps), 0);
    tally_done(s, &t);
}

DK_TEST(data_source_errors_and_merge_after_cancel)
{
    /* The handle and mask are unused and must be 0 (as in GCD). */
    dk_source_t *bad;
    CHECK_EQ(dk_source_create(DK_SOURCE_DATA_ADD, 1, 0, NULL, &bad), -EINVAL);
    CHECK_EQ(dk_source_create(DK_SOURCE_DATA_OR, 0, 1, NULL, &bad), -EINVAL);
    CHECK_EQ(dk_source_create((dk_source_type_t)99, 0, 0, NULL, &bad),
             -EINVAL);

    dk_source_t *timer = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    CHECK_EQ(dk_source_merge_data(timer, 1), -EINVAL);
    dk_source_cancel(timer);
    CHECK_EQ(dk_source_resume(timer), 0);
    dk_release(timer);

    struct tally t = {0};
    dk_source_t *s = data_source(DK_SOURCE_DATA_ADD, NULL, &t);
    CHECK_EQ(dk_source_resume(s), 0);
    dk_source_cancel(s);
    CHECK_EQ(dk_source_merge_data(s, 5), 0); /* dropped */
    usleep(50000);
    CHECK_EQ(LOAD(t.calls), 0);
    CHECK_EQ(dk_source_get_handle(s), 0);
    CHECK_EQ(dk_source_get_mask(s), 0);
    tally_done(s, &t);
}

DK_TEST(registration_handler_runs_once_before_the_first_event)
{
    struct tally t = {0};
    dk_queue_t *q = t_queue("reg", DK_QUEUE_CONCURRENT, 0, 0, NULL);
    dk_source_t *s = data_source(DK_SOURCE_DATA_ADD, q, &t);
    dk_release(q);
    dk_source_set_registration_handler_f(s, tally_registered);
    /* Merged before the first resume: delivered after the registration. */
    CHECK_EQ(dk_source_merge_data(s, 3), 0);
    usleep(20000);
    CHECK_EQ(LOAD(t.registered), 0); /* suspended: nothing runs */
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(5000)), 0);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(t.registered), 1);
    CHECK_EQ(LOAD(t.calls_at_reg), 0);
    CHECK_EQ(LOAD(t.calls), 1);
    CHECK_EQ(LOAD(t.last), 3);
    /* Suspend and resume: no second registration. */
    dk_source_suspend(s);
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_source_merge_data(s, 1), 0);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(t.registered), 1);
    /* Set on a registered source, it runs at once (as in GCD). */
    dk_source_set_registration_handler_f(s, tally_registered);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(t.registered), 2);
    tally_done(s, &t);
}

DK_TEST(registration_handler_of_a_timer_and_not_after_cancel)
{
    struct tally t = {0};
    dk_source_t *s = t_source(DK_SOURCE_TIMER, 0, 0, NULL);
    tally_init(s, &t);
    dk_source_set_registration_handler_f(s, tally_registered);
    CHECK_EQ(dk_source_set_timer(s, dk_time(DK_TIME_NOW, 10 * T_MS),
                                 DK_TIME_FOREVER, 0),
             0);
    CHECK_EQ(dk_source_resume(s), 0);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(5000)), 0);
    CHECK_EQ(dk_semaphore_wait(t.sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(t.registered), 1);
    CHECK_EQ(LOAD(t.calls_at_reg), 0);
    CHECK_EQ(LOAD(t.calls), 1);
    tally_done(s, &t);

    /* Cancelled before its first resume: the registration never runs. */
    struct tally c = {0};
    dk_source_t *d = data_source(DK_SOURCE_DATA_OR, NULL, &c);
    dk_source_set_registration_handler_f(d, tally_registered);
    dk_source_cancel(d);
    CHECK_EQ(dk_source_resume(d), 0);
    usleep(50000);
    CHECK_EQ(LOAD(c.registered), 0);
    /* Cleared with NULL before the resume: nothing runs either. */
    struct tally n = {0};
    dk_source_t *e = data_source(DK_SOURCE_DATA_OR, NULL, &n);
    dk_source_set_registration_handler_f(e, tally_registered);
    dk_source_set_registration_handler_f(e, NULL);
    CHECK_EQ(dk_source_resume(e), 0);
    CHECK_EQ(dk_source_merge_data(e, 2), 0);
    CHECK_EQ(dk_semaphore_wait(n.sem, t_in_ms(5000)), 0);
    CHECK_EQ(LOAD(n.registered), 0);
    tally_done(d, &c);
    tally_done(e, &n);
}
