/*
 * Tests of the ZeroBuffer core: the ring protocol in one process and
 * across forked processes, the fixes for the peers' defects (no short
 * tails, ordered release, replacement of a crashed reader), peer death,
 * and hostile segments (the reader reports -EPROTO/-EILSEQ and never
 * reads out of bounds; run under ASan by `make check`).
 */
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dk/time.h"
#include "dk/zerobuffer.h"
#include "zerobuffer_internal.h"

#define MS 1000000ull

static const char *
tname(const char *tag)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "dkzb-c-%d-%s", (int)getpid(), tag);
    return buf;
}

static uint64_t
after_ms(uint64_t ms)
{
    return dk_now() + ms * MS;
}

/* Map the segment as a hostile third party would. */
static uint8_t *
map_segment(const char *name, size_t *len)
{
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    *len = (size_t)st.st_size;
    void *p = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(p != MAP_FAILED);
    close(fd);
    return p;
}

static void
fill(uint8_t *p, uint64_t n, uint64_t seed)
{
    for (uint64_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(i * 31 + seed);
    }
}

static bool
verify(const uint8_t *p, uint64_t n, uint64_t seed)
{
    for (uint64_t i = 0; i < n; i++) {
        if (p[i] != (uint8_t)(i * 31 + seed)) {
            return false;
        }
    }
    return true;
}

/* A buffer with its reader, a writer and the segment mapped as a third
 * party maps it: what most tests start from. */
typedef struct {
    const char *name;
    dk_zb_reader_t *r;
    dk_zb_writer_t *w;
    uint8_t *seg;
    size_t len;
    dk_zb_oieb_t *o; /* the segment's OIEB */
} zb_pair;

static void
pair_open(zb_pair *p, const char *tag, uint64_t msize, uint64_t psize)
{
    p->name = tname(tag);
    CHECK_EQ(dk_zb_reader_create(p->name, msize, psize, 0600, &p->r), 0);
    CHECK_EQ(dk_zb_writer_open(p->name, &p->w, NULL), 0);
    p->seg = map_segment(p->name, &p->len);
    p->o = (void *)p->seg;
}

static void
pair_close(zb_pair *p)
{
    munmap(p->seg, p->len);
    dk_zb_writer_destroy(p->w);
    dk_zb_reader_destroy(p->r);
}

DK_TEST(zb_name_check)
{
    CHECK_EQ(dk_zb_name_check("abc-DEF_123"), 0);
    CHECK_EQ(dk_zb_name_check(""), -EINVAL);
    CHECK_EQ(dk_zb_name_check("a/b"), -EINVAL);
    CHECK_EQ(dk_zb_name_check(".."), -EINVAL);
    CHECK_EQ(dk_zb_name_check("a..b"), -EINVAL);
    CHECK_EQ(dk_zb_name_check("a b"), -EINVAL);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK_EQ(dk_zb_name_check(longname), -ENAMETOOLONG);
    dk_zb_reader_t *r;
    CHECK_EQ(dk_zb_reader_create("bad/name", 0, 1024, 0600, &r), -EINVAL);
    CHECK_EQ(dk_zb_reader_create("okname", 0, 0, 0600, &r), -EINVAL);
    dk_zb_writer_t *w;
    CHECK_EQ(dk_zb_writer_open("bad/name", &w, NULL), -EINVAL);
}

