/*
 * ZeroBuffer reader and writer: the ring protocol of zerobuffer-ipc on a
 * shared segment, with the peers' known defects fixed in ways the peers
 * still understand (see include/dk/zerobuffer.h and docs/zerobuffer.md).
 *
 * The protocol between the two processes, and the race each step avoids:
 *
 *   WRITER                                   READER
 *   free = payload_free_bytes (A')           sem_wait(sem-w)          (B)
 *   if free < needed: sem_wait(sem-r)        parse ring[read_pos]
 *   copy header + data to ring[wpos]         ... user reads the data ...
 *   payload_free_bytes -= total (atomic)     payload_free_bytes += total
 *   written_count = n (release); post  (B)     (atomic, release)     (A)
 *                                            sem_post(sem-r)
 *
 * (B): the semaphore post (a release) and the wait or trywait that takes
 * the token (an acquire) order the frame's bytes before the reader's
 * parse; without it the reader could see the token before the
 * header. (A)/(A'): the reader's release-add orders its last read of the
 * frame before the writer's acquire-load that lets it reuse the space;
 * without it the writer could overwrite bytes still being read.
 * payload_free_bytes is the only word both sides modify: a plain "+=" on
 * either side would lose the other's update (the peers' f380ab6 bug), so
 * it is only ever changed with an atomic add or sub.
 *
 * Batches (dk_zb_writer_write_many): the writer copies several frames
 * in, then publishes them at once: one subtraction from the free count,
 * one store of write_pos and written_count, then one post per frame. A
 * frame not yet published is invisible to every reader (no token), and
 * the writer never waits with frames held, because the reader cannot
 * free space for frames it cannot see:
 *
 *   CPU0 (writer, batch of 3)                CPU1 (reader)
 *   copy frames 1, 2 (held, no post)
 *   frame 3: free < needed                   sem_wait(sem-w): asleep
 *     publish: free -= held bytes; posts x2
 *                                            wakes, reads 1 and 2,
 *     sem_wait(sem-r)                          free += ..., post sem-r
 *   wakes, copies frame 3; publish: post
 *
 * Without the publish before the wait, CPU0 would sleep on sem-r while
 * CPU1 sleeps on sem-w, each waiting for the other until the timeouts.
 * While frames are held, the OIEB's free count is higher than the truth
 * by what they use; only this writer subtracts from it, and it counts
 * the held bytes itself (free_known), so nothing else is misled.
 *
 * Space accounting: the writer may reuse [write_pos, write_pos + n) only
 * if the free count covers it, which is right only while the occupied
 * space is one arc ending at write_pos. So the reader credits space in
 * ring order (a queue of pending releases), also for wrap tails, even
 * when frames are released out of order. Every position and size read
 * from the segment is checked against our own copy of P before use.
 */
#include "dk/zerobuffer.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic.h"
#include "os/linux/os.h"
#include "watch.h"
#include "zerobuffer_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* The low half of the OIEB's writer_pid (little-endian): the futex word a
 * reader waiting for a writer sleeps on. */
#define writer_pid_word(oieb) ((uint32_t *)(void *)&(oieb)->writer_pid)

/* Liveness of the peer is checked at least this often while waiting. */
#define SLICE_NS 100000000ull
#define RELEASED (1ull << 63)

/*
 * Before sleeping in the kernel, a reader waiting for a frame (or a
 * writer waiting for space) watches for it for a while: when the peer
 * runs on another CPU and answers within microseconds (a duplex round
 * trip, a stream the reader keeps up with), this saves the sleep, and
 * the peer's futex wake (a system call: our semaphore posts and glibc's
 * make none while nobody sleeps). The watch is bounded in time, and its
 * budget adapts per reader and writer, as the dispatch semaphore's and
 * the shared mutex's do (src/sem.c, src/mutex.c): it halves on every
 * watch that ends in a sleep, drops to 0 below SPIN_MIN_NS, comes back in
 * full on a watch that sees the event, and is tried in full every
 * SPIN_PROBE_EVERY-th wait anyway. An idle peer thus costs a few
 * watches, then none: no CPU while nothing happens. The budget is a
 * hint, read and written with relaxed atomics.
 *
 * A wait that slept and still ended within SPIN_LONG_NS of its start
 * (a stream of large frames: a 1 MiB frame takes the writer some 35 us
 * to copy in) sets the next watch to that wait and half again, up to
 * SPIN_LONG_NS, and a watch that sees its event keeps such a budget. A
 * reader following such a stream thus watches instead of sleeping, and
 * its writer no longer makes a futex wake per frame (measured on a
 * 2-CPU VM: the wake cost a 1 MiB stream's writer some 10 us of CPU per
 * frame, a third of its copy). Streams with frames further apart sleep
 * as before, and a watch that ends in a sleep halves the budget. The
 * price: a reader of a stream with frames under 100 us apart keeps its
 * CPU busy, as a polling reader (iceoryx2's) does.
 */
#define SPIN_MAX_NS 20000u
#define SPIN_LONG_NS 100000u
#define SPIN_MIN_NS 1000u
#define SPIN_PROBE_EVERY 64u

struct spin_memo {
    uint32_t budget_ns;
    uint32_t waits;
    uint64_t since; /* when the wait under way began; 0: none */
};

uint32_t
dk__zb_spin_after_watch(uint32_t budget_ns, bool paid)
{
    if (!paid) {
        return budget_ns / 2;
    }
    return budget_ns > SPIN_MAX_NS ? budget_ns : SPIN_MAX_NS;
}

uint32_t
dk__zb_spin_after_sleep(uint32_t budget_ns, uint64_t waited_ns)
{
    if (waited_ns > SPIN_LONG_NS) {
        return budget_ns;
    }
    uint64_t b = waited_ns + waited_ns / 2;
    if (b < SPIN_MAX_NS) {
        b = SPIN_MAX_NS;
    }
    return b > SPIN_LONG_NS ? SPIN_LONG_NS : (uint32_t)b;
}

/* The watch to make now: 0 for none. A wait begins here: its start is
 * noted for spin_learn(). */
static uint32_t
spin_budget(struct spin_memo *m)
{
    dk__atomic_store_relaxed(&m->since, dk__os_monotonic_ns());
    uint32_t b = dk__atomic_load_relaxed(&m->budget_ns);
    if (b >= SPIN_MIN_NS) {
        return b;
    }
    uint32_t n = dk__atomic_load_relaxed(&m->waits) + 1;
    dk__atomic_store_relaxed(&m->waits, n);
    return n % SPIN_PROBE_EVERY == 0 ? SPIN_MAX_NS : 0;
}

static void
spin_paid(struct spin_memo *m, bool paid, uint32_t budget)
{
    dk__atomic_store_relaxed(&m->budget_ns,
                             dk__zb_spin_after_watch(budget, paid));
    if (paid) {
        dk__atomic_store_relaxed(&m->since, 0);
    }
}

/* A wait ended with its event: if it began with a watch that did not
 * see it (it slept, or was given up by a caller that sleeps next), learn
 * from how long it took. */
static void
spin_learn(struct spin_memo *m)
{
    uint64_t since = dk__atomic_load_relaxed(&m->since);
    if (since == 0) {
        return;
    }
    dk__atomic_store_relaxed(&m->since, 0);
    uint64_t now = dk__os_monotonic_ns();
    uint32_t b = dk__atomic_load_relaxed(&m->budget_ns);
    dk__atomic_store_relaxed(&m->budget_ns,
                             dk__zb_spin_after_sleep(b, now - since));
}

