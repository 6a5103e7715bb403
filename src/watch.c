/*
 * The futex watcher (watch.h): shards of up to SLOTS distinct words, one
 * thread each, sleeping in futex_waitv on every word of the shard plus the
 * shard's control word `ctl`.
 *
 * A registration must never be missed between the thread's snapshot of
 * the words and its sleep. Each change bumps ctl under the shard lock and
 * wakes it; the thread snapshots ctl with the words, under the same lock:
 *
 *   caller (add)                          watcher thread
 *   lock; insert; ctl += 1; unlock (A1)   lock; snapshot words, c = ctl;
 *   futex_wake(&ctl)               (A2)   unlock                     (B1)
 *                                         futex_waitv(words..., ctl == c)
 *
 * If A1 precedes B1 the snapshot holds the new word. Otherwise ctl != c
 * when the thread enters futex_waitv (-EAGAIN at once) or A2 wakes it; it
 * loops and takes a new snapshot. A word that changes between the
 * caller's own check and the snapshot is caught the same way: its
 * `busy` value no longer matches, so futex_waitv returns -EAGAIN and the
 * thread rescans.
 *
 * Without futex_waitv (kernels before 5.16) a shard holds one word and
 * its thread sleeps in a plain futex wait on it; a change wakes that word
 * instead of ctl (a spurious wake-up for any other sleeper on it, which
 * every protocol we watch tolerates).
 */
#include "watch.h"

#include "atomic.h"
#include "os/linux/os.h"
#include "os/linux/uring.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

#define SLOTS (DK__OS_WAITV_MAX - 1)
#define MAX_SHARDS 1024

struct slot {
    uint32_t *word;
    uint32_t busy;
    bool shared;
    dk__watch_t *head; /* NULL: slot free */
};

struct dk__watch_shard {
    pthread_mutex_t lock;
    uint32_t ctl;
    int cap; /* SLOTS, or 1 in the fallback */
    int used;
    struct slot slots[SLOTS];
};

enum { W_IDLE, W_REGISTERED, W_FIRED };

static pthread_mutex_t shards_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dk__watch_shard *shards[MAX_SHARDS];
static int nshards;
static int use_waitv = -1; /* -1: not probed yet */

static bool
probe_waitv(void)
{
    if (getenv("DK_NO_FUTEX_WAITV") != NULL) {
        return false; /* the tests' way to exercise the fallback */
    }
    uint32_t word = 1;
    struct dk__os_waitv v = {&word, 0, false};
    /* The word differs from `expected`: -EAGAIN at once when supported. */
    return dk__os_futex_waitv(&v, 1, DK_TIME_FOREVER) != -ENOSYS;
}

bool
dk__watch_uses_waitv(void)
{
    pthread_mutex_lock(&shards_lock);
    if (use_waitv < 0) {
        use_waitv = probe_waitv();
    }
    bool r = use_waitv;
    pthread_mutex_unlock(&shards_lock);
    return r;
}

static void
unlink_watch(struct dk__watch_shard *s, dk__watch_t *w)
{
    struct slot *sl = &s->slots[w->slot];
    if (w->prev != NULL) {
        w->prev->next = w->next;
    } else {
        sl->head = w->next;
    }
    if (w->next != NULL) {
        w->next->prev = w->prev;
    }
    w->next = w->prev = NULL;
    if (sl->head == NULL) {
        sl->word = NULL;
        s->used--;
    }
}

/* Move every watch of slot i (or only the expired ones) to *fired. */
static void
collect(struct dk__watch_shard *s, int i, bool only_expired, uint64_t now,
        int rc, dk__watch_t **fired)
{
    dk__watch_t *w = s->slots[i].head;
    while (w != NULL) {
        dk__watch_t *next = w->next;
        if (!only_expired || w->deadline <= now) {
            unlink_watch(s, w);
            w->state = W_FIRED;
            /* The result travels in `slot` once the watch is fired. */
            w->slot = rc;
            w->next = *fired;
            *fired = w;
        }
        w = next;
    }
}

