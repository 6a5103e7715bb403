/*
 * Dispatch sources. Events from the event thread (timer fires, signals,
 * fd readiness, process exit), and values a program merges into a data
 * source from any thread, are merged into `pending`; a source whose
 * handler is not already queued or running then submits its one embedded
 * item to the target queue. The item takes all pending data at once, so
 * events coalesce and the handler never runs concurrently with itself.
 *
 * State word:
 *   bit 0   SCHEDULED    the handler item is queued or running
 *   bit 1   CANCELLED    dk_source_cancel was called
 *   bit 2   CANCEL_DONE  the cancel handler has run (or is running)
 *   bit 3   REGISTERED   watched by the event thread (after first resume)
 *   bit 4   REG_DUE      the registration handler is yet to run
 *   bits 8- suspend count (a new source starts at one)
 *
 * The wake-up race is the same as a serial queue's:
 *
 *   event thread                          handler item (ending)
 *   pending += n                 (A)      state &= ~SCHEDULED     (C)
 *   SCHEDULED set? no: CAS, push (B)      pending != 0? wake up   (D)
 *
 * A-D are sequentially consistent, so an event is never left pending with
 * nobody scheduled; the CAS lets only one side submit the item. A due
 * registration handler is a bit of the state word itself: (C) returns the
 * state it cleared SCHEDULED from, so a REG_DUE set before (C) is seen by
 * the ending item, and one set after it is seen by the setter's own
 * wake-up.
 *
 * Read and write sources share one epoll registration per fd (an fd can be
 * registered once), in one-shot mode: after an event the fd is re-armed
 * when a handler finishes, which gives level-triggered delivery without a
 * busy loop while a handler is queued. Regular files cannot be polled and
 * are always ready.
 *
 * Epoll registrations (fd notes, pidfds) are named by a key: an index
 * into `regs` and that slot's generation. The event thread (or its
 * relief, see event.c) may hold an event for a registration another
 * thread is removing; it looks the key up under reg_lock and finds the
 * generation moved on, where a pointer would have been freed memory:
 *
 *   CPU0 (event thread)                   CPU1 (dk_source_cancel)
 *   epoll_wait -> key K (note N)
 *                                         lock; regs[K].gen++; unlock (A)
 *                                         EPOLL_CTL_DEL; free(N)
 *   lock; regs[K].gen != K's? skip  (B)
 *
 * (A) and (B) are under reg_lock, so (B) sees either the slot still
 * holding N (and N is freed only after (B) unlocks: the free follows (A),
 * which waits for the lock) or the new generation.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>

#define SS_SCHEDULED 0x1ull
#define SS_CANCELLED 0x2ull
#define SS_CANCEL_DONE 0x4ull
#define SS_REGISTERED 0x8ull
#define SS_REG_DUE 0x10ull
#define SS_SUSPEND_ONE 0x100ull
#define SS_SUSPEND_SHIFT 8
/* `data` of a read or write source not estimated yet (no fd has that many
 * bytes readable). */
#define DATA_UNKNOWN UINTPTR_MAX

struct fdnote;

struct dk_source_s {
    struct dk__object obj;
    dk_source_type_t type;
    uintptr_t handle;
    unsigned long mask;
    dk_queue_t *queue;
    dk_function_t handler;
    dk_function_t cancel_handler;
    dk_function_t registration_handler;
    uint64_t state;
    uintptr_t pending;
    uintptr_t data;
    struct dk__item item;
    /* TIMER */
    struct dk__timer timer;
    dk_time_t t_start;
    uint64_t t_interval, t_leeway;
    bool t_configured;
    /* READ / WRITE */
    bool fd_regular; /* the fd was a regular file at creation */
    struct fdnote *note;
    dk_source_t *note_next;
    /* SIGNAL */
    dk_source_t *sig_next;
    /* PROC */
    int pidfd;
    uint64_t proc_key;
};

static void source_wakeup(dk_source_t *s);
static void fd_rearm(dk_source_t *s);