DK_TEST(zb_basic_roundtrip_and_metadata)
{
    const char *name = tname("basic");
    dk_zb_reader_t *r;
    CHECK_EQ(dk_zb_reader_create(name, 100, 1000, 0600, &r), 0);
    /* Sizes are rounded up to 64 and the OIEB is the peers'. */
    size_t len;
    uint8_t *seg = map_segment(name, &len);
    const dk_zb_oieb_t *o = (const void *)seg;
    CHECK_EQ(len, 128 + 128 + 1024);
    CHECK_EQ(o->oieb_size, 128);
    CHECK_EQ(o->version_major, 1);
    CHECK_EQ(o->metadata_size, 128);
    CHECK_EQ(o->payload_size, 1024);
    CHECK_EQ(o->payload_free_bytes, 1024);
    CHECK_EQ(o->reader_pid, getpid());

    const void *md;
    uint64_t mlen;
    CHECK_EQ(dk_zb_reader_metadata(r, &md, &mlen), -ENODATA);
    dk_zb_frame_t f;
    CHECK_EQ(dk_zb_reader_read(r, 0, &f), -ETIMEDOUT);

    dk_zb_writer_t *w, *w2;
    CHECK_EQ(dk_zb_writer_open(name, &w, NULL), 0);
    CHECK_EQ(o->writer_pid, getpid());
    CHECK(dk_zb_reader_writer_connected(r));
    CHECK(dk_zb_writer_reader_connected(w));
    CHECK_EQ(dk_zb_writer_open(name, &w2, NULL), -EBUSY);
    CHECK_EQ(dk_zb_writer_set_metadata(w, "", 0), -EINVAL);
    CHECK_EQ(dk_zb_writer_set_metadata(w, "hello", 5), 0);
    CHECK_EQ(dk_zb_writer_set_metadata(w, "again", 5), -EALREADY);
    CHECK_EQ(dk_zb_reader_metadata(r, &md, &mlen), 0);
    CHECK_EQ(mlen, 5);
    CHECK(memcmp(md, "hello", 5) == 0);
    CHECK_EQ(o->metadata_written_bytes, 13);
    CHECK_EQ(o->metadata_free_bytes, 128 - 13);

    CHECK_EQ(dk_zb_writer_write(w, "x", 0, 0), -EINVAL);
    CHECK_EQ(dk_zb_writer_write(w, seg, 1024 - 15, 0), -EMSGSIZE);
    CHECK_EQ(dk_zb_writer_write(w, "abc", 3, after_ms(100)), 0);
    CHECK_EQ(o->payload_free_bytes, 1024 - 19);
    CHECK_EQ(o->payload_write_pos, 19);
    CHECK_EQ(o->payload_written_count, 1);
    CHECK_EQ(dk_zb_reader_read(r, after_ms(100), &f), 0);
    CHECK_EQ(f.size, 3);
    CHECK_EQ(f.sequence, 1);
    CHECK(memcmp(f.data, "abc", 3) == 0);
    CHECK_EQ(o->payload_read_pos, 19);
    CHECK_EQ(o->payload_free_bytes, 1024 - 19);
    CHECK_EQ(dk_zb_reader_release(r, &f), 0);
    CHECK_EQ(dk_zb_reader_release(r, &f), -EALREADY);
    CHECK_EQ(o->payload_free_bytes, 1024);
    CHECK_EQ(dk_zb_reader_frames(r), 1);
    CHECK_EQ(dk_zb_writer_frames(w), 1);

    /* Graceful writer exit: the reader is told once everything is read. */
    CHECK_EQ(dk_zb_writer_write(w, "def", 3, 0), 0);
    dk_zb_writer_destroy(w);
    CHECK_EQ(o->writer_pid, 0);
    CHECK_EQ(dk_zb_reader_read(r, after_ms(100), &f), 0);
    CHECK_EQ(f.sequence, 2);
    CHECK_EQ(dk_zb_reader_read(r, after_ms(50), &f), -EPIPE);

    dk_zb_reader_destroy(r);
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof path, "/dev/shm/sem.sem-w-%s", name);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof path, "/tmp/zerobuffer/%s.lock", name);
    CHECK(access(path, F_OK) != 0);
    munmap(seg, len);
    CHECK_EQ(dk_zb_writer_open(name, &w, NULL), -ENOENT);
}

DK_TEST(zb_no_writer_yet_is_a_timeout_not_dead)
{
    dk_zb_reader_t *r;
    CHECK_EQ(dk_zb_reader_create(tname("nowriter"), 64, 1024, 0600, &r), 0);
    dk_zb_frame_t f;
    CHECK_EQ(dk_zb_reader_read(r, after_ms(20), &f), -ETIMEDOUT);
    CHECK(!dk_zb_reader_writer_connected(r));
    dk_zb_reader_t *r2;
    CHECK_EQ(dk_zb_reader_create(tname("nowriter"), 64, 1024, 0600, &r2),
             -EEXIST);
    dk_zb_reader_destroy(r);
}

/* Mixed sizes in one process, with the reader holding up to 3 frames and
 * releasing them out of order; every frame arrives intact and in order. */
DK_TEST(zb_mixed_sizes_wrap_and_out_of_order_release)
{
    zb_pair p;
    pair_open(&p, "mixed", 0, 4096);
    uint8_t buf[4096];
    uint64_t rng = 12345;
    dk_zb_frame_t held[3];
    int nheld = 0;
    uint64_t next_read = 1;
    for (uint64_t seq = 1; seq <= 20000; seq++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t size = 1 + (rng >> 33) % 1500;
        fill(buf, size, seq);
        int rc;
        while ((rc = dk_zb_writer_write(p.w, buf, size, 0)) == -ETIMEDOUT) {
            /* Full: read one and hold it; release the held ones in
             * reverse order now and then, or when nothing is unread. */
            dk_zb_frame_t f;
            if (nheld < 3 && dk_zb_reader_read(p.r, 0, &f) == 0) {
                CHECK_EQ(f.sequence, next_read);
                CHECK(verify(f.data, f.size, f.sequence));
                next_read++;
                held[nheld++] = f;
                if (!(rng & 1)) {
                    continue;
                }
            }
            CHECK(nheld > 0);
            while (nheld > 0) {
                CHECK_EQ(dk_zb_reader_release(p.r, &held[--nheld]), 0);
            }
        }
        CHECK_EQ(rc, 0);
        /* The writer never leaves a 1..15-byte tail it could avoid. */
        uint64_t tail = 4096 - p.o->payload_write_pos;
        CHECK(tail == 4096 || tail >= 16 ||
              p.o->payload_write_pos < 4096 - tail);
        CHECK(p.o->payload_free_bytes <= 4096);
    }
    while (nheld > 0) {
        CHECK_EQ(dk_zb_reader_release(p.r, &held[--nheld]), 0);
    }
    dk_zb_frame_t f;
    while (dk_zb_reader_read(p.r, 0, &f) == 0) {
        CHECK_EQ(f.sequence, next_read);
        CHECK(verify(f.data, f.size, f.sequence));
        next_read++;
        CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    }
    CHECK_EQ(next_read, 20001);
    CHECK_EQ(p.o->payload_free_bytes, 4096);
    pair_close(&p);
}

