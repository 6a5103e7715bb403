/*
 * Randomized stress of the process-shared sync primitives (dk/mutex.h,
 * dk/shm_event.h) across forked processes. NPROC processes, each with
 * NTHREADS threads, share one MAP_SHARED|MAP_ANONYMOUS region and use the
 * process-shared (futex) flavour of every call:
 *
 * - mutex: every thread locks, checks that nobody else is inside, does a
 *   non-atomic read-modify-write of a plain counter with a random pause
 *   in the middle, and unlocks, DK_STRESS_ITERS times; the counter must
 *   end at NPROC * NTHREADS * iters exactly. Locks mix blocking waits,
 *   tries (deadline 0) and spin counts;
 * - semaphore: one producer thread per process posts random n (1..4)
 *   tokens DK_STRESS_ITERS times; one consumer thread per process takes
 *   them one at a time through tries, short timeouts and blocking waits.
 *   Everything posted is taken exactly once and the count ends at zero;
 *   a blocking wait that times out is an error (a lost wake-up);
 * - event: a token goes round a ring of one event per process
 *   (wait, clear, pass the token, set the next one), DK_STRESS_ITERS / 8
 *   hops; each hop checks that it sees the token value its predecessor
 *   wrote before setting the event.
 *
 * Children report through counters in the shared region and their exit
 * status. The parent waits with a deadline (DK_STRESS_TIMEOUT seconds,
 * default 600) and kills them if they hang; children die with the parent
 * (PR_SET_PDEATHSIG). No wait in the children is unbounded.
 */
#include "../runner.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dk/mutex.h"
#include "dk/shm_event.h"
#include "dk/time.h"

#define NPROC 4
#define NTHREADS 2
/* No single wait may last this long: reaching it is an error. */
#define WAIT_NS (30ull * DK_NSEC_PER_SEC)

/* The shared region. The fields the mutex protects are plain (volatile
 * only so the compiler keeps every access): a broken lock shows up as a
 * lost increment or a second thread inside. */
struct region {
    dk_shm_mutex_t mutex;
    dk_shm_semaphore_t sem;
    volatile long counter;
    volatile int inside;
    volatile int holder;
    long iters;
    long sem_expected; /* tokens all producers will post */
    atomic_long errors;
    atomic_long lock_tries_missed;
    atomic_long posted;
    atomic_long claimed;
    atomic_long taken;
    atomic_long sem_tries_missed;
    atomic_long sem_short_timeouts;
    atomic_long event_hops;
    atomic_long event_polls;
    dk_shm_event_t ring[NPROC];
    volatile long token; /* written before a set, read after a wait */
};

static struct region *R;

struct worker {
    int proc;
    int thread;
    unsigned seed;
};

static unsigned
rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

/* A short busy pause of 0..n-1 steps the compiler cannot remove. */
static void
pause_for(unsigned n)
{
    for (volatile unsigned k = 0; k < n; k++) {
    }
}

static void
fail(const char *what, long detail)
{
    if (atomic_fetch_add(&R->errors, 1) < 10) {
        fprintf(stderr, "# pid %d: %s (%ld)\n", (int)getpid(), what, detail);
    }
}

static long
env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? atol(v) : dflt;
}

/* ---- the three workloads -------------------------------------------- */