static bool
is_suspended(uint64_t st)
{
    return (st >> SS_SUSPEND_SHIFT) != 0;
}

static void
source_merge_add(dk_source_t *s, uintptr_t n)
{
    dk__atomic_add_seq_cst(&s->pending, n); /* (A) */
    source_wakeup(s);
}

static void
source_merge_or(dk_source_t *s, uintptr_t bits)
{
    dk__atomic_or_seq_cst(&s->pending, bits); /* (A) */
    source_wakeup(s);
}

static void
source_merge_replace(dk_source_t *s, uintptr_t value)
{
    dk__atomic_store_seq_cst(&s->pending, value); /* (A) */
    source_wakeup(s);
}

static void
source_invoke(void *p)
{
    dk_source_t *s = p;
    uint64_t st = dk__atomic_load_acquire(&s->state);
    if (!(st & SS_CANCELLED) && !is_suspended(st) && (st & SS_REG_DUE)) {
        /* Pairs with the release store in set_registration_handler_f. */
        dk_function_t rh = dk__atomic_load_acquire(&s->registration_handler);
        dk__atomic_and_acq_rel(&s->state, ~SS_REG_DUE);
        if (rh != NULL) {
            rh(s->obj.context);
        }
        st = dk__atomic_load_acquire(&s->state);
    }
    if (!(st & SS_CANCELLED) && !is_suspended(st)) {
        uintptr_t data = dk__atomic_xchg_acq_rel(&s->pending, 0);
        if (data != 0) {
            if (s->type == DK_SOURCE_READ || s->type == DK_SOURCE_WRITE) {
                /* Estimated when the handler first asks (fd_estimate): no
                 * syscall stands between the event and the handler. */
                data = DATA_UNKNOWN;
            }
            dk__atomic_store_relaxed(&s->data, data);
            dk_function_t h = dk__atomic_load_acquire(&s->handler);
            if (h != NULL) {
                h(s->obj.context);
            }
        }
    }
    st = dk__atomic_load_acquire(&s->state);
    if ((st & SS_CANCELLED) && !(st & SS_CANCEL_DONE)) {
        dk__atomic_or_acq_rel(&s->state, SS_CANCEL_DONE);
        dk_function_t ch = dk__atomic_load_acquire(&s->cancel_handler);
        if (ch != NULL) {
            ch(s->obj.context);
        }
    }
    dk__event_user_code_done(); /* on an event thread: see event.c */
    st = dk__atomic_and_seq_cst(&s->state, ~SS_SCHEDULED); /* (C) */
    if (dk__atomic_load_seq_cst(&s->pending) != 0 ||       /* (D) */
        (st & SS_REG_DUE)) {
        source_wakeup(s);
    }
    if (s->type == DK_SOURCE_READ || s->type == DK_SOURCE_WRITE) {
        fd_rearm(s);
    }
    dk_release(s); /* the item's reference */
}

static bool
wants_item(uint64_t st, uintptr_t pending)
{
    if (st & SS_SCHEDULED) {
        return false;
    }
    if (st & SS_CANCELLED) {
        return !(st & SS_CANCEL_DONE);
    }
    return !is_suspended(st) && (pending != 0 || (st & SS_REG_DUE));
}

static void
source_wakeup(dk_source_t *s)
{
    uint64_t st = dk__atomic_load_seq_cst(&s->state); /* (B) */
    do {
        if (!wants_item(st, dk__atomic_load_seq_cst(&s->pending))) {
            return;
        }
    } while (!dk__atomic_cas_seq_cst(&s->state, &st, st | SS_SCHEDULED));
    dk_retain(s);
    s->item.fn = source_invoke;
    s->item.ctx = s;
    s->item.flags = DK_ITEM_EMBEDDED;
    s->item.group = NULL;
    dk__event_submit(s->queue, &s->item, false);
}

/* ---- timers --------------------------------------------------------- */