/* Out-of-order release credits nothing until the older frame goes. */
DK_TEST(zb_release_in_ring_order)
{
    zb_pair p;
    pair_open(&p, "order", 0, 1024);
    uint8_t buf[100] = {0};
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 84, 0), 0);
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 84, 0), 0);
    dk_zb_frame_t a, b;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &a), 0);
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &b), 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024 - 200);
    CHECK_EQ(dk_zb_reader_release(p.r, &b), 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024 - 200);
    CHECK_EQ(dk_zb_reader_release(p.r, &a), 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024);
    dk_zb_frame_t bogus = {.ticket = 99};
    CHECK_EQ(dk_zb_reader_release(p.r, &bogus), -EINVAL);
    pair_close(&p);
}

/* A frame filling the ring exactly, then more (the Python writer's
 * "exact fit" defect); and a short tail that cannot be avoided (frame at
 * offset 0 leaving 10 bytes) followed by a markerless wrap. */
DK_TEST(zb_exact_fill_and_unavoidable_short_tail)
{
    zb_pair p;
    pair_open(&p, "exact", 0, 1024);
    uint8_t buf[1024];
    dk_zb_frame_t f;
    for (int round = 0; round < 3; round++) {
        fill(buf, 1008, (uint64_t)round);
        CHECK_EQ(dk_zb_writer_write(p.w, buf, 1008, 0), 0);
        CHECK_EQ(p.o->payload_free_bytes, 0);
        CHECK_EQ(p.o->payload_write_pos, 0);
        CHECK_EQ(dk_zb_writer_write(p.w, buf, 1, 0), -ETIMEDOUT);
        CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
        CHECK(verify(f.data, 1008, (uint64_t)round));
        CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    }
    /* 16 + 998 = 1014 bytes at offset 0 leave a 10-byte tail. */
    fill(buf, 998, 7);
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 998, 0), 0);
    CHECK_EQ(p.o->payload_write_pos, 1014);
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
    CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    fill(buf, 50, 8);
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 50, 0), 0);
    CHECK_EQ(p.o->payload_write_pos, 66);
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
    CHECK_EQ(f.size, 50);
    CHECK(verify(f.data, 50, 8));
    CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024);
    /* At 66, 16 + 934 = 950 -> 1016 leaves 8 bytes; an early wrap would
     * need 950 <= 66, so the frame goes in place and the next one wraps
     * without a marker. */
    fill(buf, 934, 9);
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 934, 0), 0);
    CHECK_EQ(p.o->payload_write_pos, 1016);
    fill(buf, 20, 10);
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 20, 0), 0);
    CHECK_EQ(p.o->payload_write_pos, 36);
    CHECK_EQ(p.o->payload_free_bytes, 1024 - 950 - 8 - 36);
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
    CHECK(verify(f.data, 934, 9));
    CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
    CHECK(verify(f.data, 20, 10));
    CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024);
    pair_close(&p);
}

/* A batch: checked before anything is written, published at once (one
 * token per frame, the OIEB updated once), and released at once. */