static void
mutex_worker(struct worker *w)
{
    int me = w->proc * NTHREADS + w->thread + 1;
    for (long i = 0; i < R->iters; i++) {
        pause_for(rnd(&w->seed) % 64);
        unsigned mode = rnd(&w->seed) % 8;
        int spin = mode < 4 ? 0 : (int)(mode * 16);
        int rc = -ETIMEDOUT;
        if (mode <= 1) {
            /* A try, or the Python binding's try that watches. */
            rc = mode == 0 ? dk_shm_mutex_lock(&R->mutex, 0, 0, DK_SHARED)
                           : dk_shm_mutex_lock_try_spin(&R->mutex, DK_SHARED);
            if (rc == -ETIMEDOUT) {
                atomic_fetch_add(&R->lock_tries_missed, 1);
            }
        }
        if (rc == -ETIMEDOUT && mode <= 1) {
            /* After a failed try, as the Python binding blocks (it may
             * back off first: src/mutex.c). */
            rc = dk_shm_mutex_lock_after_try(&R->mutex, dk_now() + WAIT_NS,
                                             mode == 1 ? 16 : spin, DK_SHARED);
        } else if (rc == -ETIMEDOUT) {
            rc = dk_shm_mutex_lock(&R->mutex, dk_now() + WAIT_NS, spin,
                                   DK_SHARED);
        }
        if (rc != 0) {
            fail("mutex lock", rc); /* 1 would mean an owner died */
            continue;
        }
        if (R->inside != 0) {
            fail("two holders at once", R->holder);
        }
        R->inside = 1;
        R->holder = me;
        long c = R->counter;
        /* Now and then give the CPU away while holding the lock: the
         * others pile up on it and sleep in the kernel. */
        unsigned r = rnd(&w->seed);
        if (r % 128 == 0) {
            sched_yield();
        } else {
            pause_for(r % 32);
        }
        if (R->inside != 1 || R->holder != me) {
            fail("holder changed under the lock", R->holder);
        }
        R->counter = c + 1;
        R->inside = 0;
        rc = dk_shm_mutex_unlock(&R->mutex, DK_SHARED);
        if (rc != 0) {
            fail("mutex unlock", rc);
        }
    }
}

/* Take one token: a try, short timeouts, or one blocking wait. */
static int
take_one(unsigned *seed)
{
    unsigned mode = rnd(seed) % 4;
    uint64_t give_up = dk_now() + WAIT_NS;
    int rc;
    if (mode == 0) {
        rc = dk_shm_semaphore_wait(&R->sem, 0, 0, DK_SHARED);
        if (rc == 0) {
            return 0;
        }
        atomic_fetch_add(&R->sem_tries_missed, 1);
    } else if (mode == 1) {
        for (;;) {
            uint64_t now = dk_now();
            uint64_t step = (1 + rnd(seed) % 200) * DK_NSEC_PER_USEC;
            rc = dk_shm_semaphore_wait(&R->sem, now + step, 0, DK_SHARED);
            if (rc != -ETIMEDOUT || now >= give_up) {
                return rc;
            }
            atomic_fetch_add(&R->sem_short_timeouts, 1);
        }
    }
    return dk_shm_semaphore_wait(&R->sem, give_up, mode == 3 ? 64 : 0,
                                 DK_SHARED);
}

static void
sem_producer(struct worker *w)
{
    /* The token counts come from their own stream, which the parent
     * replays to know the total in advance. */
    unsigned nseed = 0x51ed27u + (unsigned)w->proc * 7919u;
    for (long i = 0; i < R->iters; i++) {
        uint32_t n = 1 + rnd(&nseed) % 4;
        int rc = dk_shm_semaphore_post(
            &R->sem, n,
            DK_SHARED | (rnd(&w->seed) % 8 == 0 ? DK_SHM_FASTIPC_COMPAT : 0));
        if (rc != 0) {
            fail("semaphore post", rc);
            continue;
        }
        atomic_fetch_add(&R->posted, n);
        /* Usually slower than the consumers, so they find the count at
         * zero and sleep; now and then much slower. */
        unsigned r = rnd(&w->seed);
        if (r % 512 == 0) {
            struct timespec ts = {0, (long)(r % 100) * 1000};
            nanosleep(&ts, NULL);
        } else {
            pause_for(r % 2048);
        }
    }
}

static void
sem_consumer(struct worker *w)
{
    /* Claim a token before waiting for it: the claims never exceed what
     * will be posted, so every wait must succeed before its deadline. */
    while (atomic_fetch_add(&R->claimed, 1) < R->sem_expected) {
        int rc = take_one(&w->seed);
        if (rc != 0) {
            fail("semaphore wait (a token was lost?)", rc);
            return;
        }
        atomic_fetch_add(&R->taken, 1);
        pause_for(rnd(&w->seed) % 64);
    }
}