static void
timer_fire(struct dk__timer *t, uint64_t fires)
{
    dk_source_t *s =
        (dk_source_t *)((char *)t - offsetof(struct dk_source_s, timer));
    source_merge_add(s, (uintptr_t)fires);
}

static void
timer_arm(dk_source_t *s)
{
    uint64_t interval = s->t_interval;
    uint64_t leeway = s->t_leeway;
    if (interval != DK_TIME_FOREVER && leeway > interval / 2) {
        leeway = interval / 2;
    }
    (void)dk__timer_set(&s->timer, dk_time_deadline(s->t_start), interval,
                        leeway);
}

int
dk_source_set_timer(dk_source_t *s, dk_time_t start, uint64_t interval_ns,
                    uint64_t leeway_ns)
{
    if (s->type != DK_SOURCE_TIMER || interval_ns == 0) {
        return -EINVAL;
    }
    s->t_start = start == DK_TIME_NOW ? dk_time(DK_TIME_NOW, 0) : start;
    s->t_interval = interval_ns;
    s->t_leeway = leeway_ns;
    s->t_configured = true;
    dk__atomic_store_release(&s->pending, 0);
    uint64_t st = dk__atomic_load_acquire(&s->state);
    if (st & SS_CANCELLED) {
        return 0;
    }
    if (st & SS_REGISTERED) {
        if (start == DK_TIME_FOREVER) {
            dk__timer_disarm(&s->timer);
        } else {
            timer_arm(s);
        }
    }
    return 0;
}

/* ---- file descriptors ----------------------------------------------- */

struct fdnote {
    uint64_t key;
    int fd;
    bool regular; /* cannot be polled: always ready */
    bool in_epoll;
    dk_source_t *sources;
    struct fdnote *next;
};

/* reg_lock guards the notes, their source lists and the key table. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fdnote *notes;

struct reg {
    uint32_t gen;
    uint32_t next_free;  /* index + 1 of the next free slot; 0 ends */
    struct fdnote *note; /* a note, or */
    dk_source_t *proc;   /* a process source (holding a reference) */
};
static struct reg *regs;
static uint32_t nregs, regs_cap, reg_free_head;

/* A key for a new registration, or 0 when out of memory. reg_lock held. */
static uint64_t
reg_alloc(struct fdnote *note, dk_source_t *proc)
{
    uint32_t i;
    if (reg_free_head != 0) {
        i = reg_free_head - 1;
        reg_free_head = regs[i].next_free;
    } else {
        if (nregs == regs_cap) {
            uint32_t cap = regs_cap ? regs_cap * 2 : 16;
            struct reg *r = realloc(regs, cap * sizeof *r);
            if (r == NULL) {
                return 0;
            }
            regs = r;
            regs_cap = cap;
        }
        i = nregs++;
        regs[i].gen = 0;
    }
    regs[i].next_free = 0;
    regs[i].note = note;
    regs[i].proc = proc;
    return (uint64_t)regs[i].gen << 32 | (i + DK_EVENT_KEY_FIRST);
}

/* The slot of a live key, or NULL for a stale one. reg_lock held. */
static struct reg *
reg_lookup(uint64_t key)
{
    uint64_t i = (key & 0xffffffffu) - DK_EVENT_KEY_FIRST;
    if (i >= nregs || regs[i].gen != (uint32_t)(key >> 32) ||
        (regs[i].note == NULL && regs[i].proc == NULL)) {
        return NULL;
    }
    return &regs[i];
}

/* Retire a key: (A) in the block at the top. reg_lock held. */
static void
reg_free(uint64_t key)
{
    struct reg *r = reg_lookup(key);
    if (r == NULL) {
        return;
    }
    uint32_t i = (uint32_t)((key & 0xffffffffu) - DK_EVENT_KEY_FIRST);
    r->gen++;
    r->note = NULL;
    r->proc = NULL;
    r->next_free = reg_free_head;
    reg_free_head = i + 1;
}