DK_TEST(zb_write_many_and_release_many)
{
    zb_pair p;
    pair_open(&p, "many", 0, 1024);
    static uint8_t big[2048];
    size_t done = 99;
    dk_zb_buf_t bad[2] = {{"ab", 2}, {"", 0}};
    CHECK_EQ(dk_zb_writer_write_many(p.w, bad, 2, 0, &done), -EINVAL);
    CHECK_EQ(done, 0);
    dk_zb_buf_t large[2] = {{"ab", 2}, {big, 1024 - 15}};
    CHECK_EQ(dk_zb_writer_write_many(p.w, large, 2, 0, &done), -EMSGSIZE);
    CHECK_EQ(p.o->payload_written_count, 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024);
    dk_zb_buf_t three[3] = {{"one", 3}, {"two", 3}, {"three", 5}};
    CHECK_EQ(dk_zb_writer_write_many(p.w, three, 3, 0, &done), 0);
    CHECK_EQ(done, 3);
    CHECK_EQ(p.o->payload_written_count, 3);
    CHECK_EQ(p.o->payload_write_pos, 3 * 16 + 11);
    CHECK_EQ(p.o->payload_free_bytes, 1024 - (3 * 16 + 11));
    dk_zb_frame_t f[3];
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(dk_zb_reader_try_read(p.r, &f[i]), 0);
        CHECK_EQ(f[i].sequence, (uint64_t)i + 1);
    }
    dk_zb_frame_t none;
    CHECK_EQ(dk_zb_reader_try_read(p.r, &none), -EAGAIN);
    CHECK(memcmp(f[2].data, "three", 5) == 0);
    dk_zb_frame_t stranger = f[0];
    stranger.ticket = 1000;
    dk_zb_frame_t mixed[2] = {f[0], stranger};
    CHECK_EQ(dk_zb_reader_release_many(p.r, mixed, 2), -EINVAL);
    CHECK_EQ(p.o->payload_free_bytes, 1024 - (3 * 16 + 11));
    CHECK_EQ(dk_zb_reader_release_many(p.r, f, 3), 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024);
    CHECK_EQ(dk_zb_reader_release_many(p.r, f, 3), 0); /* again: no-op */
    CHECK_EQ(p.o->payload_free_bytes, 1024);
    CHECK_EQ(dk_zb_reader_release(p.r, &f[1]), -EALREADY);
    /* A batch larger than the ring with nobody reading: what fits is
     * published, the rest times out. */
    dk_zb_buf_t four[4] = {{big, 400}, {big, 400}, {big, 400}, {big, 400}};
    CHECK_EQ(dk_zb_writer_write_many(p.w, four, 4, after_ms(30), &done),
             -ETIMEDOUT);
    CHECK_EQ(done, 2);
    CHECK_EQ(dk_zb_reader_try_read(p.r, &f[0]), 0);
    CHECK_EQ(dk_zb_reader_try_read(p.r, &f[1]), 0);
    CHECK_EQ(f[1].sequence, 5);
    CHECK_EQ(dk_zb_reader_try_read(p.r, &f[2]), -EAGAIN);
    CHECK_EQ(dk_zb_reader_release_many(p.r, f, 2), 0);
    pair_close(&p);
}

/* The streamed copy (non-temporal stores past the caches) at every
 * alignment of source and destination and at lengths around its 16-byte
 * head and 64-byte blocks: the bytes land, nothing around them moves. */
DK_TEST(zb_streamed_copy_any_alignment)
{
    enum { MAXLEN = 300, GUARD = 80 };
    static uint8_t src[MAXLEN + 64];
    static uint8_t dst[GUARD + MAXLEN + 64 + GUARD];
    fill(src, sizeof src, 7);
    bool have_avx512 = false;
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_avx512 = __builtin_cpu_supports("avx512f");
#endif
    for (int wide = 0; wide <= (int)have_avx512; wide++) {
        for (size_t doff = 0; doff < 64; doff++) {
            for (size_t soff = 0; soff < 32; soff += 5) {
                for (size_t n = 0; n <= MAXLEN; n += n < 140 ? 1 : 23) {
                    uint8_t *d = dst + GUARD + doff;
                    memset(dst, 0xEE, sizeof dst);
                    dk__zb_copy_streamed_as(d, src + soff, n, wide);
                    CHECK(memcmp(d, src + soff, n) == 0);
                    for (uint8_t *p = dst; p < d; p++) {
                        CHECK_EQ(*p, 0xEE);
                    }
                    for (uint8_t *p = d + n; p < dst + sizeof dst; p++) {
                        CHECK_EQ(*p, 0xEE);
                    }
                }
            }
        }
    }
    /* The dispatching entry point, once. */
    dk__zb_copy_streamed(dst + 3, src + 1, MAXLEN);
    CHECK(memcmp(dst + 3, src + 1, MAXLEN) == 0);
}

/* Large frames into a ring far larger than the caches are streamed in
 * (x86-64), small frames and small rings are not; either way every
 * frame reads back whole over several laps of the ring, wraps included
 * (frame sizes that do not divide the ring, at odd alignments). */
DK_TEST(zb_large_frames_stream_and_read_back)
{
    enum { MIB = 1 << 20 };
    zb_pair p;
    pair_open(&p, "stream", 0, 32 * MIB);
    zb_pair small;
    pair_open(&small, "nostream", 0, 32 * MIB - 64);
#if defined(__x86_64__)
    CHECK(dk__zb_writer_streams(p.w, 8 * MIB));
    CHECK(dk__zb_writer_streams(p.w, 4 * MIB));
#endif
    CHECK(!dk__zb_writer_streams(p.w, 4 * MIB - 1));
    CHECK(!dk__zb_writer_streams(p.w, 64 * 1024));
    CHECK(!dk__zb_writer_streams(small.w, 8 * MIB));
    CHECK(!dk__zb_writer_streams(NULL, 8 * MIB));
    uint64_t size = 7 * MIB + 13;
    uint8_t *src = malloc(size);
    CHECK(src != NULL);
    for (uint64_t i = 0; i < 12; i++) {
        fill(src, size, i);
        CHECK_EQ(dk_zb_writer_write(p.w, src, size, after_ms(5000)), 0);
        dk_zb_frame_t f;
        CHECK_EQ(dk_zb_reader_read(p.r, after_ms(5000), &f), 0);
        CHECK_EQ(f.size, size);
        CHECK_EQ(f.sequence, i + 1);
        CHECK(verify(f.data, size, i));
        CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    }
    /* The batch path copies the same way. */
    dk_zb_buf_t two[2] = {{src, size}, {src, 5 * MIB + 1}};
    size_t done = 0;
    CHECK_EQ(dk_zb_writer_write_many(p.w, two, 2, after_ms(5000), &done), 0);
    CHECK_EQ(done, 2);
    dk_zb_frame_t f[2];
    CHECK_EQ(dk_zb_reader_read(p.r, after_ms(5000), &f[0]), 0);
    CHECK_EQ(dk_zb_reader_read(p.r, after_ms(5000), &f[1]), 0);
    CHECK(verify(f[0].data, size, 11));
    CHECK(verify(f[1].data, 5 * MIB + 1, 11));
    CHECK_EQ(dk_zb_reader_release_many(p.r, f, 2), 0);
    free(src);
    pair_close(&small);
    pair_close(&p);
}

