/* Tests of data objects: sharing, clipping, regions, and a randomized
 * comparison of concat/subrange against a plain byte buffer. */
#include "objects.h"
#include "runner.h"

#include <string.h>

#include "dk/data.h"

static bool
collect(void *ctx, size_t offset, const void *bytes, size_t len)
{
    unsigned char *out = ctx;
    memcpy(out + offset, bytes, len);
    return true;
}

static bool
count_regions(void *ctx, size_t offset, const void *bytes, size_t len)
{
    (void)offset;
    (void)bytes;
    (void)len;
    ++*(size_t *)ctx;
    return true;
}

static bool
stop_first(void *ctx, size_t offset, const void *bytes, size_t len)
{
    (void)offset;
    (void)bytes;
    (void)len;
    ++*(size_t *)ctx;
    return false;
}

/* The data constructors, failing the test unless they return 0. */
static dk_data_t *
concat(dk_data_t *a, dk_data_t *b)
{
    dk_data_t *d;
    CHECK_EQ(dk_data_create_concat(a, b, &d), 0);
    return d;
}

static dk_data_t *
subrange(dk_data_t *d, size_t offset, size_t length)
{
    dk_data_t *r;
    CHECK_EQ(dk_data_create_subrange(d, offset, length, &r), 0);
    return r;
}

static dk_data_t *
region(dk_data_t *d, size_t location, size_t *offset)
{
    dk_data_t *r;
    CHECK_EQ(dk_data_copy_region(d, location, offset, &r), 0);
    return r;
}

static dk_data_t *
map(dk_data_t *d, const void **bytes, size_t *size)
{
    dk_data_t *m;
    CHECK_EQ(dk_data_create_map(d, bytes, size, &m), 0);
    return m;
}

static void
check_contents(dk_data_t *d, const unsigned char *want, size_t n)
{
    CHECK_EQ(dk_data_get_size(d), n);
    unsigned char *got = malloc(n + 1);
    CHECK(dk_data_apply(d, got, collect));
    CHECK(memcmp(got, want, n) == 0);
    const void *flat;
    size_t size;
    dk_data_t *m = map(d, &flat, &size);
    CHECK_EQ(size, n);
    CHECK(memcmp(flat, want, n) == 0);
    CHECK_EQ(dk_data_region_count(m) <= 1, 1);
    dk_release(m);
    free(got);
}

DK_TEST(data_concat_and_subrange_share_regions)
{
    dk_data_t *a = t_data("hello ", 6);
    dk_data_t *b = t_data("world", 5);
    dk_data_t *ab = concat(a, b);
    check_contents(ab, (const unsigned char *)"hello world", 11);
    CHECK_EQ(dk_data_region_count(ab), 2);
    size_t off = 99;
    dk_data_t *r = region(ab, 7, &off);
    CHECK_EQ(off, 6);
    check_contents(r, (const unsigned char *)"world", 5);
    dk_release(r);
    r = region(ab, 11, &off);
    CHECK_EQ(off, 11);
    CHECK(r == dk_data_empty());
    dk_data_t *s = subrange(ab, 4, 4);
    check_contents(s, (const unsigned char *)"o wo", 4);
    CHECK_EQ(dk_data_region_count(s), 2);
    CHECK(subrange(ab, 11, 3) == dk_data_empty());
    CHECK(subrange(ab, 2, 0) == dk_data_empty());
    dk_data_t *clip = subrange(ab, 8, 100);
    check_contents(clip, (const unsigned char *)"rld", 3);
    size_t regions = 0;
    CHECK(dk_data_apply(ab, &regions, count_regions));
    CHECK_EQ(regions, 2);
    regions = 0;
    CHECK(!dk_data_apply(ab, &regions, stop_first));
    CHECK_EQ(regions, 1);
    /* The originals outlive nothing: releasing them keeps the rest valid. */
    dk_release(a);
    dk_release(b);
    check_contents(s, (const unsigned char *)"o wo", 4);
    dk_release(clip);
    dk_release(s);
    dk_release(ab);
    CHECK(t_data(NULL, 0) == dk_data_empty());
    CHECK_EQ(dk_data_get_size(dk_data_empty()), 0);
}

static unsigned
rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

DK_TEST(data_random_operations_match_a_flat_buffer)
{
    unsigned seed = 12345;
    for (int round = 0; round < 200; round++) {
        size_t n = rnd(&seed) % 300;
        unsigned char *ref = malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            ref[i] = (unsigned char)rnd(&seed);
        }
        dk_data_t *d = t_data(ref, n);
        for (int step = 0; step < 20; step++) {
            if (rnd(&seed) % 2 == 0 && n < 2000) {
                size_t m = rnd(&seed) % 50;
                unsigned char *extra = malloc(m + 1);
                for (size_t i = 0; i < m; i++) {
                    extra[i] = (unsigned char)rnd(&seed);
                }
                dk_data_t *e = t_data(extra, m);
                dk_data_t *c = rnd(&seed) % 2 ? concat(d, e) : concat(e, d);
                unsigned char *nref = malloc(n + m + 1);
                if (c != NULL && dk_data_get_size(c) == n + m) {
                    /* Which order was it? Compare both candidates. */
                    unsigned char *got = malloc(n + m + 1);
                    dk_data_apply(c, got, collect);
                    memcpy(nref, ref, n);
                    memcpy(nref + n, extra, m);
                    if (memcmp(got, nref, n + m) != 0) {
                        memcpy(nref, extra, m);
                        memcpy(nref + m, ref, n);
                    }
                    free(got);
                }
                check_contents(c, nref, n + m);
                dk_release(e);
                dk_release(d);
                free(ref);
                free(extra);
                d = c;
                ref = nref;
                n += m;
            } else {
                size_t off = n ? rnd(&seed) % (n + 5) : 0;
                size_t len = rnd(&seed) % (n + 5);
                dk_data_t *s = subrange(d, off, len);
                size_t want = off >= n ? 0 : (len > n - off ? n - off : len);
                check_contents(s, ref + (off < n ? off : 0), want);
                if (want > 0) {
                    size_t loc = rnd(&seed) % want, roff;
                    dk_data_t *r = region(s, loc, &roff);
                    CHECK(roff <= loc);
                    CHECK(loc < roff + dk_data_get_size(r));
                    check_contents(r, ref + off + roff, dk_data_get_size(r));
                    dk_release(r);
                }
                dk_release(d);
                unsigned char *nref = malloc(want + 1);
                memcpy(nref, ref + (off < n ? off : 0), want);
                free(ref);
                ref = nref;
                n = want;
                d = s;
            }
        }
        dk_release(d);
        free(ref);
    }
}