static long
event_hops(void)
{
    long hops = R->iters / 8;
    return hops < NPROC ? NPROC : hops;
}

static void
event_ring(struct worker *w)
{
    dk_shm_event_t *mine = &R->ring[w->proc];
    dk_shm_event_t *next = &R->ring[(w->proc + 1) % NPROC];
    long hops = event_hops();
    /* The token visits us at hops p, p + NPROC, ...; its value is the
     * hop number, written by our predecessor before it set our event. */
    for (long hop = w->proc; hop < hops; hop += NPROC) {
        uint64_t give_up = dk_now() + WAIT_NS;
        int rc;
        if (rnd(&w->seed) % 4 == 0) {
            /* Poll (deadline 0) for a while first. */
            while ((rc = dk_shm_event_wait(mine, 0, DK_SHARED)) ==
                       -ETIMEDOUT &&
                   dk_now() < give_up) {
                atomic_fetch_add(&R->event_polls, 1);
                if (rnd(&w->seed) % 64 == 0) {
                    rc = dk_shm_event_wait(mine, give_up, DK_SHARED);
                    break;
                }
            }
        } else {
            rc = dk_shm_event_wait(mine, give_up, DK_SHARED);
        }
        if (rc != 0) {
            fail("event wait", rc);
            return;
        }
        dk_shm_event_clear(mine);
        if (dk_shm_event_is_set(mine)) {
            fail("event still set after clear", hop);
        }
        if (R->token != hop) {
            fail("event token", R->token);
        }
        atomic_fetch_add(&R->event_hops, 1);
        R->token = hop + 1;
        dk_shm_event_set(next, DK_SHARED);
    }
}

/* ---- processes ------------------------------------------------------ */

enum workload { W_MUTEX, W_SEM, W_EVENT };
static enum workload workload;

static void *
thread_main(void *p)
{
    struct worker *w = p;
    switch (workload) {
    case W_MUTEX:
        mutex_worker(w);
        break;
    case W_SEM:
        if (w->thread == 0) {
            sem_producer(w);
        } else {
            sem_consumer(w);
        }
        break;
    case W_EVENT:
        if (w->thread == 0) {
            event_ring(w);
        }
        break;
    }
    return NULL;
}

static void
child_main(int proc)
{
    /* Die with the parent, so a killed run leaves nothing behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    long errors_before = atomic_load(&R->errors);
    pthread_t t[NTHREADS];
    struct worker w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){proc, i,
                               0x9e3779b9u * (unsigned)(proc * NTHREADS + i) +
                                   (unsigned)getpid()};
        if (pthread_create(&t[i], NULL, thread_main, &w[i]) != 0) {
            fail("pthread_create", i);
            _exit(3);
        }
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
    }
    _exit(atomic_load(&R->errors) != errors_before ? 1 : 0);
}

/* Fork the workers and wait for them until the deadline; kill them all
 * if it passes. Returns the number of children that failed or hung. */
static int
run_children(enum workload wl)
{
    workload = wl;
    fflush(stdout);
    fflush(stderr);
    pid_t kids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        kids[i] = fork();
        CHECK(kids[i] >= 0);
        if (kids[i] == 0) {
            child_main(i);
        }
    }
    uint64_t deadline =
        dk_now() +
        (uint64_t)env_long("DK_STRESS_TIMEOUT", 600) * DK_NSEC_PER_SEC;
    int bad = 0, left = NPROC;
    while (left > 0) {
        for (int i = 0; i < NPROC; i++) {
            int st;
            if (kids[i] == 0 || waitpid(kids[i], &st, WNOHANG) != kids[i]) {
                continue;
            }
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "# child %d: status %#x\n", i, st);
                bad++;
            }
            kids[i] = 0;
            left--;
        }
        if (left > 0 && dk_now() >= deadline) {
            fprintf(stderr, "# %d children hung: killed\n", left);
            for (int i = 0; i < NPROC; i++) {
                if (kids[i] != 0) {
                    kill(kids[i], SIGKILL);
                    waitpid(kids[i], NULL, 0);
                    bad++;
                }
            }
            break;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return bad;
}