static bool
source_armed(dk_source_t *s)
{
    uint64_t st = dk__atomic_load_acquire(&s->state);
    return (st & SS_REGISTERED) && !(st & (SS_SCHEDULED | SS_CANCELLED)) &&
           !is_suspended(st);
}

/* Compute the interest of a note and (re-)arm it. reg_lock held. */
static void
fd_rearm_locked(struct fdnote *n)
{
    uint32_t events = 0;
    for (dk_source_t *s = n->sources; s != NULL; s = s->note_next) {
        if (source_armed(s)) {
            events |= s->type == DK_SOURCE_READ ? EPOLLIN : EPOLLOUT;
        }
    }
    if (n->regular) {
        for (dk_source_t *s = n->sources; s != NULL; s = s->note_next) {
            if (source_armed(s)) {
                source_merge_add(s, 1);
            }
        }
        return;
    }
    if (events == 0) {
        return; /* stays disarmed (one-shot) until a handler finishes */
    }
    events |= EPOLLONESHOT;
    if (n->in_epoll) {
        dk__event_mod(n->fd, events, n->key);
    } else if (dk__event_add(n->fd, events, n->key) == 0) {
        n->in_epoll = true;
    }
}

/* Re-arm the note of s, if it still has one: read s->note under the lock,
 * since a cancel clears it and frees the note. */
static void
fd_rearm(dk_source_t *s)
{
    pthread_mutex_lock(&reg_lock);
    if (s->note != NULL) {
        fd_rearm_locked(s->note);
    }
    pthread_mutex_unlock(&reg_lock);
}

/* reg_lock held. */
static void
fd_on_event(struct fdnote *n, uint32_t events)
{
    bool readable = events & (EPOLLIN | EPOLLHUP | EPOLLERR);
    bool writable = events & (EPOLLOUT | EPOLLHUP | EPOLLERR);
    for (dk_source_t *s = n->sources; s != NULL; s = s->note_next) {
        if (!source_armed(s)) {
            continue;
        }
        if ((s->type == DK_SOURCE_READ && readable) ||
            (s->type == DK_SOURCE_WRITE && writable)) {
            source_merge_add(s, 1);
        }
    }
    /* Sources that were not due keep the fd armed for their event. */
    fd_rearm_locked(n);
}

static int
fd_register(dk_source_t *s)
{
    pthread_mutex_lock(&reg_lock);
    struct fdnote *n = notes;
    while (n != NULL && n->fd != (int)s->handle) {
        n = n->next;
    }
    if (n == NULL) {
        n = calloc(1, sizeof *n);
        if (n == NULL) {
            pthread_mutex_unlock(&reg_lock);
            return -ENOMEM;
        }
        n->fd = (int)s->handle;
        if (dk__os_fd_check(n->fd, &n->regular) < 0) {
            free(n);
            pthread_mutex_unlock(&reg_lock);
            return -EBADF;
        }
        n->key = reg_alloc(n, NULL);
        if (n->key == 0) {
            free(n);
            pthread_mutex_unlock(&reg_lock);
            return -ENOMEM;
        }
        n->next = notes;
        notes = n;
    }
    s->note = n;
    s->note_next = n->sources;
    n->sources = s;
    dk_retain(s); /* the note's reference */
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

static void
fd_unregister(dk_source_t *s)
{
    pthread_mutex_lock(&reg_lock);
    struct fdnote *n = s->note;
    if (n == NULL) {
        pthread_mutex_unlock(&reg_lock);
        return;
    }
    for (dk_source_t **pp = &n->sources; *pp != NULL; pp = &(*pp)->note_next) {
        if (*pp == s) {
            *pp = s->note_next;
            break;
        }
    }
    s->note = NULL;
    if (n->sources == NULL) {
        if (n->in_epoll) {
            dk__event_del(n->fd);
        }
        for (struct fdnote **pp = &notes; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == n) {
                *pp = n->next;
                break;
            }
        }
        /* An event thread may hold an event for it: the key goes stale
         * before the note is freed. */
        reg_free(n->key);
        free(n);
    } else {
        fd_rearm_locked(n);
    }
    pthread_mutex_unlock(&reg_lock);
    dk_release(s);
}