/* The early wrap, checked on the wire: the marker is there. */
DK_TEST(zb_early_wrap_writes_marker)
{
    zb_pair p;
    pair_open(&p, "early", 0, 1024);
    const uint8_t *ring = p.seg + 128;
    uint8_t buf[1024] = {0};
    dk_zb_frame_t f;
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 534, 0), 0); /* 0 -> 550 */
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
    CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    /* At 550: 16 + 450 = 466 -> 1016 would leave 8 bytes. */
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 450, 0), 0);
    uint64_t marker[2];
    memcpy(marker, ring + 550, 16);
    CHECK_EQ(marker[0], 0);
    CHECK_EQ(marker[1], 0);
    CHECK_EQ(p.o->payload_write_pos, 466);
    CHECK_EQ(p.o->payload_written_count, 3);
    CHECK_EQ(p.o->payload_free_bytes, 1024 - 474 - 466);
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
    CHECK_EQ(f.sequence, 2);
    CHECK_EQ(p.o->payload_read_pos, 466);
    CHECK_EQ(p.o->payload_read_count, 3);
    CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);
    CHECK_EQ(p.o->payload_free_bytes, 1024);
    pair_close(&p);
}

/* The watch budget: a wait that slept but ended soon (a stream of large
 * frames) earns a watch covering it, up to 100 us, which a watch that
 * sees its event keeps; a watch that ends in a sleep halves it; a long
 * wait teaches nothing. */
DK_TEST(zb_watch_budget_learns_short_sleeps)
{
    /* 40 us waits (1 MiB frames): the next watch covers 60 us. */
    CHECK_EQ(dk__zb_spin_after_sleep(0, 40000), 60000);
    CHECK_EQ(dk__zb_spin_after_sleep(20000, 40000), 60000);
    /* Never past 100 us, never below the 20 us a watch starts with. */
    CHECK_EQ(dk__zb_spin_after_sleep(0, 90000), 100000);
    CHECK_EQ(dk__zb_spin_after_sleep(0, 3000), 20000);
    /* An idle peer (waits of a millisecond and more): unchanged. */
    CHECK_EQ(dk__zb_spin_after_sleep(0, 1000000), 0);
    CHECK_EQ(dk__zb_spin_after_sleep(5000, 2000000000ull), 5000);
    /* A learned watch that pays is kept; a short one is topped up. */
    CHECK_EQ(dk__zb_spin_after_watch(60000, true), 60000);
    CHECK_EQ(dk__zb_spin_after_watch(2000, true), 20000);
    /* One that ends in a sleep halves. */
    CHECK_EQ(dk__zb_spin_after_watch(60000, false), 30000);
    CHECK_EQ(dk__zb_spin_after_watch(1000, false), 500);
}

/* Write frames 1..frames, frame seq of 1 + (seq * 7919) % max_size bytes
 * filled for seq: 0, or 3 when a write fails (a forked writer's exit
 * code). */
static int
write_numbered(dk_zb_writer_t *w, uint64_t frames, uint64_t max_size, int ms)
{
    uint8_t *buf = malloc(max_size);
    int rc = buf == NULL ? 3 : 0;
    for (uint64_t seq = 1; seq <= frames && rc == 0; seq++) {
        uint64_t size = 1 + (seq * 7919) % max_size;
        fill(buf, size, seq);
        rc = dk_zb_writer_write(w, buf, size, after_ms(ms)) == 0 ? 0 : 3;
    }
    free(buf);
    return rc;
}

/* Read what write_numbered wrote, checking each frame's sequence, size
 * and bytes. */
static void
read_numbered(dk_zb_reader_t *r, uint64_t frames, uint64_t max_size, int ms)
{
    for (uint64_t seq = 1; seq <= frames; seq++) {
        dk_zb_frame_t f;
        CHECK_EQ(dk_zb_reader_read(r, after_ms(ms), &f), 0);
        CHECK_EQ(f.sequence, seq);
        CHECK_EQ(f.size, 1 + (seq * 7919) % max_size);
        CHECK(verify(f.data, f.size, seq));
        CHECK_EQ(dk_zb_reader_release(r, &f), 0);
    }
}