static void
setup(void)
{
    R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(R != MAP_FAILED);
    R->iters = env_long("DK_STRESS_ITERS", 20000);
    CHECK(R->iters > 0);
    CHECK_EQ(dk_shm_mutex_init(&R->mutex), 0);
    CHECK_EQ(dk_shm_semaphore_init(&R->sem, 0, DK_SHM_SET_COUNT), 0);
    for (int i = 0; i < NPROC; i++) {
        CHECK_EQ(dk_shm_event_check(&R->ring[i]), 0);
    }
}

DK_TEST_T(stress_sync_mutex_across_processes, 900)
{
    setup();
    uint64_t t0 = dk_now();
    int bad = run_children(W_MUTEX);
    long expected = NPROC * NTHREADS * R->iters;
    printf("# stress-sync mutex: %d procs x %d threads x %ld iters, "
           "counter %ld of %ld, %ld tries missed, %ld errors, %.1f s\n",
           NPROC, NTHREADS, R->iters, R->counter, expected,
           atomic_load(&R->lock_tries_missed), atomic_load(&R->errors),
           (double)(dk_now() - t0) / 1e9);
    fflush(stdout);
    CHECK_EQ(bad, 0);
    CHECK_EQ(atomic_load(&R->errors), 0);
    CHECK_EQ(R->counter, expected);
    CHECK_EQ(R->inside, 0);
    CHECK_EQ(R->mutex.state, 0);
    CHECK_EQ(R->mutex.owner_pid, 0);
}

DK_TEST_T(stress_sync_semaphore_across_processes, 900)
{
    setup();
    for (int p = 0; p < NPROC; p++) {
        unsigned nseed = 0x51ed27u + (unsigned)p * 7919u;
        for (long i = 0; i < R->iters; i++) {
            R->sem_expected += 1 + rnd(&nseed) % 4;
        }
    }
    uint64_t t0 = dk_now();
    int bad = run_children(W_SEM);
    printf("# stress-sync semaphore: %d producers x %ld posts, "
           "%ld tokens posted, %ld taken by %d consumers, "
           "%ld tries missed, %ld short timeouts, %ld errors, %.1f s\n",
           NPROC, R->iters, atomic_load(&R->posted), atomic_load(&R->taken),
           NPROC, atomic_load(&R->sem_tries_missed),
           atomic_load(&R->sem_short_timeouts), atomic_load(&R->errors),
           (double)(dk_now() - t0) / 1e9);
    fflush(stdout);
    CHECK_EQ(bad, 0);
    CHECK_EQ(atomic_load(&R->errors), 0);
    CHECK_EQ(atomic_load(&R->posted), R->sem_expected);
    CHECK_EQ(atomic_load(&R->taken), R->sem_expected);
    /* Nothing left over, nothing taken twice. */
    CHECK_EQ(R->sem.count, 0);
    CHECK_EQ(R->sem.waiters, 0);
    CHECK_EQ(dk_shm_semaphore_wait(&R->sem, 0, 0, DK_SHARED), -ETIMEDOUT);
}

DK_TEST_T(stress_sync_event_ring_across_processes, 900)
{
    setup();
    R->token = 0;
    /* The token starts at process 0. */
    dk_shm_event_set(&R->ring[0], DK_SHARED);
    uint64_t t0 = dk_now();
    int bad = run_children(W_EVENT);
    long hops = event_hops();
    printf("# stress-sync event: ring of %d procs, %ld hops of %ld, "
           "%ld polls, %ld errors, %.1f s\n",
           NPROC, atomic_load(&R->event_hops), hops,
           atomic_load(&R->event_polls), atomic_load(&R->errors),
           (double)(dk_now() - t0) / 1e9);
    fflush(stdout);
    CHECK_EQ(bad, 0);
    CHECK_EQ(atomic_load(&R->errors), 0);
    CHECK_EQ(atomic_load(&R->event_hops), hops);
    CHECK_EQ(R->token, hops);
}
