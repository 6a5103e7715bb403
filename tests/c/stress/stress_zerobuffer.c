/*
 * Randomized stress of the ZeroBuffer ring (dk/zerobuffer.h) between two
 * processes: this process creates a buffer with a small payload ring
 * (64 KiB, so it wraps every few dozen frames) and reads; a forked child
 * connects as the writer. DK_STRESS_ITERS frames go through per round.
 *
 * Frame `seq` has a size and bytes that are a function of (seq, seed)
 * only, so the reader recomputes them and checks the sequence number, the
 * size and EVERY byte. Sizes are 1..P/3, spread over every power of two
 * so that small frames (many per wrap) and large ones (the ring nearly
 * full, wrap markers) both occur. The writer mixes the copying path
 * (dk_zb_writer_write), batches of 2..8 frames published together
 * (dk_zb_writer_write_many, often larger than the free space), the
 * zero-copy path (acquire, fill in place, commit) and cancelled
 * reservations, and stores metadata once, which the
 * reader checks.
 *
 * Round 1 releases each frame at once. Round 2 holds up to 16 frames
 * (as many as are ready) and releases them in random order, so space
 * comes back out of order and the writer waits for it.
 *
 * Every wait has a deadline (a timeout is an error); the writer dies with
 * its parent; the buffer's names are unlinked even when the run fails or
 * is killed by a signal.
 */
#include "../runner.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dk/time.h"
#include "dk/zerobuffer.h"

#define PAYLOAD (64u * 1024u)
#define METADATA 256u
#define MAX_FRAME (PAYLOAD / 3)
#define MAX_HELD 16
#define WAIT_NS (30ull * DK_NSEC_PER_SEC)

/* Writer-side counts, reported through a shared page. */
struct wstats {
    long copied;
    long zero_copy;
    long cancelled;
    long batched;
    long errors;
};

static char names[4][320]; /* the buffer's files, for the cleanup */

static void
unlink_names(void)
{
    for (int i = 0; i < 4; i++) {
        if (names[i][0] != '\0') {
            unlink(names[i]);
        }
    }
}