/* ---- signals -------------------------------------------------------- */

#define DK_NSIG 65

static struct {
    uint32_t count; /* raised by the handler, taken by the event thread */
    bool installed;
    dk_source_t *sources;
    _Alignas(16) unsigned char old[DK_OS_SIGACTION_SIZE];
} sigs[DK_NSIG];
static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;

static void
on_signal(int sig, siginfo_t *info, void *uctx)
{
    /* Async-signal-safe: an atomic add, a write(2), the chained handler. */
    if (sig > 0 && sig < DK_NSIG) {
        __atomic_add_fetch(&sigs[sig].count, 1, __ATOMIC_RELEASE);
        int fd = dk__event_signal_fd();
        if (fd >= 0) {
            dk__os_eventfd_signal(fd);
        }
        dk__os_signal_chain(sigs[sig].old, sig, info, uctx);
    }
}

void
dk__source_signals_pending(void)
{
    for (int sig = 1; sig < DK_NSIG; sig++) {
        uint32_t n =
            __atomic_exchange_n(&sigs[sig].count, 0, __ATOMIC_ACQUIRE);
        if (n == 0) {
            continue;
        }
        pthread_mutex_lock(&sig_lock);
        for (dk_source_t *s = sigs[sig].sources; s != NULL; s = s->sig_next) {
            source_merge_add(s, n);
        }
        pthread_mutex_unlock(&sig_lock);
    }
}

static bool
valid_signal(uintptr_t sig)
{
    /* Fault signals are refused: a handler that returns re-runs the
     * faulting instruction, so a crash would become a hang. */
    return sig > 0 && sig < DK_NSIG && sig != SIGKILL && sig != SIGSTOP &&
           sig != SIGSEGV && sig != SIGBUS && sig != SIGFPE && sig != SIGILL;
}

static int
signal_register(dk_source_t *s)
{
    int sig = (int)s->handle;
    int rc = dk__event_ensure();
    if (rc < 0) {
        return rc;
    }
    pthread_mutex_lock(&sig_lock);
    if (!sigs[sig].installed) {
        rc = dk__os_signal_install(sig, on_signal, sigs[sig].old);
        if (rc < 0) {
            pthread_mutex_unlock(&sig_lock);
            return rc;
        }
        sigs[sig].installed = true;
    }
    s->sig_next = sigs[sig].sources;
    sigs[sig].sources = s;
    dk_retain(s);
    pthread_mutex_unlock(&sig_lock);
    return 0;
}

static void
signal_unregister(dk_source_t *s)
{
    int sig = (int)s->handle;
    bool found = false;
    pthread_mutex_lock(&sig_lock);
    for (dk_source_t **pp = &sigs[sig].sources; *pp != NULL;
         pp = &(*pp)->sig_next) {
        if (*pp == s) {
            *pp = s->sig_next;
            found = true;
            break;
        }
    }
    if (found && sigs[sig].sources == NULL && sigs[sig].installed) {
        /* The last source for this signal: give the old action back. */
        dk__os_signal_restore(sig, sigs[sig].old);
        sigs[sig].installed = false;
    }
    pthread_mutex_unlock(&sig_lock);
    if (found) {
        dk_release(s);
    }
}

/* ---- processes ------------------------------------------------------ */

static void
proc_on_event(dk_source_t *s)
{
    /* An exit happens once: the pidfd is one-shot and stays disarmed. */
    if (s->mask & DK_PROC_EXIT) {
        source_merge_or(s, DK_PROC_EXIT);
    }
}