static void *
watcher_main(void *arg)
{
    struct dk__watch_shard *s = arg;
    struct dk__os_waitv v[DK__OS_WAITV_MAX];
    int map[DK__OS_WAITV_MAX];
    for (;;) {
        pthread_mutex_lock(&s->lock); /* (B1) */
        int n = 0;
        uint64_t deadline = DK_TIME_FOREVER;
        for (int i = 0; i < s->cap; i++) {
            struct slot *sl = &s->slots[i];
            if (sl->head == NULL) {
                continue;
            }
            v[n].word = sl->word;
            v[n].expected = sl->busy;
            v[n].shared = sl->shared;
            map[n++] = i;
            for (dk__watch_t *w = sl->head; w != NULL; w = w->next) {
                if (w->deadline < deadline) {
                    deadline = w->deadline;
                }
            }
        }
        uint32_t c = dk__atomic_load_relaxed(&s->ctl);
        pthread_mutex_unlock(&s->lock);

        int rc;
        if (s->cap == 1) {
            rc = n == 0 ? dk__os_futex_wait(&s->ctl, c, deadline, false)
                        : dk__os_futex_wait(v[0].word, v[0].expected, deadline,
                                            v[0].shared);
            if (n == 1 && rc == 0) {
                rc = 0; /* index 0: the one word */
            } else if (n == 0 && rc == 0) {
                rc = -EAGAIN; /* ctl: rescan */
            }
        } else {
            v[n].word = &s->ctl;
            v[n].expected = c;
            v[n].shared = false;
            rc = dk__os_futex_waitv(v, n + 1, deadline);
            if (rc == n) {
                rc = -EAGAIN; /* ctl woke us: rescan */
            }
        }

        dk__watch_t *fired = NULL;
        pthread_mutex_lock(&s->lock);
        uint64_t now = dk__os_monotonic_ns();
        for (int k = 0; k < n; k++) {
            int i = map[k];
            struct slot *sl = &s->slots[i];
            /* The slot may have been emptied and reused since the
             * snapshot: judge it by its current word. */
            if (sl->head == NULL) {
                continue;
            }
            bool woken = rc == k && sl->word == v[k].word;
            /* The watcher's own check of the word: acquire, so a caller
             * woken by this sees what the changer published before its
             * store (partner: the primitive's release/seq_cst RMW). */
            bool changed = dk__atomic_load_acquire(sl->word) != sl->busy;
            if (woken || changed || rc == -EFAULT) {
                collect(s, i, false, now, 0, &fired);
            }
        }
        for (int i = 0; i < s->cap; i++) {
            if (s->slots[i].head != NULL) {
                collect(s, i, true, now, -ETIMEDOUT, &fired);
            }
        }
        pthread_mutex_unlock(&s->lock);
        while (fired != NULL) {
            dk__watch_t *w = fired;
            fired = w->next;
            int wrc = w->slot;
            w->next = NULL;
            w->fn(w, wrc); /* w may be freed from here on */
        }
    }
    return NULL;
}

/* In a forked child the watcher threads are gone: start from no shards.
 * The parent's registrations never fire in the child, and cancelling one
 * there returns false (its owner keeps it, leaked on purpose). */
static void
atfork_child(void)
{
    pthread_mutex_init(&shards_lock, NULL);
    for (int k = 0; k < nshards; k++) {
        struct dk__watch_shard *s = shards[k];
        /* The watcher thread may have held the lock at the fork. */
        pthread_mutex_init(&s->lock, NULL);
        for (int i = 0; i < s->cap; i++) {
            for (dk__watch_t *w = s->slots[i].head; w != NULL; w = w->next) {
                w->state = W_FIRED; /* never fires: cancel says so */
            }
            s->slots[i].head = NULL;
        }
        s->used = 0;
    }
    nshards = 0; /* the shards themselves are leaked on purpose */
}