/* Writer and reader in two processes: 10000 frames of mixed sizes
 * through a small ring, checked byte by byte. */
DK_TEST(zb_cross_process_stream)
{
    const char *name = tname("xproc");
    dk_zb_reader_t *r;
    CHECK_EQ(dk_zb_reader_create(name, 64, 8192, 0600, &r), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dk_zb_writer_t *w;
        if (dk_zb_writer_open(name, &w, NULL) != 0) {
            _exit(2);
        }
        int rc = write_numbered(w, 10000, 3000, 5000);
        dk_zb_writer_destroy(w);
        _exit(rc);
    }
    read_numbered(r, 10000, 3000, 5000);
    dk_zb_frame_t f;
    CHECK_EQ(dk_zb_reader_read(r, after_ms(3000), &f), -EPIPE);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    dk_zb_reader_destroy(r);
}

/* Writer and reader processes on one CPU (the reader's, which the forked
 * writer inherits): each side's watch yields the CPU to the other rather
 * than sleeping (src/zerobuffer.c, "A watch under way"). Every frame
 * arrives whole and in order, through a ring that wraps every few frames
 * (psize small) or every few thousand; then the reader, its writer idle,
 * times out, and sees the writer leave. */
static void
stream_on_one_cpu(const char *tag, uint64_t psize, uint64_t frames,
                  uint64_t max_size)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    int cpu = sched_getcpu();
    CPU_SET(cpu >= 0 ? cpu : 0, &one);
    CHECK_EQ(sched_setaffinity(0, sizeof one, &one), 0);
    const char *name = tname(tag);
    dk_zb_reader_t *r;
    CHECK_EQ(dk_zb_reader_create(name, 64, psize, 0600, &r), 0);
    int gate[2];
    CHECK_EQ(pipe(gate), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dk_zb_writer_t *w;
        if (dk_zb_writer_open(name, &w, NULL) != 0) {
            _exit(2);
        }
        if (write_numbered(w, frames, max_size, 10000) != 0) {
            _exit(3);
        }
        char c;
        /* Idle, still connected, until the reader has timed out. */
        if (read(gate[0], &c, 1) != 1) {
            _exit(4);
        }
        dk_zb_writer_destroy(w);
        _exit(0);
    }
    read_numbered(r, frames, max_size, 10000);
    dk_zb_frame_t f;
    for (int i = 0; i < 8; i++) {
        CHECK_EQ(dk_zb_reader_read(r, after_ms(20), &f), -ETIMEDOUT);
    }
    CHECK_EQ(write(gate[1], "x", 1), 1);
    CHECK_EQ(dk_zb_reader_read(r, after_ms(5000), &f), -EPIPE);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(gate[0]);
    close(gate[1]);
    dk_zb_reader_destroy(r);
}

DK_TEST(zb_stream_on_one_cpu_small_ring)
{
    stream_on_one_cpu("onecpu-s", 8192, 20000, 3000);
}

DK_TEST(zb_stream_on_one_cpu_large_ring)
{
    stream_on_one_cpu("onecpu-l", 1 << 20, 50000, 1024);
}

DK_TEST(zb_writer_killed_is_detected)
{
    const char *name = tname("wkill");
    dk_zb_reader_t *r;
    CHECK_EQ(dk_zb_reader_create(name, 64, 4096, 0600, &r), 0);
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dk_zb_writer_t *w;
        if (dk_zb_writer_open(name, &w, NULL) != 0 ||
            dk_zb_writer_write(w, "alive", 5, 0) != 0) {
            _exit(2);
        }
        char c = 'x';
        (void)!write(pfd[1], &c, 1);
        for (;;) {
            pause();
        }
    }
    char c;
    CHECK(read(pfd[0], &c, 1) == 1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    dk_zb_frame_t f;
    /* The frame written before the crash is still delivered. */
    CHECK_EQ(dk_zb_reader_read(r, after_ms(2000), &f), 0);
    CHECK(memcmp(f.data, "alive", 5) == 0);
    CHECK_EQ(dk_zb_reader_read(r, after_ms(2000), &f), -EPIPE);
    CHECK(!dk_zb_reader_writer_connected(r));
    dk_zb_reader_destroy(r);
}