static int
proc_register(dk_source_t *s)
{
    int rc = dk__event_ensure();
    if (rc < 0) {
        return rc;
    }
    pthread_mutex_lock(&reg_lock);
    s->proc_key = reg_alloc(NULL, s);
    pthread_mutex_unlock(&reg_lock);
    if (s->proc_key == 0) {
        return -ENOMEM;
    }
    dk_retain(s); /* the registration's reference */
    rc = dk__event_add(s->pidfd, EPOLLIN | EPOLLONESHOT, s->proc_key);
    if (rc < 0) {
        pthread_mutex_lock(&reg_lock);
        reg_free(s->proc_key);
        pthread_mutex_unlock(&reg_lock);
        dk_release(s);
    }
    return rc;
}

static void
proc_unregister(dk_source_t *s)
{
    pthread_mutex_lock(&reg_lock);
    reg_free(s->proc_key); /* an event thread may hold its key */
    pthread_mutex_unlock(&reg_lock);
    dk__event_del(s->pidfd);
    dk_release(s);
}

void
dk__source_on_event(uint64_t key, uint32_t events)
{
    pthread_mutex_lock(&reg_lock);
    struct reg *r = reg_lookup(key); /* (B) */
    if (r == NULL) {
        pthread_mutex_unlock(&reg_lock);
        return; /* unregistered since the event was harvested */
    }
    if (r->note != NULL) {
        fd_on_event(r->note, events);
        pthread_mutex_unlock(&reg_lock);
        return;
    }
    dk_source_t *s = r->proc;
    dk_retain(s); /* against a concurrent cancel's release */
    pthread_mutex_unlock(&reg_lock);
    proc_on_event(s);
    dk_release(s);
}

/* ---- the object ----------------------------------------------------- */

/* NULL with errno set on failure (dk_source_create returns it). */
static dk_source_t *
source_new(dk_source_type_t type, uintptr_t handle, unsigned long mask,
           dk_queue_t *q)
{
    dk__runtime_ensure();
    int pidfd = -1;
    bool regular = false;
    switch (type) {
    case DK_SOURCE_TIMER:
        break;
    case DK_SOURCE_SIGNAL:
        if (!valid_signal(handle)) {
            errno = EINVAL;
            return NULL;
        }
        break;
    case DK_SOURCE_READ:
    case DK_SOURCE_WRITE: {
        if (handle > INT32_MAX || dk__os_fd_check((int)handle, &regular) < 0) {
            errno = EBADF;
            return NULL;
        }
        break;
    }
    case DK_SOURCE_DATA_ADD:
    case DK_SOURCE_DATA_OR:
    case DK_SOURCE_DATA_REPLACE:
        if (handle != 0 || mask != 0) {
            errno = EINVAL; /* unused: must be 0, as in GCD */
            return NULL;
        }
        break;
    case DK_SOURCE_PROC: {
        unsigned long all =
            DK_PROC_EXIT | DK_PROC_FORK | DK_PROC_EXEC | DK_PROC_SIGNAL;
        if ((mask & ~all) != 0 || handle == 0 || handle > INT32_MAX) {
            errno = handle == 0 || handle > INT32_MAX ? ESRCH : EINVAL;
            return NULL;
        }
        pidfd = dk__os_pidfd_open((int)handle);
        if (pidfd < 0) {
            errno = -pidfd;
            return NULL;
        }
        break;
    }
    default:
        errno = EINVAL;
        return NULL;
    }
    dk_source_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        dk__os_close(pidfd);
        errno = ENOMEM;
        return NULL;
    }
    dk__object_init(&s->obj, DK_KIND_SOURCE);
    s->type = type;
    s->handle = handle;
    s->mask = mask;
    s->queue = q != NULL ? q : dk__default_root();
    dk_retain(s->queue);
    s->state = SS_SUSPEND_ONE;
    s->pidfd = pidfd;
    s->fd_regular = regular;
    dk__timer_init(&s->timer, &s->obj, timer_fire);
    return s;
}

int
dk_source_create(dk_source_type_t type, uintptr_t handle, unsigned long mask,
                 dk_queue_t *q, dk_source_t **out)
{
    *out = source_new(type, handle, mask, q);
    return *out != NULL ? 0 : -errno;
}

/* The source's part of the object model (object.c). Every registration
 * holds a reference, so none is left when these run. The finalizer runs
 * on the target queue. */