/*
 * A watch under way (watch_begin, then watch_more after every look that
 * found nothing). Watching only helps while the peer runs; a peer that
 * shares our CPU cannot run while we watch, and sleeping instead costs
 * both sides a system call per frame: our sleep registers us as a waiter
 * in the semaphore, and glibc's sem_post then makes a futex wake on
 * every post until we have run again, which on a shared CPU can be
 * hundreds of frames later. So the watch hands the CPU over with one
 * sched_yield(): at once when the process may run on one CPU only, else
 * after SPIN_YIELD_NS of fruitless watching (where a peer on another CPU
 * would have answered: a 1 KiB frame takes it well under 1 us). The
 * peer, if runnable, then runs until it waits itself (its ring full or
 * empty) and yields back, so the two sides take turns a ring-full at a
 * time, with no futex wake at all:
 *
 *   CPU0 (reader)                      (same CPU0, writer)
 *   sem-w empty: watch, sched_yield -> runs: copies frames, posts sem-w
 *                                      (no waiter: no futex wake) until
 *                                      the ring is full; its watch:
 *   <- sched_yield                     sched_yield
 *   takes frame after frame, posts
 *   sem-r (no waiter: no wake) until
 *   sem-w is empty: watch, yield ...
 *
 * On its own CPU, sched_yield returns at once (about 1 us of system
 * call). The yield is only a hint: the watch still ends at its budget,
 * and a peer that neither posts nor runs leaves us to sleep as before.
 * The watch only looks, so no post can be lost around the yield: the
 * sleep after a fruitless watch is sem_wait's, which takes a token
 * posted at any point before it:
 *
 *   CPU0 (reader, its watch)           CPU1 (writer)
 *   trywait sem-w: empty
 *   sched_yield                        copies a frame; post sem-w
 *   trywait sem-w: empty (not yet      (count 1, no waiter: no wake)
 *     seen), watch over
 *   sem_wait(sem-w): count 1, taken
 *
 * An idle peer costs one yield per wait while the budget halves, then
 * none (every SPIN_PROBE_EVERY-th wait tries again), as for spinning.
 */
#define SPIN_YIELD_NS 4000u

struct watch {
    struct spin_memo *memo;
    uint32_t budget;
    bool one_cpu;
    bool yielded;
    uint64_t until;
    uint64_t yield_at;
};

/* false: no watch now (the budget is spent); else *w is under way. */
static bool
watch_begin(struct watch *w, struct spin_memo *m, uint64_t deadline)
{
    uint32_t budget = spin_budget(m);
    if (budget == 0) {
        return false;
    }
    uint64_t since = dk__atomic_load_relaxed(&m->since);
    w->memo = m;
    w->budget = budget;
    w->one_cpu = dk__os_ncpu_cached() <= 1;
    w->yielded = false;
    w->until = since + budget < deadline ? since + budget : deadline;
    w->yield_at = since + SPIN_YIELD_NS;
    return true;
}

/* The event was seen (paid) or the watch is given up. */
static void
watch_end(struct watch *w, bool paid)
{
    spin_paid(w->memo, paid, w->budget);
}

/* After look number i found nothing: true to look again, false when the
 * watch is over (it has been ended as not paid). */
static bool
watch_more(struct watch *w, unsigned i)
{
    if (w->one_cpu) {
        /* Looking again without the peer having run is pointless. */
        if (w->yielded) {
            watch_end(w, false);
            return false;
        }
        w->yielded = true;
        dk__os_yield();
        return true;
    }
    dk_cpu_relax();
    if (i % 64 != 0) {
        return true;
    }
    uint64_t now = dk__os_monotonic_ns();
    if (now >= w->until) {
        watch_end(w, false);
        return false;
    }
    if (!w->yielded && now >= w->yield_at) {
        w->yielded = true;
        dk__os_yield();
    }
    return true;
}

struct dk_zb_reader_s {
    pthread_mutex_t lock; /* parse, release and close */
    char name[DK_ZB_NAME_MAX + 1];
    char sem_w_name[DK_ZB_NAME_MAX + 8];
    char sem_r_name[DK_ZB_NAME_MAX + 8];
    uint8_t *base;
    size_t map_len;
    int shm_fd;
    int lock_fd;
    sem_t *sem_w;
    sem_t *sem_r;
    dk_zb_oieb_t *oieb;
    uint8_t *meta;
    uint8_t *ring;
    const uint32_t *faulted; /* the truncation guard's flag, see shm.h */
    uint64_t msize;          /* M and P as we created them: never re-read */
    uint64_t psize;
    /* Owned by the reader; the OIEB copies are for the peers only. */
    uint64_t read_pos;
    uint64_t read_count;
    uint64_t expected;
    /* Pending credits in ring order: entry = bytes | RELEASED. */
    uint64_t *pend;
    uint64_t pend_cap;  /* power of two */
    uint64_t pend_head; /* ticket of the oldest pending entry */
    uint64_t pend_tail; /* ticket of the next entry */
    uint64_t frames;
    uint64_t bytes;
    bool closed;
    bool writer_seen;
    uint64_t last_writer_pid; /* writer_pid when the last frame was read */
    bool writer_left;         /* writer_pid seen 0 since then */
    struct spin_memo spin;    /* watching sem-w before sleeping */
    dk_zb_error_t err;
};

struct dk_zb_writer_s {
    char name[DK_ZB_NAME_MAX + 1];
    uint8_t *base;
    size_t map_len;
    int shm_fd;
    sem_t *sem_w;
    sem_t *sem_r;
    dk_zb_oieb_t *oieb;
    uint8_t *meta;
    uint8_t *ring;
    const uint32_t *faulted; /* the truncation guard's flag, see shm.h */
    uint64_t msize;
    uint64_t psize;
    uint64_t wpos; /* ring offset of the next header, < P */
    uint64_t written_count;
    uint64_t seq;
    uint64_t pid;
    bool pending;
    uint64_t pending_size;
    uint64_t frames;
    uint64_t bytes;
    bool metadata_written;
    bool closed;
    /* A lower bound of payload_free_bytes: only we subtract from it, so
     * the last value we saw, less what we used since, is still free. It
     * spares a load of the OIEB line the reader keeps writing while
     * there is room. Every value in it came from an acquire load or an
     * acq_rel RMW of the counter ((A'), see above). */
    uint64_t free_known;
    /* Frames committed by a batch but not published yet: the bytes they
     * (and any wrap) use are not yet subtracted from payload_free_bytes,
     * write_pos and written_count are not stored, sem-w not posted. */
    uint64_t held_frames;
    uint64_t held_bytes;
    struct spin_memo spin; /* watching the free count before sleeping */
    dk_zb_error_t err;
};

uint64_t
dk_zb_align(uint64_t x)
{
    return (x + (DK_ZB_ALIGN - 1)) & ~(uint64_t)(DK_ZB_ALIGN - 1);
}

int
dk_zb_name_check(const char *name)
{
    if (name == NULL) {
        return -EINVAL;
    }
    return dk__os_name_check(name, strlen(name), DK_ZB_NAME_MAX,
                             DK__OS_NAME_PRINTABLE, NULL);
}