static void
on_fatal(int sig)
{
    unlink_names(); /* unlink is async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig);
}

static void
remember_names(const char *name)
{
    snprintf(names[0], sizeof names[0], "/dev/shm/%s", name);
    snprintf(names[1], sizeof names[1], "/dev/shm/sem.sem-w-%s", name);
    snprintf(names[2], sizeof names[2], "/dev/shm/sem.sem-r-%s", name);
    snprintf(names[3], sizeof names[3], "/tmp/zerobuffer/%s.lock", name);
    int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGALRM, SIGTERM, SIGINT};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        signal(sigs[i], on_fatal);
    }
}

static uint64_t
mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t
frame_base(uint64_t seq, uint64_t seed)
{
    return mix(seed ^ (seq * 0x9e3779b97f4a7c15ull));
}

/* 1..MAX_FRAME: first a power of two up to 2^15, then uniform below it. */
static uint64_t
frame_size(uint64_t seq, uint64_t seed)
{
    uint64_t h = mix(frame_base(seq, seed) + 1);
    uint64_t limit = 2ull << (h % 15);
    if (limit > MAX_FRAME) {
        limit = MAX_FRAME;
    }
    return 1 + (h >> 8) % limit;
}

/* Word j of a frame: one multiply per 8 bytes, different for every
 * position and every frame. */
static uint64_t
frame_word(uint64_t base, uint64_t j)
{
    uint64_t x = base + (j + 1) * 0x9e3779b97f4a7c15ull;
    return (x ^ (x >> 31)) * 0xbf58476d1ce4e5b9ull;
}

static void
frame_fill(uint8_t *p, uint64_t size, uint64_t seq, uint64_t seed)
{
    uint64_t base = frame_base(seq, seed);
    uint64_t j = 0;
    for (; (j + 1) * 8 <= size; j++) {
        uint64_t w = frame_word(base, j);
        memcpy(p + j * 8, &w, 8);
    }
    uint64_t w = frame_word(base, j);
    memcpy(p + j * 8, &w, size - j * 8);
}

/* The offset of the first wrong byte, or -1. */
static int64_t
frame_check(const uint8_t *p, uint64_t size, uint64_t seq, uint64_t seed)
{
    uint64_t base = frame_base(seq, seed);
    uint64_t j = 0;
    uint8_t want[8];
    for (; j * 8 < size; j++) {
        uint64_t w = frame_word(base, j);
        uint64_t n = size - j * 8 < 8 ? size - j * 8 : 8;
        memcpy(want, &w, 8);
        if (memcmp(p + j * 8, want, n) != 0) {
            for (uint64_t k = 0; k < n; k++) {
                if (p[j * 8 + k] != want[k]) {
                    return (int64_t)(j * 8 + k);
                }
            }
        }
    }
    return -1;
}

static void
metadata_fill(uint8_t *p, uint64_t seed)
{
    for (unsigned i = 0; i < METADATA - 8; i++) {
        p[i] = (uint8_t)mix(seed + i);
    }
}

static unsigned
rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

/* ---- the writer process --------------------------------------------- */

static int
write_one(dk_zb_writer_t *w, uint64_t seq, uint64_t seed, unsigned *rs,
          uint8_t *scratch, struct wstats *st)
{
    uint64_t size = frame_size(seq, seed);
    unsigned mode = rnd(rs) % 8;
    if (mode < 4) {
        frame_fill(scratch, size, seq, seed);
        int rc = dk_zb_writer_write(w, scratch, size, dk_now() + WAIT_NS);
        st->copied += rc == 0;
        return rc;
    }
    void *buf;
    uint64_t got;
    int rc = dk_zb_writer_acquire(w, size, dk_now() + WAIT_NS, &buf, &got);
    if (rc != 0) {
        return rc;
    }
    if (got != seq) {
        return -EILSEQ;
    }
    if (mode == 7) {
        /* Scribble, cancel, and reserve again: nothing may show. */
        memset(buf, 0xA5, size);
        if (dk_zb_writer_cancel(w) != 0 ||
            dk_zb_writer_next_sequence(w) != seq) {
            return -EPROTO;
        }
        st->cancelled++;
        rc = dk_zb_writer_acquire(w, size, dk_now() + WAIT_NS, &buf, &got);
        if (rc != 0) {
            return rc;
        }
        if (got != seq) {
            return -EILSEQ;
        }
    }
    frame_fill(buf, size, seq, seed);
    rc = dk_zb_writer_commit(w);
    st->zero_copy += rc == 0;
    return rc;
}

/* Frames seq.. as one batch of up to 8 (fewer near the end); the
 * number written goes to *n. Sizes up to P/3 make most batches larger
 * than the free space, so the batch publishes part and waits. */
static int
write_batch(dk_zb_writer_t *w, uint64_t seq, uint64_t last, uint64_t seed,
            unsigned *rs, uint8_t *scratch, struct wstats *st, uint64_t *n)
{
    enum { MAX_BATCH = 8 };
    dk_zb_buf_t frames[MAX_BATCH];
    uint64_t want = 2 + rnd(rs) % (MAX_BATCH - 1);
    if (want > last - seq + 1) {
        want = last - seq + 1;
    }
    uint8_t *p = scratch;
    for (uint64_t i = 0; i < want; i++) {
        uint64_t size = frame_size(seq + i, seed);
        frame_fill(p, size, seq + i, seed);
        frames[i].data = p;
        frames[i].size = size;
        p += size;
    }
    size_t done = 0;
    int rc = dk_zb_writer_write_many(w, frames, (size_t)want,
                                     dk_now() + WAIT_NS, &done);
    st->batched += (long)done;
    *n = done;
    if (rc == 0 && done != want) {
        return -EPROTO;
    }
    return rc;
}

static void
writer_main(const char *name, long iters, uint64_t seed, struct wstats *st)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dk_zb_writer_t *w;
    int rc = dk_zb_writer_open(name, &w, NULL);
    if (rc != 0) {
        fprintf(stderr, "# writer open: %d\n", rc);
        _exit(2);
    }
    uint8_t meta[METADATA];
    metadata_fill(meta, seed);
    rc = dk_zb_writer_set_metadata(w, meta, METADATA - 8);
    if (rc != 0) {
        fprintf(stderr, "# writer metadata: %d\n", rc);
        _exit(2);
    }
    uint8_t *scratch = malloc(8 * (size_t)MAX_FRAME);
    unsigned rs = (unsigned)seed ^ 0x7777u;
    for (uint64_t seq = 1; seq <= (uint64_t)iters; seq++) {
        if (rnd(&rs) % 8 == 0) {
            uint64_t n = 0;
            rc = write_batch(w, seq, (uint64_t)iters, seed, &rs, scratch, st,
                             &n);
            if (rc == 0) {
                seq += n - 1;
            }
        } else {
            rc = write_one(w, seq, seed, &rs, scratch, st);
        }
        if (rc != 0) {
            fprintf(stderr, "# writer frame %llu: %d\n",
                    (unsigned long long)seq, rc);
            st->errors++;
            _exit(3);
        }
    }
    free(scratch);
    dk_zb_writer_destroy(w);
    _exit(0);
}