DK_TEST(zb_reader_killed_and_replaced)
{
    const char *name = tname("rkill");
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dk_zb_reader_t *r;
        if (dk_zb_reader_create(name, 64, 1024, 0600, &r) != 0) {
            _exit(2);
        }
        char c = 'x';
        (void)!write(pfd[1], &c, 1);
        for (;;) {
            pause();
        }
    }
    char c;
    CHECK(read(pfd[0], &c, 1) == 1);
    dk_zb_writer_t *w;
    CHECK_EQ(dk_zb_writer_open(name, &w, NULL), 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    /* Not blocked yet: writes succeed until the ring is full, then the
     * dead reader is noticed. */
    uint8_t buf[400] = {0};
    int rc;
    int n = 0;
    while ((rc = dk_zb_writer_write(w, buf, sizeof buf, after_ms(3000))) ==
           0) {
        n++;
        CHECK(n < 10);
    }
    CHECK_EQ(rc, -EPIPE);
    CHECK(!dk_zb_writer_reader_connected(w));
    dk_zb_writer_destroy(w);

    /* A writer still connected to the crashed reader's segment, and a
     * new reader that replaces it: the old writer is told. */
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dk_zb_reader_t *r;
        if (dk_zb_reader_create(name, 64, 1024, 0600, &r) != 0) {
            _exit(2);
        }
        (void)!write(pfd[1], &c, 1);
        for (;;) {
            pause();
        }
    }
    CHECK(read(pfd[0], &c, 1) == 1);
    CHECK_EQ(dk_zb_writer_open(name, &w, NULL), 0);
    CHECK_EQ(dk_zb_writer_write(w, buf, 10, 0), 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    dk_zb_reader_t *r2;
    CHECK_EQ(dk_zb_reader_create(name, 64, 1024, 0600, &r2), 0);
    CHECK_EQ(dk_zb_writer_write(w, buf, 10, after_ms(1000)), -EPIPE);
    dk_zb_writer_destroy(w);
    CHECK_EQ(dk_zb_writer_open(name, &w, NULL), 0);
    CHECK_EQ(dk_zb_writer_write(w, buf, 10, 0), 0);
    dk_zb_frame_t f;
    CHECK_EQ(dk_zb_reader_read(r2, after_ms(1000), &f), 0);
    CHECK_EQ(f.sequence, 1);
    dk_zb_writer_destroy(w);
    dk_zb_reader_destroy(r2);
}

DK_TEST(zb_writer_open_rejects_bad_oieb)
{
    const char *name = tname("badoieb");
    dk_zb_reader_t *r;
    CHECK_EQ(dk_zb_reader_create(name, 64, 1024, 0600, &r), 0);
    size_t len;
    uint8_t *seg = map_segment(name, &len);
    dk_zb_oieb_t *o = (void *)seg;
    dk_zb_writer_t *w;
    dk_zb_error_t err;
    o->oieb_size = 64;
    CHECK_EQ(dk_zb_writer_open(name, &w, &err), -EPROTO);
    CHECK(strstr(err.message, "OIEB size") != NULL);
    o->oieb_size = 128;
    o->version_major = 2;
    CHECK_EQ(dk_zb_writer_open(name, &w, &err), -EPROTO);
    o->version_major = 1;
    o->payload_size = 1ull << 40;
    CHECK_EQ(dk_zb_writer_open(name, &w, &err), -EPROTO);
    o->payload_size = 1024;
    o->payload_write_pos = 5000;
    CHECK_EQ(dk_zb_writer_open(name, &w, &err), -EPROTO);
    o->payload_write_pos = 0;
    uint64_t rpid = o->reader_pid;
    o->reader_pid = 0;
    CHECK_EQ(dk_zb_writer_open(name, &w, &err), -ENOTCONN);
    o->reader_pid = rpid;
    CHECK_EQ(dk_zb_writer_open(name, &w, &err), 0);
    /* A corrupted free count stops the writer instead of overwriting. */
    o->payload_free_bytes = 1ull << 62;
    CHECK_EQ(dk_zb_writer_write(w, "x", 1, 0), -EPROTO);
    dk_zb_writer_destroy(w);
    munmap(seg, len);
    dk_zb_reader_destroy(r);
}

/* A hostile writer: the reader reports and never reads out of bounds. */
DK_TEST(zb_reader_rejects_hostile_segment)
{
    zb_pair p;
    pair_open(&p, "hostile", 64, 1024);
    uint8_t *ring = p.seg + 128 + 64;
    dk_zb_frame_t f;
    const dk_zb_error_t *err = dk_zb_reader_error(p.r);

    CHECK_EQ(dk_zb_writer_write(p.w, "abcd", 4, 0), 0);
    uint64_t *hdr = (uint64_t *)(void *)ring;
    /* Size past the ring. */
    hdr[0] = 5000;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    CHECK(strstr(err->message, "past the ring") != NULL);
    /* The error is sticky: nothing was consumed. */
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    hdr[0] = UINT64_MAX - 8;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    /* Wrong sequence. */
    hdr[0] = 4;
    hdr[1] = 7;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EILSEQ);
    CHECK_EQ(err->expected, 1);
    CHECK_EQ(err->got, 7);
    /* Size 0 with a sequence: not a marker. */
    hdr[0] = 0;
    hdr[1] = 1;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    /* A marker at the start of the ring. */
    hdr[1] = 0;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    hdr[0] = 4;
    hdr[1] = 1;
    /* OIEB corruption. */
    p.o->oieb_size = 1;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    p.o->oieb_size = 128;
    p.o->version_major = 9;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    p.o->version_major = 1;
    p.o->payload_size = 1ull << 50;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    p.o->payload_size = 1024;
    uint64_t wp = p.o->payload_write_pos;
    p.o->payload_write_pos = 1ull << 40;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    p.o->payload_write_pos = wp;
    uint64_t fb = p.o->payload_free_bytes;
    p.o->payload_free_bytes = 1ull << 63;
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), -EPROTO);
    p.o->payload_free_bytes = fb;
    /* Repaired: the frame reads fine. */
    CHECK_EQ(dk_zb_reader_read(p.r, 0, &f), 0);
    CHECK(memcmp(f.data, "abcd", 4) == 0);
    CHECK_EQ(dk_zb_reader_release(p.r, &f), 0);

    /* Metadata lengths beyond what was written. */
    CHECK_EQ(dk_zb_writer_set_metadata(p.w, "meta", 4), 0);
    const void *md;
    uint64_t mlen;
    uint64_t bad = 1000;
    memcpy(p.seg + 128, &bad, 8);
    CHECK_EQ(dk_zb_reader_metadata(p.r, &md, &mlen), -EPROTO);
    p.o->metadata_written_bytes = 1ull << 40;
    CHECK_EQ(dk_zb_reader_metadata(p.r, &md, &mlen), -EPROTO);

    pair_close(&p);
}