static void set_error(dk_zb_error_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
set_error(dk_zb_error_t *err, const char *fmt, ...)
{
    if (err == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

static uint64_t
load64(const uint64_t *p)
{
    return dk__atomic_load_relaxed(p);
}

/* ---- the parser shared by the reader and dk_zb_segment_check --------- */

struct next_frame {
    uint64_t pos;      /* ring offset of the frame's header */
    uint64_t size;     /* payload bytes */
    uint64_t sequence; /* from the header */
    uint64_t skipped;  /* wrap tail bytes to credit before the frame */
    uint64_t markers;  /* 1 if a {0,0} marker was consumed */
    uint64_t new_pos;  /* read position after the frame, < P */
};

/*
 * Parse the frame at read_pos in a ring of P bytes, P >= 32 and
 * read_pos < P (both ours, never from the segment). A tail shorter than a
 * header is an implicit wrap (C++ and Python writers leave such tails and
 * cannot mark them). Header fields are copied once, then checked: a
 * writer changing them under us cannot make us read out of bounds.
 */
static int
parse_next(const uint8_t *ring, uint64_t psize, uint64_t read_pos,
           uint64_t expected, struct next_frame *out, dk_zb_error_t *err)
{
    uint64_t pos = read_pos, skipped = 0, markers = 0;
    uint64_t hdr[2];
    if (psize - pos < DK_ZB_HEADER_SIZE) {
        skipped = psize - pos;
        pos = 0;
    }
    memcpy(hdr, ring + pos, sizeof hdr);
    if (hdr[0] == 0) {
        if (hdr[1] != 0) {
            set_error(err,
                      "invalid frame size 0 at ring offset %llu (sequence "
                      "%llu)",
                      (unsigned long long)pos, (unsigned long long)hdr[1]);
            return -EPROTO;
        }
        if (pos == 0) {
            set_error(err, "wrap marker at the start of the ring");
            return -EPROTO;
        }
        skipped += psize - pos;
        markers = 1;
        pos = 0;
        memcpy(hdr, ring, sizeof hdr);
        if (hdr[0] == 0) {
            set_error(err, "invalid frame size 0 after a wrap marker");
            return -EPROTO;
        }
    }
    if (hdr[1] != expected) {
        if (err != NULL) {
            err->expected = expected;
            err->got = hdr[1];
        }
        set_error(err, "Sequence error: expected %llu, got %llu",
                  (unsigned long long)expected, (unsigned long long)hdr[1]);
        return -EILSEQ;
    }
    if (hdr[0] > psize - pos - DK_ZB_HEADER_SIZE) {
        set_error(err,
                  "frame of %llu bytes at ring offset %llu extends past "
                  "the ring (%llu bytes)",
                  (unsigned long long)hdr[0], (unsigned long long)pos,
                  (unsigned long long)psize);
        return -EPROTO;
    }
    out->pos = pos;
    out->size = hdr[0];
    out->sequence = hdr[1];
    out->skipped = skipped;
    out->markers = markers;
    out->new_pos = pos + DK_ZB_HEADER_SIZE + hdr[0];
    if (out->new_pos == psize) {
        out->new_pos = 0;
    }
    return 0;
}

/* The OIEB fields a reader depends on, against what it created. */
static int
check_oieb(const dk_zb_oieb_t *o, uint64_t msize, uint64_t psize,
           dk_zb_error_t *err)
{
    uint32_t osize = dk__atomic_load_relaxed(&o->oieb_size);
    uint8_t major = dk__atomic_load_relaxed(&o->version_major);
    if (osize != DK_ZB_OIEB_SIZE) {
        set_error(err, "corrupted OIEB: oieb_size is %u, not 128",
                  (unsigned)osize);
        return -EPROTO;
    }
    if (major != 1) {
        set_error(err, "corrupted OIEB: protocol version %u, not 1",
                  (unsigned)major);
        return -EPROTO;
    }
    if (load64(&o->metadata_size) != msize ||
        load64(&o->payload_size) != psize) {
        set_error(err, "corrupted OIEB: metadata/payload sizes changed");
        return -EPROTO;
    }
    if (load64(&o->payload_write_pos) > psize) {
        set_error(err, "corrupted OIEB: payload_write_pos %llu > %llu",
                  (unsigned long long)load64(&o->payload_write_pos),
                  (unsigned long long)psize);
        return -EPROTO;
    }
    if (load64(&o->payload_free_bytes) > psize) {
        set_error(err, "corrupted OIEB: payload_free_bytes %llu > %llu",
                  (unsigned long long)load64(&o->payload_free_bytes),
                  (unsigned long long)psize);
        return -EPROTO;
    }
    return 0;
}

int64_t
dk_zb_segment_check(const void *seg, size_t len, uint64_t max_frames,
                    dk_zb_error_t *err)
{
    if (seg == NULL || len < DK_ZB_OIEB_SIZE) {
        set_error(err, "segment smaller than the OIEB");
        return -EPROTO;
    }
    dk_zb_oieb_t o;
    memcpy(&o, seg, sizeof o);
    uint64_t msize = o.metadata_size, psize = o.payload_size;
    if (msize > len || psize > len || DK_ZB_OIEB_SIZE + msize + psize > len) {
        set_error(err, "OIEB sizes exceed the segment");
        return -EPROTO;
    }
    if (psize < 2ull * DK_ZB_HEADER_SIZE) {
        set_error(err, "payload ring too small");
        return -EPROTO;
    }
    int rc = check_oieb(&o, msize, psize, err);
    if (rc < 0) {
        return rc;
    }
    if (o.metadata_written_bytes != 0) {
        uint64_t n;
        if (o.metadata_written_bytes < 8 || o.metadata_written_bytes > msize) {
            set_error(err, "invalid metadata_written_bytes");
            return -EPROTO;
        }
        memcpy(&n, (const uint8_t *)seg + DK_ZB_OIEB_SIZE, 8);
        if (n > o.metadata_written_bytes - 8) {
            set_error(err, "invalid metadata length");
            return -EPROTO;
        }
    }
    if (o.payload_read_pos >= psize) {
        set_error(err, "payload_read_pos out of range");
        return -EPROTO;
    }
    const uint8_t *ring = (const uint8_t *)seg + DK_ZB_OIEB_SIZE + msize;
    uint64_t pos = o.payload_read_pos, want = o.payload_write_pos % psize;
    uint64_t n = 0, expected = 0;
    while (n < max_frames && pos != want) {
        struct next_frame f;
        if (n == 0) {
            /* Take the first frame's own number as the start. */
            uint64_t h[2];
            uint64_t p = psize - pos < DK_ZB_HEADER_SIZE ? 0 : pos;
            memcpy(h, ring + p, sizeof h);
            if (h[0] == 0 && p != 0) {
                memcpy(h, ring, sizeof h);
            }
            expected = h[1];
        }
        rc = parse_next(ring, psize, pos, expected, &f, err);
        if (rc < 0) {
            return rc;
        }
        pos = f.new_pos;
        expected++;
        n++;
    }
    return (int64_t)n;
}

/* Whether the segment's file was shrunk under our mapping: the guard
 * replaced the lost pages with zeros, so nothing read or written there
 * since means anything. Sets the error message. */
static bool
truncated(const uint32_t *faulted, dk_zb_error_t *err)
{
    if (faulted == NULL || dk__atomic_load_relaxed(faulted) == 0) {
        return false;
    }
    set_error(err, "the shared memory segment was truncated by another "
                   "process: the buffer is broken");
    return true;
}

/* ---- reader ------------------------------------------------------------ */

static void
reader_unmap(dk_zb_reader_t *r)
{
    dk__shm_close(r->base, r->map_len, r->shm_fd);
    r->base = NULL;
    r->shm_fd = -1;
}

/*
 * We hold NAME's lock, so the reader that made a segment still called
 * NAME is gone (or never used the lock). Mark that segment reader-less, so
 * its writer fails its next write with "reader dead" instead of writing
 * into an orphan forever, wake the writer if it waits for space, and
 * unlink it. A live reader recorded in it (one that takes no lock, such
 * as the C# peer's) keeps it: -EEXIST.
 */
static int
replace_stale(const dk_zb_reader_t *r)
{
    void *base;
    size_t len;
    int fd;
    int rc = dk__shm_open(r->name, DK_ZB_OIEB_SIZE, &base, &len, &fd);
    if (rc == -ENOENT) {
        return 0;
    }
    if (rc == 0) {
        dk_zb_oieb_t *o = base;
        uint64_t pid = load64(&o->reader_pid);
        if (pid != 0 && pid != dk__pid_self() && dk__os_pid_alive(pid)) {
            dk__shm_close(base, len, fd);
            return -EEXIST;
        }
        dk__atomic_store_release(&o->reader_pid, 0);
        dk__shm_close(base, len, fd);
        sem_t *old;
        if (dk__nsem_open(r->sem_r_name, &old) == 0) {
            dk__nsem_post(old);
            dk__nsem_close(old);
        }
    }
    /* Also when the object could not be opened (-EINVAL: too small to
     * be a buffer, -EACCES): the name is ours now. */
    rc = dk__shm_unlink(r->name);
    return rc == -ENOENT ? 0 : rc;
}

int
dk_zb_reader_create(const char *name, uint64_t metadata_size,
                    uint64_t payload_size, unsigned mode, dk_zb_reader_t **out)
{
    int rc = dk_zb_name_check(name);
    if (rc < 0) {
        return rc;
    }
    if (payload_size == 0 || payload_size > DK_ZB_SIZE_MAX ||
        metadata_size > DK_ZB_SIZE_MAX) {
        return -EINVAL;
    }
    uint64_t msize = dk_zb_align(metadata_size);
    uint64_t psize = dk_zb_align(payload_size);
    dk_zb_reader_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return -ENOMEM;
    }
    pthread_mutex_init(&r->lock, NULL);
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->sem_w_name, sizeof r->sem_w_name, "sem-w-%s", name);
    snprintf(r->sem_r_name, sizeof r->sem_r_name, "sem-r-%s", name);
    r->shm_fd = -1;
    r->lock_fd = -1;
    r->msize = msize;
    r->psize = psize;
    r->expected = 1;
    r->spin.budget_ns = SPIN_MAX_NS;
    r->pend_cap = 64;
    r->pend = calloc(r->pend_cap, sizeof *r->pend);
    if (r->pend == NULL) {
        free(r);
        return -ENOMEM;
    }
    rc = dk__lock_acquire(name, mode, &r->lock_fd);
    if (rc < 0) {
        rc = rc == -EWOULDBLOCK ? -EEXIST : rc;
        goto fail_lock;
    }
    rc = replace_stale(r);
    if (rc < 0) {
        goto fail;
    }
    /* Semaphores before the segment: a writer that sees reader_pid must
     * find them. */
    rc = dk__nsem_create(r->sem_w_name, mode, &r->sem_w);
    if (rc < 0) {
        goto fail;
    }
    rc = dk__nsem_create(r->sem_r_name, mode, &r->sem_r);
    if (rc < 0) {
        goto fail_sem;
    }
    r->map_len = (size_t)(DK_ZB_OIEB_SIZE + msize + psize);
    void *base;
    rc = dk__shm_create(name, r->map_len, mode, &base, &r->shm_fd);
    if (rc < 0) {
        goto fail_sem;
    }
    r->base = base;
    r->faulted = dk__shm_fault_flag(base);
    r->oieb = base;
    r->meta = r->base + DK_ZB_OIEB_SIZE;
    r->ring = r->meta + msize;
    /* A new object reads as zeros: only the non-zero fields are set.
     * reader_pid goes last with a release store, pairing with the
     * writer's acquire load at connect. */
    dk_zb_oieb_t *o = r->oieb;
    o->oieb_size = DK_ZB_OIEB_SIZE;
    o->version_major = 1;
    o->metadata_size = msize;
    o->metadata_free_bytes = msize;
    o->payload_size = psize;
    o->payload_free_bytes = psize;
    dk__atomic_store_release(&o->reader_pid, dk__pid_self());
    *out = r;
    return 0;

fail_sem:
    dk__nsem_close(r->sem_w);
    dk__nsem_close(r->sem_r);
    dk__nsem_unlink(r->sem_w_name);
    if (r->sem_r != NULL) {
        dk__nsem_unlink(r->sem_r_name);
    }
fail:
    dk__lock_release(name, r->lock_fd);
fail_lock:
    free(r->pend);
    pthread_mutex_destroy(&r->lock);
    free(r);
    return rc;
}

static bool
writer_gone(dk_zb_reader_t *r)
{
    uint64_t pid = dk__atomic_load_acquire(&r->oieb->writer_pid);
    if (pid != 0) {
        dk__atomic_store_relaxed(&r->writer_seen, true);
        return !dk__os_pid_alive(pid);
    }
    if (load64(&r->oieb->payload_written_count) != 0) {
        dk__atomic_store_relaxed(&r->writer_seen, true);
    }
    if (!dk__atomic_load_relaxed(&r->writer_seen)) {
        return false; /* no writer yet: keep waiting */
    }
    dk__atomic_store_relaxed(&r->writer_left, true);
    /* A writer left gracefully. Everything it wrote has been read when
     * the counts agree, or (the Python writer counts wraps it did not
     * mark, so its count runs ahead) when the positions agree. */
    uint64_t written = load64(&r->oieb->payload_written_count);
    uint64_t wpos = load64(&r->oieb->payload_write_pos);
    return written <= r->read_count || wpos % r->psize == r->read_pos;
}

static int
pend_push(dk_zb_reader_t *r, uint64_t entry)
{
    if (r->pend_tail - r->pend_head == r->pend_cap) {
        uint64_t cap = r->pend_cap * 2;
        uint64_t *n = malloc(cap * sizeof *n);
        if (n == NULL) {
            return -ENOMEM;
        }
        for (uint64_t t = r->pend_head; t != r->pend_tail; t++) {
            n[t & (cap - 1)] = r->pend[t & (r->pend_cap - 1)];
        }
        free(r->pend);
        r->pend = n;
        r->pend_cap = cap;
    }
    r->pend[r->pend_tail & (r->pend_cap - 1)] = entry;
    r->pend_tail++;
    return 0;
}

/* Credit every released entry at the head of the queue. Lock held. */
static void
pend_drain(dk_zb_reader_t *r)
{
    uint64_t credit = 0, posts = 0;
    while (r->pend_head != r->pend_tail) {
        uint64_t e = r->pend[r->pend_head & (r->pend_cap - 1)];
        if (!(e & RELEASED)) {
            break;
        }
        credit += e & ~RELEASED;
        posts++;
        r->pend_head++;
    }
    if (credit == 0) {
        return;
    }
    /* (A): our reads of these frames happen before the writer's acquire
     * load of the free count lets it overwrite them. */
    dk__atomic_add_release(&r->oieb->payload_free_bytes, credit);
    while (posts-- > 0) {
        dk__nsem_post(r->sem_r);
    }
}

/* Parse and consume one frame after taking a sem-w token. Lock held. */
static int
reader_take(dk_zb_reader_t *r, dk_zb_frame_t *frame)
{
    if (truncated(r->faulted, &r->err)) {
        return -EPROTO;
    }
    int rc = check_oieb(r->oieb, r->msize, r->psize, &r->err);
    if (rc < 0) {
        return rc;
    }
    struct next_frame f;
    rc = parse_next(r->ring, r->psize, r->read_pos, r->expected, &f, &r->err);
    /* writer_pid is read only for a frame numbered 1 out of turn, and to
     * record the first writer: its cache line is the one the writer
     * updates with every frame, and a load of it would wait for it. */
    uint64_t wpid = r->last_writer_pid;
    if (rc == -EILSEQ && r->err.got == 1) {
        wpid = dk__atomic_load_acquire(&r->oieb->writer_pid);
        if (wpid != r->last_writer_pid ||
            dk__atomic_load_relaxed(&r->writer_left)) {
            /* Every writer numbers its frames from 1: a new writer after
             * the previous one left starts the count again. */
            rc = parse_next(r->ring, r->psize, r->read_pos, 1, &f, &r->err);
            if (rc == 0) {
                r->expected = 1;
            }
        }
    } else if (rc == 0 && wpid == 0) {
        wpid = dk__atomic_load_acquire(&r->oieb->writer_pid);
    }
    if (rc == 0) {
        /* Read the frame's last byte now, so that a truncation that cut
         * into it is found before the frame is handed out rather than
         * read as zeros by the caller. A truncation cuts from the end:
         * if the last byte is there, so is every page before it. (Not
         * every page is read: each line the reader loads is one the
         * writer must take back before it copies there again, and for
         * a 1 MiB frame that cost the writer more than its copy.) */
        const volatile uint8_t *d = r->ring + f.pos;
        (void)d[DK_ZB_HEADER_SIZE + f.size - 1];
        if (truncated(r->faulted, &r->err)) {
            rc = -EPROTO; /* what we parsed may be the guard's zeros */
        }
    }
    if (rc < 0) {
        return rc;
    }
    r->last_writer_pid = wpid;
    dk__atomic_store_relaxed(&r->writer_left, false);
    if (f.skipped != 0) {
        rc = pend_push(r, f.skipped | RELEASED);
        if (rc < 0) {
            return rc;
        }
    }
    uint64_t ticket = r->pend_tail;
    rc = pend_push(r, DK_ZB_HEADER_SIZE + f.size);
    if (rc < 0) {
        if (f.skipped != 0) {
            r->pend_tail--;
        }
        return rc;
    }
    r->read_pos = f.new_pos;
    r->read_count += f.markers + 1;
    r->expected++;
    r->frames++;
    r->bytes += f.size;
    dk__atomic_store_relaxed(&r->oieb->payload_read_pos, r->read_pos);
    dk__atomic_store_relaxed(&r->oieb->payload_read_count, r->read_count);
    frame->data = r->ring + f.pos + DK_ZB_HEADER_SIZE;
    frame->size = f.size;
    frame->sequence = f.sequence;
    frame->ticket = ticket;
    /* The wrap tail is credited now if no older frame is held. */
    pend_drain(r);
    return 0;
}

/* After taking a sem-w token: parse and consume one frame. */
static int
reader_consume(dk_zb_reader_t *r, dk_zb_frame_t *frame)
{
    int rc;
    /* (B): the token we took (an acquire CAS in sem_trywait/sem_wait)
     * pairs with the writer's sem_post (a release), which follows its
     * stores of the frame: they are visible now, as the peers rely on. */
    dk__atomic_store_relaxed(&r->writer_seen, true);
    pthread_mutex_lock(&r->lock);
    if (r->closed) {
        rc = -EBADF;
    } else {
        rc = reader_take(r, frame);
        if (rc < 0) {
            /* Nothing consumed: put the token back, so the error is
             * reported again rather than the stream silently skipping. */
            dk__nsem_post(r->sem_w);
        }
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Watch sem-w for a token until the watch budget or the deadline runs
 * out; 0 with the token taken, or -EAGAIN. */
static int
reader_spin_take(dk_zb_reader_t *r, uint64_t deadline)
{
    struct watch w;
    if (!watch_begin(&w, &r->spin, deadline)) {
        return -EAGAIN;
    }
    for (unsigned i = 1;; i++) {
        /* sem_trywait loads the count first: no write while it is 0. */
        if (dk__nsem_trywait(r->sem_w) == 0) {
            watch_end(&w, true);
            return 0;
        }
        if (!watch_more(&w, i)) {
            return -EAGAIN;
        }
    }
}

int
dk__zb_reader_read_ex(dk_zb_reader_t *r, uint64_t deadline, unsigned how,
                      dk_zb_frame_t *frame)
{
    if (dk__atomic_load_relaxed(&r->closed)) {
        return -EBADF;
    }
    if (truncated(r->faulted, &r->err)) {
        return -EPROTO;
    }
    int rc = dk__nsem_trywait(r->sem_w);
    if (rc < 0 && deadline != 0 && (how & DK__ZB_SPIN)) {
        rc = reader_spin_take(r, deadline);
    }
    if (rc < 0 && !(how & DK__ZB_SLEEP)) {
        return -EAGAIN;
    }
    if (rc < 0 && deadline != 0) {
        while (rc < 0) {
            uint64_t now = dk__os_monotonic_ns();
            if (now >= deadline) {
                break;
            }
            uint64_t slice =
                deadline - now > SLICE_NS ? now + SLICE_NS : deadline;
            rc = dk__nsem_wait(r->sem_w, slice);
            if (dk__atomic_load_relaxed(&r->closed)) {
                return -EBADF;
            }
            if (rc == -EINTR) {
                return -EINTR;
            }
            if (rc < 0 && truncated(r->faulted, &r->err)) {
                return -EPROTO;
            }
            if (rc < 0 && writer_gone(r)) {
                /* A token may have arrived just before the writer died. */
                if (dk__nsem_trywait(r->sem_w) == 0) {
                    rc = 0;
                    break;
                }
                return -EPIPE;
            }
        }
    }
    if (rc < 0 && dk__nsem_trywait(r->sem_w) < 0) {
        if (truncated(r->faulted, &r->err)) {
            return -EPROTO;
        }
        return writer_gone(r) ? -EPIPE : -ETIMEDOUT;
    }
    spin_learn(&r->spin);
    return reader_consume(r, frame);
}

int
dk_zb_reader_read(dk_zb_reader_t *r, uint64_t deadline, dk_zb_frame_t *frame)
{
    return dk__zb_reader_read_ex(r, deadline, DK__ZB_SPIN | DK__ZB_SLEEP,
                                 frame);
}

int
dk_zb_reader_try_read(dk_zb_reader_t *r, dk_zb_frame_t *frame)
{
    return dk__zb_reader_read_ex(r, 0, 0, frame);
}

int
dk_zb_reader_release(dk_zb_reader_t *r, const dk_zb_frame_t *frame)
{
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    uint64_t t = frame->ticket;
    if (r->closed) {
        rc = 0;
    } else if (t >= r->pend_tail) {
        rc = -EINVAL;
    } else if (t < r->pend_head ||
               (r->pend[t & (r->pend_cap - 1)] & RELEASED)) {
        rc = -EALREADY;
    } else {
        r->pend[t & (r->pend_cap - 1)] |= RELEASED;
        pend_drain(r);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int
dk_zb_reader_release_many(dk_zb_reader_t *r, const dk_zb_frame_t *frames,
                          size_t n)
{
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    if (r->closed) {
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (frames[i].ticket >= r->pend_tail) {
            rc = -EINVAL; /* checked first: nothing is released */
        }
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint64_t t = frames[i].ticket;
        if (t >= r->pend_head) {
            r->pend[t & (r->pend_cap - 1)] |= RELEASED;
        }
    }
    if (rc == 0) {
        /* One credit (one release add on the OIEB) for the lot. */
        pend_drain(r);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int
dk_zb_reader_metadata(dk_zb_reader_t *r, const void **data, uint64_t *size)
{
    if (r->closed) {
        return -EBADF;
    }
    /* Pairs with the writer's release store of metadata_written_bytes. */
    uint64_t written =
        dk__atomic_load_acquire(&r->oieb->metadata_written_bytes);
    if (written == 0) {
        return -ENODATA;
    }
    uint64_t n;
    memcpy(&n, r->meta, sizeof n);
    if (written < 8 || written > r->msize || n > written - 8) {
        set_error(&r->err, "Invalid metadata size");
        return -EPROTO;
    }
    *data = r->meta + 8;
    *size = n;
    return 0;
}

/* Whether the peer whose pid the OIEB word `pid` holds is there: an end
 * that is still open sees a live process in it. The acquire pairs with
 * the release that stored the pid (the reader's store of reader_pid at
 * create, the writer's CAS of writer_pid at open). */
static bool
peer_connected(bool closed, const uint64_t *pid)
{
    if (closed) {
        return false;
    }
    uint64_t p = dk__atomic_load_acquire(pid);
    return p != 0 && dk__os_pid_alive(p);
}

bool
dk_zb_reader_writer_connected(dk_zb_reader_t *r)
{
    return peer_connected(r->closed, &r->oieb->writer_pid);
}

uint64_t
dk_zb_reader_frames(const dk_zb_reader_t *r)
{
    return r->frames;
}

uint64_t
dk_zb_reader_bytes(const dk_zb_reader_t *r)
{
    return r->bytes;
}

const dk_zb_error_t *
dk_zb_reader_error(const dk_zb_reader_t *r)
{
    return &r->err;
}

void
dk_zb_reader_close(dk_zb_reader_t *r)
{
    pthread_mutex_lock(&r->lock);
    if (r->closed) {
        pthread_mutex_unlock(&r->lock);
        return;
    }
    dk__atomic_store_relaxed(&r->closed, true);
    /* The writer sees reader_pid == 0 at its next write; wake it if it
     * waits for space so it notices now. A thread of ours waiting in
     * read is woken too and sees `closed`. The semaphores stay open until
     * destroy: closing one under a waiting thread would unmap it. */
    dk__atomic_store_release(&r->oieb->reader_pid, 0);
    dk__nsem_post(r->sem_r);
    dk__nsem_post(r->sem_w);
    dk__os_futex_wake(writer_pid_word(r->oieb), INT_MAX, true);
    dk__nsem_unlink(r->sem_w_name);
    dk__nsem_unlink(r->sem_r_name);
    dk__shm_unlink(r->name);
    dk__lock_release(r->name, r->lock_fd);
    r->lock_fd = -1;
    pthread_mutex_unlock(&r->lock);
}

void
dk_zb_reader_destroy(dk_zb_reader_t *r)
{
    if (r == NULL) {
        return;
    }
    dk_zb_reader_close(r);
    dk__nsem_close(r->sem_w);
    dk__nsem_close(r->sem_r);
    reader_unmap(r);
    free(r->pend);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* ---- writer ------------------------------------------------------------ */

/*
 * Copying a frame in. The writer fills the ring in order, so in a ring
 * much larger than the caches the lines it stores to were last touched
 * a whole ring ago and are long evicted: a plain store first reads each
 * line from memory (read for ownership), then writes it back, twice the
 * traffic. Non-temporal stores skip that read and leave the caches to
 * the data the reader and writer are using. glibc's memcpy streams only
 * from 3/4 of what it takes for the shared cache (on the 2-CPU VM this
 * was measured on, AMD EPYC, 32 MiB L3, cpuid reports 320 MiB, so glibc
 * 2.36 streams from 240 MiB: never for a frame). Measured there, one
 * process copying from one 8 MiB source: 8 MiB frames into a 32 MiB ring
 * 14-17 GB/s with memcpy, 25-26 streamed; 16 MiB frames into a 32 MiB
 * ring 10-15 against 16-21; but into a ring of one 8 MiB frame, which
 * stays cached, memcpy wins (28 against 25), and frames of 2 MiB and
 * less into rings of 16 MiB and less go faster with memcpy. Across two
 * processes (the writer copying, the reader looking at the first byte,
 * both CPUs theirs), 8 MiB frames into a 32 MiB ring ran at 25.0-26.9
 * GB/s streamed against 18.0-20.9 with memcpy, but 4 MiB frames into a
 * 16 MiB ring, which with its source still fits the 32 MiB L3, at 21.7-24.3
 * streamed against 21.6-26.8. So a frame is streamed when it is at least
 * STREAM_MIN_FRAME long and the ring at least STREAM_MIN_RING, the size of
 * the L3 of one AMD EPYC core complex (cpuid cannot be trusted for it in
 * a VM, as above).
 *
 * Ordering: non-temporal stores are weakly ordered even on x86, so the
 * copy ends with a store fence (C): it orders the frame's bytes before
 * the header store and the release store of written_count that publish
 * the frame ((B) above), whose partner is the reader's acquire of the
 * semaphore token. Without it the reader could parse the header and
 * read bytes of the frame still in a write-combining buffer.
 */
#define STREAM_MIN_FRAME (4ull << 20)
#define STREAM_MIN_RING (32ull << 20)

bool
dk__zb_writer_streams(const dk_zb_writer_t *w, uint64_t size)
{
#if defined(__x86_64__)
    return w != NULL && size >= STREAM_MIN_FRAME &&
           w->psize >= STREAM_MIN_RING;
#else
    (void)w;
    (void)size;
    return false;
#endif
}

#if defined(__x86_64__)
/* The streaming loops: 64 bytes an iteration, source loads unaligned,
 * destination stores aligned (the head before it is copied plainly).
 * With AVX-512, one store fills a whole line: 26.6-27.7 GB/s against
 * 24.4-25.4 for SSE2's four (8 MiB frames, 32 MiB ring, measured as in
 * the comment above). */
__attribute__((target("avx512f"))) static void
stream_avx512(uint8_t *d, const uint8_t *s, size_t n)
{
    size_t i = 0;
    /* Four loads, then four stores: a single line per iteration ran 5-10%
     * slower. */
    for (; i + 256 <= n; i += 256) {
        __m512i v[4];
        for (int k = 0; k < 4; k++) {
            v[k] = _mm512_loadu_si512((const void *)(s + i + 64 * k));
        }
        for (int k = 0; k < 4; k++) {
            _mm512_stream_si512((void *)(d + i + 64 * k), v[k]);
        }
    }
    for (; i < n; i += 64) {
        _mm512_stream_si512((void *)(d + i),
                            _mm512_loadu_si512((const void *)(s + i)));
    }
}

static void
stream_sse2(uint8_t *d, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i += 64) {
        __m128i v[4];
        for (int k = 0; k < 4; k++) {
            v[k] = _mm_loadu_si128(
                (const __m128i *)(const void *)(s + i + 16 * k));
        }
        for (int k = 0; k < 4; k++) {
            _mm_stream_si128((__m128i *)(void *)(d + i + 16 * k), v[k]);
        }
    }
}
#endif

void
dk__zb_copy_streamed(void *dst, const void *src, size_t n)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    dk__zb_copy_streamed_as(dst, src, n, __builtin_cpu_supports("avx512f"));
#else
    memcpy(dst, src, n);
#endif
}

void
dk__zb_copy_streamed_as(void *dst, const void *src, size_t n, bool avx512)
{
#if defined(__x86_64__)
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t head = (64 - ((uintptr_t)d & 63)) & 63;
    if (head > n) {
        head = n;
    }
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    size_t tail = n & 63;
    n -= tail;
    if (avx512) {
        stream_avx512(d, s, n);
    } else {
        stream_sse2(d, s, n);
    }
    memcpy(d + n, s + n, tail);
    _mm_sfence(); /* (C): before the stores that publish the frame */
#else
    (void)avx512;
    memcpy(dst, src, n);
#endif
}

void
dk__zb_writer_copy(const dk_zb_writer_t *w, void *dst, const void *src,
                   size_t n)
{
    if (dk__zb_writer_streams(w, n)) {
        dk__zb_copy_streamed(dst, src, n);
    } else {
        memcpy(dst, src, n);
    }
}

int
dk_zb_writer_open(const char *name, dk_zb_writer_t **out, dk_zb_error_t *err)
{
    int rc = dk_zb_name_check(name);
    if (rc < 0) {
        return rc;
    }
    dk_zb_writer_t *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return -ENOMEM;
    }
    snprintf(w->name, sizeof w->name, "%s", name);
    w->shm_fd = -1;
    void *base;
    rc = dk__shm_open(name, DK_ZB_OIEB_SIZE, &base, &w->map_len, &w->shm_fd);
    if (rc < 0) {
        if (rc == -EINVAL) {
            set_error(&w->err, "segment smaller than the OIEB");
            rc = -EPROTO;
        }
        goto fail;
    }
    w->base = base;
    w->faulted = dk__shm_fault_flag(base);
    w->oieb = base;
    dk_zb_oieb_t *o = w->oieb;
    /* Pairs with the reader's release store of reader_pid: once we see
     * it, the rest of the OIEB is initialised. */
    uint64_t rpid = dk__atomic_load_acquire(&o->reader_pid);
    uint64_t msize = load64(&o->metadata_size);
    uint64_t psize = load64(&o->payload_size);
    if (dk__atomic_load_relaxed(&o->oieb_size) != DK_ZB_OIEB_SIZE) {
        set_error(&w->err, "Invalid OIEB size: %u - version mismatch?",
                  (unsigned)dk__atomic_load_relaxed(&o->oieb_size));
        rc = -EPROTO;
        goto fail;
    }
    if (dk__atomic_load_relaxed(&o->version_major) != 1) {
        set_error(&w->err, "unsupported protocol version %u",
                  (unsigned)dk__atomic_load_relaxed(&o->version_major));
        rc = -EPROTO;
        goto fail;
    }
    if (msize > w->map_len || psize > w->map_len ||
        DK_ZB_OIEB_SIZE + msize + psize > w->map_len ||
        psize < 2ull * DK_ZB_HEADER_SIZE) {
        set_error(&w->err,
                  "OIEB sizes (metadata %llu, payload %llu) do not "
                  "fit the %zu-byte segment",
                  (unsigned long long)msize, (unsigned long long)psize,
                  w->map_len);
        rc = -EPROTO;
        goto fail;
    }
    uint64_t wpos = load64(&o->payload_write_pos);
    if (wpos > psize || load64(&o->payload_free_bytes) > psize) {
        set_error(&w->err, "corrupted OIEB: positions out of range");
        rc = -EPROTO;
        goto fail;
    }
    if (rpid == 0 || !dk__os_pid_alive(rpid)) {
        rc = -ENOTCONN;
        goto fail;
    }
    char sem_name[DK_ZB_NAME_MAX + 8];
    snprintf(sem_name, sizeof sem_name, "sem-w-%s", name);
    rc = dk__nsem_open(sem_name, &w->sem_w);
    if (rc == 0) {
        snprintf(sem_name, sizeof sem_name, "sem-r-%s", name);
        rc = dk__nsem_open(sem_name, &w->sem_r);
    }
    if (rc < 0) {
        rc = rc == -ENOENT ? -ENOTCONN : rc;
        goto fail;
    }
    /* Claim the writer slot with a CAS (the peers check, then set: two
     * writers can both get in). A dead writer's slot is taken over. */
    w->pid = dk__pid_self();
    uint64_t cur = 0;
    while (!dk__atomic_cas_acq_rel(&o->writer_pid, &cur, w->pid)) {
        if (cur == w->pid || dk__os_pid_alive(cur)) {
            rc = -EBUSY;
            goto fail;
        }
    }
    /* A reader waiting for a writer (dk_zb_reader_wait_writer) sleeps
     * on the low half of writer_pid: wake it. */
    dk__os_futex_wake(writer_pid_word(o), INT_MAX, true);
    w->msize = msize;
    w->psize = psize;
    w->meta = w->base + DK_ZB_OIEB_SIZE;
    w->ring = w->meta + msize;
    w->wpos = wpos == psize ? 0 : wpos;
    w->written_count = load64(&o->payload_written_count);
    w->metadata_written = load64(&o->metadata_written_bytes) != 0;
    w->seq = 1;
    w->spin.budget_ns = SPIN_MAX_NS;
    *out = w;
    return 0;

fail:
    if (err != NULL) {
        *err = w->err;
    }
    dk__nsem_close(w->sem_w);
    dk__nsem_close(w->sem_r);
    dk__shm_close(w->base, w->map_len, w->shm_fd);
    free(w);
    return rc;
}

int
dk_zb_writer_set_metadata(dk_zb_writer_t *w, const void *data, uint64_t size)
{
    if (w->closed) {
        return -EBADF;
    }
    if (w->metadata_written || load64(&w->oieb->metadata_written_bytes) != 0) {
        w->metadata_written = true;
        return -EALREADY;
    }
    if (size == 0) {
        return -EINVAL;
    }
    if (size > w->msize || w->msize - size < 8) {
        return -ENOSPC;
    }
    memcpy(w->meta, &size, 8);
    memcpy(w->meta + 8, data, (size_t)size);
    dk__atomic_store_relaxed(&w->oieb->metadata_free_bytes,
                             w->msize - 8 - size);
    /* Pairs with the reader's acquire load in dk_zb_reader_metadata. */
    dk__atomic_store_release(&w->oieb->metadata_written_bytes, 8 + size);
    w->metadata_written = true;
    return 0;
}

/* Bytes the next frame of `total` bytes needs, and whether it wraps.
 * A frame that would leave a 1..15-byte tail wraps early, behind a
 * marker: no peer reader can parse a header that straddles the ring end.
 * (When total > wpos an early wrap could never fit; such a frame leaves
 * the short tail and the next one wraps without a marker.) */
static uint64_t
space_needed(const dk_zb_writer_t *w, uint64_t total, bool *wrap)
{
    uint64_t to_end = w->psize - w->wpos;
    if (to_end >= total) {
        uint64_t rest = to_end - total;
        if (rest != 0 && rest < DK_ZB_HEADER_SIZE && total <= w->wpos) {
            *wrap = true;
            return to_end + total;
        }
        *wrap = false;
        return total;
    }
    *wrap = true;
    return to_end + total;
}

/* The bytes free for us (the OIEB's free count less what held frames
 * use), refreshed from the OIEB when what we know of it is below
 * `needed`. 0, or -EPROTO for a count larger than the ring. */
static int
writer_free(dk_zb_writer_t *w, uint64_t needed, uint64_t *free_bytes)
{
    if (w->free_known >= needed) {
        *free_bytes = w->free_known;
        return 0;
    }
    /* (A'): pairs with the reader's release add. */
    uint64_t f = dk__atomic_load_acquire(&w->oieb->payload_free_bytes);
    if (f > w->psize) {
        set_error(&w->err, "corrupted OIEB: payload_free_bytes %llu > %llu",
                  (unsigned long long)f, (unsigned long long)w->psize);
        return -EPROTO;
    }
    w->free_known = f >= w->held_bytes ? f - w->held_bytes : 0;
    *free_bytes = w->free_known;
    return 0;
}

/* Use `n` bytes: subtracted from the free count when published. */
static void
writer_use(dk_zb_writer_t *w, uint64_t n)
{
    w->held_bytes += n;
    w->free_known = w->free_known >= n ? w->free_known - n : 0;
}

/*
 * Publish the held frames: one subtraction from the free count, one
 * store of write_pos and written_count, one sem-w post per frame (every
 * peer's reader takes one token per frame). A batch thus moves the OIEB
 * lines the reader also writes between the CPUs once, not once a frame.
 */
static void
writer_publish(dk_zb_writer_t *w)
{
    uint64_t n = w->held_bytes;
    if (n != 0) {
        /* acq_rel: the returned count may include credits the reader
         * released after reading those bytes ((A') again). */
        uint64_t old = dk__atomic_sub_acq_rel(&w->oieb->payload_free_bytes, n);
        /* A corrupted count (beyond the ring) is not trusted: the next
         * writer_free() loads it again and reports it. */
        w->free_known = old >= n && old <= w->psize ? old - n : 0;
        w->held_bytes = 0;
    }
    if (w->held_frames == 0) {
        return;
    }
    dk__atomic_store_relaxed(&w->oieb->payload_write_pos, w->wpos);
    /* (B): the frames' bytes before the reader's acquire load. */
    dk__atomic_store_release(&w->oieb->payload_written_count,
                             w->written_count);
    for (uint64_t i = 0; i < w->held_frames; i++) {
        dk__nsem_post(w->sem_w);
    }
    w->held_frames = 0;
}

/* Watch the free count until it covers `needed`, or the watch budget or
 * the deadline runs out. true if it does. */
static bool
writer_spin(dk_zb_writer_t *w, uint64_t needed, uint64_t deadline)
{
    struct watch wt;
    if (!watch_begin(&wt, &w->spin, deadline)) {
        return false;
    }
    for (unsigned i = 1;; i++) {
        if (dk__atomic_load_relaxed(&w->oieb->payload_free_bytes) >= needed ||
            dk__atomic_load_relaxed(&w->oieb->reader_pid) == 0) {
            watch_end(&wt, true);
            return true; /* the caller loads both again */
        }
        if (!watch_more(&wt, i)) {
            return false;
        }
    }
}

int
dk__zb_writer_acquire_ex(dk_zb_writer_t *w, uint64_t size, uint64_t deadline,
                         unsigned how, void **buf, uint64_t *sequence)
{
    if (dk__atomic_load_relaxed(&w->closed)) {
        return -EBADF;
    }
    if (w->pending) {
        return -EBUSY;
    }
    if (size == 0) {
        return -EINVAL;
    }
    if (truncated(w->faulted, &w->err)) {
        return -EPROTO;
    }
    if (size > w->psize - DK_ZB_HEADER_SIZE) {
        return -EMSGSIZE;
    }
    uint64_t total = DK_ZB_HEADER_SIZE + size;
    bool wrap;
    uint64_t needed = space_needed(w, total, &wrap);
    bool spun = !(how & DK__ZB_SPIN) || deadline == 0;
    for (;;) {
        uint64_t rpid = dk__atomic_load_acquire(&w->oieb->reader_pid);
        if (rpid == 0) {
            return -EPIPE;
        }
        uint64_t free_bytes;
        int rc = writer_free(w, needed, &free_bytes);
        if (rc < 0) {
            return rc;
        }
        if (free_bytes >= needed) {
            spin_learn(&w->spin);
            break;
        }
        if (w->held_frames != 0 || w->held_bytes != 0) {
            /* The reader cannot free space for frames it cannot see. */
            writer_publish(w);
            continue;
        }
        if (!spun) {
            spun = true;
            if (writer_spin(w, needed, deadline)) {
                continue;
            }
        }
        if (!(how & DK__ZB_SLEEP)) {
            return -EAGAIN;
        }
        uint64_t now = dk__os_monotonic_ns();
        if (now >= deadline) {
            return dk__os_pid_alive(rpid) ? -ETIMEDOUT : -EPIPE;
        }
        uint64_t slice = deadline - now > SLICE_NS ? now + SLICE_NS : deadline;
        rc = dk__nsem_wait(w->sem_r, slice);
        if (dk__atomic_load_relaxed(&w->closed)) {
            return -EBADF;
        }
        if (rc == -EINTR) {
            return -EINTR;
        }
        if (rc == -ETIMEDOUT && !dk__os_pid_alive(rpid)) {
            return -EPIPE;
        }
    }
    if (truncated(w->faulted, &w->err)) {
        return -EPROTO;
    }
    if (wrap) {
        uint64_t to_end = w->psize - w->wpos;
        if (to_end >= DK_ZB_HEADER_SIZE) {
            static const uint64_t marker[2] = {0, 0};
            memcpy(w->ring + w->wpos, marker, sizeof marker);
            w->written_count++;
        }
        if (to_end != 0) {
            writer_use(w, to_end);
        }
        w->wpos = 0;
        if (w->held_frames == 0) {
            /* Published alone: the marker stands for itself until the
             * frame after it is committed. */
            writer_publish(w);
            dk__atomic_store_relaxed(&w->oieb->payload_written_count,
                                     w->written_count);
            dk__atomic_store_relaxed(&w->oieb->payload_write_pos, 0);
        }
    }
    w->pending = true;
    w->pending_size = size;
    *buf = w->ring + w->wpos + DK_ZB_HEADER_SIZE;
    *sequence = w->seq;
    return 0;
}

int
dk_zb_writer_acquire(dk_zb_writer_t *w, uint64_t size, uint64_t deadline,
                     void **buf, uint64_t *sequence)
{
    return dk__zb_writer_acquire_ex(w, size, deadline,
                                    DK__ZB_SPIN | DK__ZB_SLEEP, buf, sequence);
}

int
dk__zb_writer_commit_ex(dk_zb_writer_t *w, bool publish)
{
    if (!w->pending || dk__atomic_load_relaxed(&w->closed)) {
        return -EINVAL;
    }
    if (truncated(w->faulted, &w->err)) {
        /* The frame's bytes went to the guard's pages, not the ring. */
        w->pending = false;
        return -EPROTO;
    }
    uint64_t size = w->pending_size;
    uint64_t total = DK_ZB_HEADER_SIZE + size;
    uint64_t hdr[2] = {size, w->seq};
    memcpy(w->ring + w->wpos, hdr, sizeof hdr);
    if (truncated(w->faulted, &w->err)) {
        w->pending = false; /* the header itself hit a lost page */
        return -EPROTO;
    }
    writer_use(w, total);
    w->wpos += total;
    if (w->wpos == w->psize) {
        w->wpos = 0;
    }
    w->written_count++;
    w->held_frames++;
    if (publish) {
        writer_publish(w);
    }
    w->pending = false;
    w->seq++;
    w->frames++;
    w->bytes += size;
    return 0;
}

void
dk__zb_writer_publish(dk_zb_writer_t *w)
{
    if (!dk__atomic_load_relaxed(&w->closed)) {
        writer_publish(w);
    }
}

int
dk_zb_writer_commit(dk_zb_writer_t *w)
{
    return dk__zb_writer_commit_ex(w, true);
}

int
dk_zb_writer_write_many(dk_zb_writer_t *w, const dk_zb_buf_t *frames, size_t n,
                        uint64_t deadline, size_t *done)
{
    *done = 0;
    if (dk__atomic_load_relaxed(&w->closed)) {
        return -EBADF;
    }
    if (w->pending) {
        return -EBUSY;
    }
    for (size_t i = 0; i < n; i++) {
        if (frames[i].size == 0) {
            return -EINVAL;
        }
        if (frames[i].size > w->psize - DK_ZB_HEADER_SIZE) {
            return -EMSGSIZE;
        }
    }
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        void *buf;
        uint64_t seq;
        /* Publishes the frames before this one if it must wait. */
        rc = dk__zb_writer_acquire_ex(w, frames[i].size, deadline,
                                      DK__ZB_SPIN | DK__ZB_SLEEP, &buf, &seq);
        if (rc < 0) {
            break;
        }
        dk__zb_writer_copy(w, buf, frames[i].data, (size_t)frames[i].size);
        rc = dk__zb_writer_commit_ex(w, false);
        if (rc < 0) {
            break;
        }
        (*done)++;
    }
    dk__zb_writer_publish(w);
    return rc;
}

int
dk_zb_writer_cancel(dk_zb_writer_t *w)
{
    if (!w->pending) {
        return -EINVAL;
    }
    /* A wrap done by acquire stays: its marker sits where the reader
     * will look next, and the next frame starts at 0 as it expects. */
    w->pending = false;
    return 0;
}

int
dk_zb_writer_write(dk_zb_writer_t *w, const void *data, uint64_t size,
                   uint64_t deadline)
{
    void *buf;
    uint64_t seq;
    int rc = dk_zb_writer_acquire(w, size, deadline, &buf, &seq);
    if (rc < 0) {
        return rc;
    }
    dk__zb_writer_copy(w, buf, data, (size_t)size);
    return dk_zb_writer_commit(w);
}

bool
dk_zb_writer_reader_connected(dk_zb_writer_t *w)
{
    return peer_connected(w->closed, &w->oieb->reader_pid);
}

uint64_t
dk_zb_writer_next_sequence(const dk_zb_writer_t *w)
{
    return w->seq;
}

uint64_t
dk_zb_writer_frames(const dk_zb_writer_t *w)
{
    return w->frames;
}

uint64_t
dk_zb_writer_bytes(const dk_zb_writer_t *w)
{
    return w->bytes;
}

uint64_t
dk_zb_writer_max_frame(const dk_zb_writer_t *w)
{
    return w->psize - DK_ZB_HEADER_SIZE;
}

const dk_zb_error_t *
dk_zb_writer_error(const dk_zb_writer_t *w)
{
    return &w->err;
}

void
dk_zb_writer_close(dk_zb_writer_t *w)
{
    if (dk__atomic_xchg_relaxed(&w->closed, true)) {
        return;
    }
    /* Only our own claim is cleared: a writer that took over after we
     * were presumed dead keeps its slot. */
    uint64_t mine = w->pid;
    dk__atomic_cas_acq_rel(&w->oieb->writer_pid, &mine, 0);
}

void
dk_zb_writer_destroy(dk_zb_writer_t *w)
{
    if (w == NULL) {
        return;
    }
    dk_zb_writer_close(w);
    dk__nsem_close(w->sem_w);
    dk__nsem_close(w->sem_r);
    dk__shm_close(w->base, w->map_len, w->shm_fd);
    free(w);
}

/* ---- steps for asynchronous readers (watch.h) ------------------------ */

int
dk__zb_reader_wait_step(dk_zb_reader_t *r, bool check_writer, uint32_t **word,
                        uint32_t *busy)
{
    if (dk__atomic_load_relaxed(&r->closed)) {
        return -EBADF;
    }
    uint32_t *w = dk__nsem_announce(r->sem_w);
    if (w == NULL) {
        return -ENOSYS;
    }
    if (dk__atomic_load_seq_cst(w) > 0) { /* (N2) */
        dk__nsem_unannounce(r->sem_w);
        return 0;
    }
    if (check_writer && writer_gone(r)) {
        dk__nsem_unannounce(r->sem_w);
        return dk__nsem_value(r->sem_w) > 0 ? 0 : -EPIPE;
    }
    *word = w;
    *busy = 0;
    return -EAGAIN;
}

void
dk__zb_reader_unannounce(dk_zb_reader_t *r)
{
    dk__nsem_unannounce(r->sem_w);
}

/* ---- steps for asynchronous writers (watch.h) ------------------------ */

int
dk__zb_writer_space_step(dk_zb_writer_t *w, uint64_t size, bool check_reader,
                         uint32_t **word, uint32_t *busy)
{
    if (dk__atomic_load_relaxed(&w->closed)) {
        return -EBADF;
    }
    if (w->pending) {
        return -EBUSY;
    }
    if (size == 0) {
        return -EINVAL;
    }
    if (size > w->psize - DK_ZB_HEADER_SIZE) {
        return -EMSGSIZE;
    }
    uint64_t rpid = dk__atomic_load_acquire(&w->oieb->reader_pid);
    if (rpid == 0) {
        return -EPIPE;
    }
    bool wrap;
    uint64_t needed = space_needed(w, DK_ZB_HEADER_SIZE + size, &wrap);
    /* Tokens of releases already counted in the free bytes: drop them,
     * so the word we watch is 0 until the next release posts. */
    while (dk__nsem_trywait(w->sem_r) == 0) {
    }
    uint32_t *ws = dk__nsem_announce(w->sem_r);
    if (ws == NULL) {
        return -ENOSYS;
    }
    /* (A'): pairs with the reader's release add, as in acquire. */
    if (dk__atomic_load_acquire(&w->oieb->payload_free_bytes) >= needed) {
        dk__nsem_unannounce(w->sem_r);
        return 0;
    }
    if (check_reader && !dk__os_pid_alive(rpid)) {
        dk__nsem_unannounce(w->sem_r);
        return -EPIPE;
    }
    *word = ws;
    *busy = 0;
    return -EAGAIN;
}

void
dk__zb_writer_unannounce(dk_zb_writer_t *w)
{
    dk__nsem_unannounce(w->sem_r);
}

/* Peers' writers make no futex wake when they connect: a reader waiting
 * for one looks again after each slice of this length. */
#define PEER_CONNECT_SLICE_NS (50ull * 1000000ull)

int
dk_zb_reader_wait_writer(dk_zb_reader_t *r, uint64_t deadline)
{
    for (;;) {
        if (dk__atomic_load_relaxed(&r->closed)) {
            return -EBADF;
        }
        uint64_t pid = dk__atomic_load_acquire(&r->oieb->writer_pid);
        if (pid != 0 && dk__os_pid_alive(pid)) {
            return 0;
        }
        uint64_t now = dk__os_monotonic_ns();
        if (now >= deadline) {
            return -ETIMEDOUT;
        }
        uint64_t until = deadline - now > PEER_CONNECT_SLICE_NS
                             ? now + PEER_CONNECT_SLICE_NS
                             : deadline;
        /* The word holds the low half of pid (0, or a dead writer's pid
         * until a new writer replaces it): sleep while it is unchanged. */
        int rc = dk__os_futex_wait(writer_pid_word(r->oieb), (uint32_t)pid,
                                   until, true);
        if (rc == -EINTR) {
            return -EINTR;
        }
    }
}