static dk_queue_t *
source_finalize(struct dk__object *o)
{
    return ((dk_source_t *)o)->queue;
}

static void
source_dispose(struct dk__object *o)
{
    dk_source_t *s = (dk_source_t *)o;
    dk__os_close(s->pidfd);
    dk_release(s->queue);
    free(s);
}

static int
source_describe(const struct dk__object *o, const char *refcnt, char *buf,
                size_t len)
{
    static const char *const types[] = {
        "?",    "timer",    "signal",  "read",         "write",
        "proc", "data-add", "data-or", "data-replace",
    };
    const dk_source_t *s = (const dk_source_t *)o;
    unsigned t = (unsigned)s->type;
    return snprintf(buf, len,
                    "source[%p] = { refcnt = %s, type = %s, handle = "
                    "%zu, mask = 0x%lx%s }",
                    (const void *)s, refcnt,
                    t < sizeof types / sizeof types[0] ? types[t] : "?",
                    (size_t)s->handle, s->mask,
                    dk_source_testcancel(s) ? ", cancelled" : "");
}

const struct dk__vtable dk__source_vtable = {
    .kind = DK_KIND_SOURCE,
    .name = "source",
    .finalize = source_finalize,
    .dispose = source_dispose,
    .describe = source_describe,
};

void
dk_source_set_context(dk_source_t *s, void *ctx)
{
    dk_object_set_context(s, ctx);
}

void *
dk_source_get_context(const dk_source_t *s)
{
    return dk_object_get_context(s);
}

void
dk_source_set_event_handler_f(dk_source_t *s, dk_function_t handler)
{
    dk__atomic_store_release(&s->handler, handler);
}

void
dk_source_set_cancel_handler_f(dk_source_t *s, dk_function_t handler)
{
    dk__atomic_store_release(&s->cancel_handler, handler);
}

void
dk_source_set_registration_handler_f(dk_source_t *s, dk_function_t handler)
{
    /* Pairs with the acquire load in source_invoke. */
    dk__atomic_store_release(&s->registration_handler, handler);
    if (handler == NULL) {
        dk__atomic_and_acq_rel(&s->state, ~SS_REG_DUE);
        return;
    }
    /* Due now: the first resume delivers it (a suspended source runs no
     * item), or the wake-up below when the source is already running. */
    dk__atomic_or_seq_cst(&s->state, SS_REG_DUE);
    source_wakeup(s);
}

int
dk_source_merge_data(dk_source_t *s, uintptr_t value)
{
    switch (s->type) {
    case DK_SOURCE_DATA_ADD:
    case DK_SOURCE_DATA_OR:
    case DK_SOURCE_DATA_REPLACE:
        break;
    default:
        return -EINVAL;
    }
    if (dk__atomic_load_relaxed(&s->state) & SS_CANCELLED) {
        return 0; /* dropped, as in GCD */
    }
    if (s->type == DK_SOURCE_DATA_REPLACE) {
        source_merge_replace(s, value);
    } else if (value != 0) {
        if (s->type == DK_SOURCE_DATA_ADD) {
            source_merge_add(s, value);
        } else {
            source_merge_or(s, value);
        }
    }
    return 0;
}

static int
source_register(dk_source_t *s)
{
    switch (s->type) {
    case DK_SOURCE_TIMER:
        if (s->t_configured && s->t_start != DK_TIME_FOREVER) {
            timer_arm(s);
        }
        return 0;
    case DK_SOURCE_SIGNAL:
        return signal_register(s);
    case DK_SOURCE_READ:
    case DK_SOURCE_WRITE:
        return fd_register(s);
    case DK_SOURCE_PROC:
        return proc_register(s);
    case DK_SOURCE_DATA_ADD:
    case DK_SOURCE_DATA_OR:
    case DK_SOURCE_DATA_REPLACE:
        return 0; /* merged by the program: nothing to watch */
    }
    return -EINVAL;
}