DK_TEST(zb_metadata_too_large_and_zero_block)
{
    zb_pair p;
    pair_open(&p, "meta0", 0, 1024);
    CHECK_EQ(dk_zb_writer_set_metadata(p.w, "m", 1), -ENOSPC);
    CHECK_EQ(dk_zb_writer_write(p.w, "m", 1, 0), 0);
    pair_close(&p);
    pair_open(&p, "meta0", 64, 1024);
    uint8_t big[64] = {0};
    CHECK_EQ(dk_zb_writer_set_metadata(p.w, big, 57), -ENOSPC);
    CHECK_EQ(dk_zb_writer_set_metadata(p.w, big, 56), 0);
    pair_close(&p);
}

DK_TEST(zb_buffer_full_times_out)
{
    zb_pair p;
    pair_open(&p, "full", 0, 1024);
    uint8_t buf[500] = {0};
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 480, 0), 0);
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 480, 0), 0);
    CHECK_EQ(dk_zb_writer_write(p.w, buf, 480, after_ms(30)), -ETIMEDOUT);
    void *slot;
    uint64_t seq;
    CHECK_EQ(dk_zb_writer_commit(p.w), -EINVAL);
    /* 32 bytes are left: a 16-byte frame fills the ring exactly; a
     * 10-byte one would leave 6 bytes and must wrap, which needs more. */
    CHECK_EQ(dk_zb_writer_acquire(p.w, 10, 0, &slot, &seq), -ETIMEDOUT);
    CHECK_EQ(dk_zb_writer_acquire(p.w, 16, 0, &slot, &seq), 0);
    CHECK_EQ(seq, 3);
    CHECK_EQ(dk_zb_writer_acquire(p.w, 10, 0, &slot, &seq), -EBUSY);
    CHECK_EQ(dk_zb_writer_cancel(p.w), 0);
    CHECK_EQ(dk_zb_writer_cancel(p.w), -EINVAL);
    pair_close(&p);
}

/* Random mutations of a valid segment image through the checker: a
 * miniature of the fuzz target, run under ASan by make check. */
DK_TEST(zb_segment_check_survives_mutations)
{
    const size_t len = 128 + 64 + 1024;
    uint8_t *img = malloc(len);
    uint8_t *mut = malloc(len);
    CHECK(img != NULL && mut != NULL);
    memset(img, 0, len);
    dk_zb_oieb_t *o = (void *)img;
    o->oieb_size = 128;
    o->version_major = 1;
    o->metadata_size = 64;
    o->payload_size = 1024;
    uint8_t *ring = img + 192;
    uint64_t pos = 0;
    for (uint64_t seq = 1; seq <= 10; seq++) {
        uint64_t h[2] = {50, seq};
        memcpy(ring + pos, h, 16);
        pos += 66;
    }
    o->payload_write_pos = pos;
    o->payload_free_bytes = 1024 - pos;
    dk_zb_error_t err;
    CHECK_EQ(dk_zb_segment_check(img, len, 100, &err), 10);
    uint64_t rng = 42;
    int errors = 0;
    for (int i = 0; i < 20000; i++) {
        memcpy(mut, img, len);
        int nflip = 1 + i % 4;
        for (int k = 0; k < nflip; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)((rng >> 20) % len);
            if (i % 3 == 0) {
                at = (size_t)((rng >> 20) % 128); /* aim at the OIEB */
            }
            mut[at] = (uint8_t)(rng >> 56);
        }
        int64_t n = dk_zb_segment_check(mut, len, 1000, &err);
        if (n < 0) {
            CHECK(n == -EPROTO || n == -EILSEQ);
            errors++;
        }
    }
    CHECK(errors > 0);
    CHECK_EQ(dk_zb_segment_check(img, 64, 10, &err), -EPROTO);
    free(img);
    free(mut);
}