/* ---- the reader (this process) -------------------------------------- */

struct reader_state {
    dk_zb_reader_t *r;
    uint64_t seed;
    uint64_t next_seq;
    long errors;
    long released_twice;
    long batches;
    long max_held;
    bool metadata_checked;
};

static void
reader_fail(struct reader_state *s, const char *what, long long detail)
{
    if (s->errors++ < 10) {
        fprintf(stderr, "# reader, frame %llu: %s (%lld)\n",
                (unsigned long long)s->next_seq, what, detail);
    }
}

static void
check_frame(struct reader_state *s, const dk_zb_frame_t *f)
{
    uint64_t seq = s->next_seq;
    if (f->sequence != seq) {
        reader_fail(s, "sequence", (long long)f->sequence);
    } else if (f->size != frame_size(seq, s->seed)) {
        reader_fail(s, "size", (long long)f->size);
    } else {
        int64_t bad = frame_check(f->data, f->size, seq, s->seed);
        if (bad >= 0) {
            reader_fail(s, "wrong byte at offset", (long long)bad);
        }
    }
    if (!s->metadata_checked) {
        /* The writer stored it before its first frame. */
        const void *meta;
        uint64_t len;
        uint8_t want[METADATA];
        metadata_fill(want, s->seed);
        if (dk_zb_reader_metadata(s->r, &meta, &len) != 0 ||
            len != METADATA - 8 || memcmp(meta, want, len) != 0) {
            reader_fail(s, "metadata", (long long)len);
        }
        s->metadata_checked = true;
    }
    s->next_seq++;
}

/* Round 1: read, check, release, one frame at a time. */
static void
read_at_once(struct reader_state *s, long iters)
{
    while (s->next_seq <= (uint64_t)iters && s->errors == 0) {
        dk_zb_frame_t f;
        int rc = dk_zb_reader_read(s->r, dk_now() + WAIT_NS, &f);
        if (rc != 0) {
            reader_fail(s, "read", rc);
            return;
        }
        check_frame(s, &f);
        rc = dk_zb_reader_release(s->r, &f);
        if (rc != 0) {
            reader_fail(s, "release", rc);
        }
    }
}

/* Round 2: wait for one frame, take up to a random number more that are
 * already there, then release them all in random order. */
static void
read_held(struct reader_state *s, long iters, unsigned *rs)
{
    dk_zb_frame_t held[MAX_HELD];
    while (s->next_seq <= (uint64_t)iters && s->errors == 0) {
        int n = 0;
        int want = 1 + (int)(rnd(rs) % MAX_HELD);
        int rc = dk_zb_reader_read(s->r, dk_now() + WAIT_NS, &held[n]);
        if (rc != 0) {
            reader_fail(s, "read", rc);
            return;
        }
        check_frame(s, &held[n++]);
        while (n < want && s->next_seq <= (uint64_t)iters) {
            rc = dk_zb_reader_try_read(s->r, &held[n]);
            if (rc == -EAGAIN) {
                break; /* the writer waits for space: give it back */
            }
            if (rc != 0) {
                reader_fail(s, "try_read", rc);
                break;
            }
            check_frame(s, &held[n++]);
        }
        s->batches++;
        if (n > s->max_held) {
            s->max_held = n;
        }
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(rnd(rs) % (unsigned)(i + 1));
            dk_zb_frame_t t = held[i];
            held[i] = held[j];
            held[j] = t;
        }
        if (rnd(rs) % 4 == 0) {
            /* Release them together (still in random order). */
            rc = dk_zb_reader_release_many(s->r, held, (size_t)n);
            if (rc != 0) {
                reader_fail(s, "release_many", rc);
            }
        } else {
            for (int i = 0; i < n; i++) {
                rc = dk_zb_reader_release(s->r, &held[i]);
                if (rc != 0) {
                    reader_fail(s, "release", rc);
                }
            }
        }
        if (rnd(rs) % 64 == 0) {
            rc = dk_zb_reader_release(s->r, &held[0]);
            if (rc != -EALREADY) {
                reader_fail(s, "second release", rc);
            }
            s->released_twice++;
        }
    }
}