static struct dk__watch_shard *
shard_new(int cap)
{
    static bool atfork_done;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, atfork_child);
        atfork_done = true;
    }
    struct dk__watch_shard *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->cap = cap;
    if (dk__os_thread_start(watcher_main, s, "dk-watch") < 0) {
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
    }
    return s;
}

/* Put w into s if its word is already watched there or a slot is free.
 * Called with s->lock held; returns the slot or -1. */
static int
place(struct dk__watch_shard *s, dk__watch_t *w)
{
    int free_slot = -1;
    for (int i = 0; i < s->cap; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->head == NULL) {
            if (free_slot < 0) {
                free_slot = i;
            }
            continue;
        }
        if (sl->word == w->word && sl->busy == w->busy &&
            sl->shared == w->shared) {
            return i;
        }
    }
    return free_slot;
}

static void
poke(struct dk__watch_shard *s, uint32_t *word, bool shared)
{
    if (s->cap == 1) {
        dk__os_futex_wake(word, INT_MAX, shared);
    }
    dk__os_futex_wake(&s->ctl, 1, false); /* (A2) */
}

int
dk__watch_add(dk__watch_t *w)
{
    bool waitv = dk__watch_uses_waitv();
    pthread_mutex_lock(&shards_lock);
    struct dk__watch_shard *s = NULL;
    int i = -1;
    for (int k = 0; k < nshards; k++) {
        pthread_mutex_lock(&shards[k]->lock);
        i = place(shards[k], w);
        if (i >= 0) {
            s = shards[k];
            break;
        }
        pthread_mutex_unlock(&shards[k]->lock);
    }
    if (s == NULL) {
        if (nshards == MAX_SHARDS ||
            (s = shard_new(waitv ? SLOTS : 1)) == NULL) {
            pthread_mutex_unlock(&shards_lock);
            return nshards == MAX_SHARDS ? -EAGAIN : -ENOMEM;
        }
        shards[nshards++] = s;
        pthread_mutex_lock(&s->lock);
        i = 0;
    }
    pthread_mutex_unlock(&shards_lock);
    struct slot *sl = &s->slots[i];
    if (sl->head == NULL) {
        sl->word = w->word;
        sl->busy = w->busy;
        sl->shared = w->shared;
        s->used++;
    }
    w->shard = s;
    w->slot = i;
    w->prev = NULL;
    w->next = sl->head;
    if (sl->head != NULL) {
        sl->head->prev = w;
    }
    sl->head = w;
    w->state = W_REGISTERED;
    dk__atomic_add_relaxed(&s->ctl, 1); /* (A1): the lock orders it */
    pthread_mutex_unlock(&s->lock);
    poke(s, w->word, w->shared);
    return 0;
}

bool
dk__watch_cancel(dk__watch_t *w)
{
    struct dk__watch_shard *s = w->shard;
    if (s == NULL) {
        return false;
    }
    uint32_t *word = w->word;
    bool shared = w->shared;
    pthread_mutex_lock(&s->lock);
    bool was = w->state == W_REGISTERED;
    if (was) {
        unlink_watch(s, w);
        w->state = W_IDLE;
        dk__atomic_add_relaxed(&s->ctl, 1);
    }
    pthread_mutex_unlock(&s->lock);
    if (was) {
        /* Let the thread stop sleeping on a word nobody watches (its
         * memory may be unmapped soon). */
        poke(s, word, shared);
    }
    return was;
}

/* ---- ring watches ------------------------------------------------------ */

/* 1 once a ring could not be opened for want of support: later loops go
 * straight to the watcher instead of asking the kernel again. */
static int ring_unsupported;

int
dk__watch_ring_open(int eventfd, struct dk__os_uring **out)
{
    if (getenv("DK_NO_IO_URING") != NULL ||
        dk__atomic_load_relaxed(&ring_unsupported)) {
        return -ENOSYS;
    }
    int rc = dk__os_uring_open(eventfd, out);
    if (rc == -ENOSYS) {
        dk__atomic_store_relaxed(&ring_unsupported, 1);
    }
    return rc;
}