void
dk_source_suspend(dk_source_t *s)
{
    dk__atomic_add_acq_rel(&s->state, SS_SUSPEND_ONE);
}

int
dk_source_resume(dk_source_t *s)
{
    uint64_t st = dk__atomic_load_relaxed(&s->state);
    do {
        if (!is_suspended(st)) {
            return -EOVERFLOW;
        }
    } while (!dk__atomic_cas_acq_rel(&s->state, &st, st - SS_SUSPEND_ONE));
    st -= SS_SUSPEND_ONE;
    if (is_suspended(st) || (st & SS_CANCELLED)) {
        return 0;
    }
    if (!(st & SS_REGISTERED)) {
        uint64_t prev = dk__atomic_or_acq_rel(&s->state, SS_REGISTERED);
        if (!(prev & SS_REGISTERED)) {
            int rc = source_register(s);
            if (rc < 0) {
                dk__atomic_and_acq_rel(&s->state, ~SS_REGISTERED);
                return rc;
            }
        }
    }
    if (s->type == DK_SOURCE_READ || s->type == DK_SOURCE_WRITE) {
        fd_rearm(s);
    }
    source_wakeup(s); /* deliver what accumulated while suspended */
    return 0;
}

void
dk_source_cancel(dk_source_t *s)
{
    uint64_t prev = dk__atomic_or_acq_rel(&s->state, SS_CANCELLED);
    if (prev & SS_CANCELLED) {
        return;
    }
    dk__timer_kill(&s->timer);
    if (prev & SS_REGISTERED) {
        switch (s->type) {
        case DK_SOURCE_SIGNAL:
            signal_unregister(s);
            break;
        case DK_SOURCE_READ:
        case DK_SOURCE_WRITE:
            fd_unregister(s);
            break;
        case DK_SOURCE_PROC:
            proc_unregister(s);
            break;
        case DK_SOURCE_TIMER:
        case DK_SOURCE_DATA_ADD:
        case DK_SOURCE_DATA_OR:
        case DK_SOURCE_DATA_REPLACE:
            break;
        }
    }
    source_wakeup(s); /* run the cancel handler */
}

bool
dk_source_testcancel(const dk_source_t *s)
{
    return (dk__atomic_load_acquire(&s->state) & SS_CANCELLED) != 0;
}

/* A read or write source's estimate, taken when the handler first asks
 * for it: bytes readable (FIONREAD) or buffer space. */
static uintptr_t
fd_estimate(const dk_source_t *s)
{
    long n;
    if (s->type == DK_SOURCE_READ) {
        n = s->fd_regular ? dk__os_fd_readable((int)s->handle)
                          : dk__os_fd_nread((int)s->handle);
    } else {
        n = dk__os_fd_writable((int)s->handle);
    }
    return n > 0 ? (uintptr_t)n : 0;
}

uintptr_t
dk_source_get_data(const dk_source_t *s)
{
    uintptr_t data = dk__atomic_load_relaxed(&s->data);
    if (data != DATA_UNKNOWN) {
        return data;
    }
    /* Keep the first estimate, so that every call in one handler sees the
     * same value (a relaxed CAS: the value is all that is shared). */
    uintptr_t got = fd_estimate(s);
    uintptr_t *slot = &((dk_source_t *)s)->data;
    return dk__atomic_cas_relaxed(slot, &data, got) ? got : data;
}

uintptr_t
dk_source_get_handle(const dk_source_t *s)
{
    return s->handle;
}

unsigned long
dk_source_get_mask(const dk_source_t *s)
{
    return s->mask;
}

dk_source_type_t
dk_source_get_type(const dk_source_t *s)
{
    return s->type;
}

void
dk__source_fork_child(void)
{
    pthread_mutex_init(&reg_lock, NULL);
    pthread_mutex_init(&sig_lock, NULL);
    notes = NULL; /* the registrations were the parent's */
    free(regs);
    regs = NULL;
    nregs = regs_cap = reg_free_head = 0;
}