/* Wait for the writer until the deadline; kill it if it hangs. */
static bool
reap_writer(pid_t pid, uint64_t deadline)
{
    int st;
    for (;;) {
        pid_t got = waitpid(pid, &st, WNOHANG);
        if (got == pid) {
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
                return true;
            }
            fprintf(stderr, "# writer status %#x\n", st);
            return false;
        }
        if (dk_now() >= deadline) {
            fprintf(stderr, "# writer hung: killed\n");
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return false;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void
run_round(int round)
{
    const char *env = getenv("DK_STRESS_ITERS");
    long iters = env != NULL && *env != '\0' ? atol(env) : 20000;
    CHECK(iters > 0);
    char name[64];
    snprintf(name, sizeof name, "dkzb-stress-%d-%d", (int)getpid(), round);
    remember_names(name);
    uint64_t seed = mix((uint64_t)getpid() * 1000003u + (uint64_t)round +
                        (uint64_t)time(NULL));
    struct wstats *st = mmap(NULL, sizeof *st, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(st != MAP_FAILED);

    struct reader_state s = {.seed = seed, .next_seq = 1};
    CHECK_EQ(
        dk_zb_reader_create(name, METADATA, PAYLOAD, DK_ZB_MODE_PRIVATE, &s.r),
        0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        unlink_names();
        CHECK(pid >= 0);
    }
    if (pid == 0) {
        writer_main(name, iters, seed, st);
    }
    uint64_t t0 = dk_now();
    unsigned rs = (unsigned)seed;
    if (round == 1) {
        read_at_once(&s, iters);
    } else {
        read_held(&s, iters, &rs);
    }
    if (s.errors == 0) {
        /* The writer has gone and everything it wrote was read. */
        dk_zb_frame_t f;
        int rc = dk_zb_reader_read(s.r, dk_now() + WAIT_NS, &f);
        if (rc != -EPIPE) {
            reader_fail(&s, "after the last frame", rc);
        }
    }
    uint64_t bytes = dk_zb_reader_bytes(s.r);
    uint64_t frames = dk_zb_reader_frames(s.r);
    double secs = (double)(dk_now() - t0) / 1e9;
    if (s.errors != 0) {
        kill(pid, SIGKILL); /* it would wait for space we never free */
    }
    bool writer_ok = reap_writer(pid, dk_now() + WAIT_NS);
    dk_zb_reader_destroy(s.r);
    unlink_names(); /* already gone unless something failed */

    printf("# stress-zerobuffer round %d (%s): %llu frames, %llu bytes "
           "checked, ring %u B, %ld copied + %ld in batches + %ld "
           "zero-copy (%ld cancelled first), %ld errors, %.1f s\n",
           round, round == 1 ? "release at once" : "frames held",
           (unsigned long long)frames, (unsigned long long)bytes, PAYLOAD,
           st->copied, st->batched, st->zero_copy, st->cancelled,
           s.errors + st->errors, secs);
    if (round == 2) {
        printf("# stress-zerobuffer round 2: %ld batches (up to %ld frames "
               "held), released in random order, %ld double releases "
               "refused\n",
               s.batches, s.max_held, s.released_twice);
    }
    fflush(stdout);
    CHECK_EQ(s.errors, 0);
    CHECK(writer_ok);
    CHECK_EQ(st->errors, 0);
    CHECK_EQ(frames, iters);
    CHECK_EQ(st->copied + st->batched + st->zero_copy, iters);
    CHECK(st->batched > 0);
    munmap(st, sizeof *st);
}

DK_TEST_T(stress_zerobuffer_release_at_once, 900)
{
    run_round(1);
}

DK_TEST_T(stress_zerobuffer_frames_held, 900)
{
    run_round(2);
}
