/*
 * Fuzz target: data objects under a byte-driven program of create,
 * create_nocopy, concat, subrange, copy_region, apply and map at random
 * offsets and lengths (small, at the edges, and near SIZE_MAX), every
 * result compared byte for byte with a flat buffer that models it. Eight
 * slots hold objects; each op reads its slots and arguments from the
 * input. Every backing buffer given to create_nocopy must be destroyed
 * exactly once by the end (ASan's leak check sees the rest).
 */
#include "fuzz.h"

#include <errno.h>

#include "dk/data.h"

#define NSLOTS 8
#define MAX_SIZE (1u << 16) /* model bytes per object */
#define MAX_REGIONS 2048    /* regions per object */
#define MAX_OPS 512

struct slot {
    dk_data_t *d;
    uint8_t *model; /* NULL when len == 0 */
    size_t len;
};

struct prog {
    struct slot s[NSLOTS];
    size_t nocopy_made;
    size_t nocopy_freed;
};

static void
nocopy_free(void *ctx, void *buffer)
{
    struct prog *g = ctx;
    g->nocopy_freed++;
    free(buffer);
}

struct flat {
    uint8_t *out;
    size_t size;
    size_t next; /* offset the next region must start at */
    size_t regions;
    size_t stop_after; /* 0: never stop */
};

static bool
flatten(void *ctx, size_t offset, const void *bytes, size_t len)
{
    struct flat *f = ctx;
    FUZZ_CHECK(offset == f->next);
    FUZZ_CHECK(len > 0);
    FUZZ_CHECK(len <= f->size - offset);
    memcpy(f->out + offset, bytes, len);
    f->next += len;
    f->regions++;
    return f->stop_after == 0 || f->regions < f->stop_after;
}

/* The object's bytes, size and region count agree with the model. */
static void
check_slot(const struct slot *s)
{
    size_t n = dk_data_get_size(s->d);
    size_t regions = dk_data_region_count(s->d);
    FUZZ_CHECK(n == s->len);
    FUZZ_CHECK((n == 0) == (regions == 0));
    FUZZ_CHECK(regions <= n);
    if (n == 0) {
        FUZZ_CHECK(s->d == dk_data_empty());
        return;
    }
    uint8_t *buf = malloc(n);
    FUZZ_CHECK(buf != NULL);
    struct flat f = {buf, n, 0, 0, 0};
    FUZZ_CHECK(dk_data_apply(s->d, &f, flatten));
    FUZZ_CHECK(f.next == n);
    FUZZ_CHECK(f.regions == regions);
    FUZZ_CHECK(memcmp(buf, s->model, n) == 0);
    free(buf);
}

/* Replace slot i with d, whose contents are model[0, len) (copied). */
static void
put(struct prog *g, int i, dk_data_t *d, const uint8_t *model, size_t len)
{
    FUZZ_CHECK(d != NULL);
    uint8_t *m = NULL;
    if (len > 0) {
        m = malloc(len);
        FUZZ_CHECK(m != NULL);
        memcpy(m, model, len);
    }
    dk_release(g->s[i].d);
    free(g->s[i].model);
    g->s[i] = (struct slot){d, m, len};
    check_slot(&g->s[i]);
}

/* An offset or length as a program would pass one: small, around the
 * object's size, or near SIZE_MAX. */
static size_t
pick_size(fuzz_in_t *in, size_t len)
{
    uint8_t how = fuzz_u8(in);
    switch (how % 4) {
    case 0:
        return fuzz_u8(in);
    case 1:
        return len + (size_t)(int8_t)fuzz_u8(in);
    case 2:
        return SIZE_MAX - fuzz_u8(in);
    default:
        return len == 0 ? fuzz_u16(in) : fuzz_u16(in) % (len + 1);
    }
}

static void
op_create(struct prog *g, fuzz_in_t *in, int dst, bool nocopy, bool plain)
{
    size_t len = fuzz_u16(in) % 1024;
    uint8_t *bytes = malloc(len == 0 ? 1 : len);
    FUZZ_CHECK(bytes != NULL);
    fuzz_bytes(in, bytes, len);
    dk_data_t *d;
    if (nocopy) {
        /* The object owns the buffer (size 0 frees it at once): the
         * model needs a copy of its own. */
        uint8_t *model = malloc(len == 0 ? 1 : len);
        FUZZ_CHECK(model != NULL);
        memcpy(model, bytes, len);
        if (plain) {
            /* No destructor: the object free()s the buffer. */
            FUZZ_CHECK(dk_data_create_nocopy(bytes, len, NULL, NULL, &d) == 0);
        } else {
            g->nocopy_made++;
            FUZZ_CHECK(dk_data_create_nocopy(bytes, len, nocopy_free, g, &d) ==
                       0);
        }
        put(g, dst, d, model, len);
        free(model);
        return;
    }
    FUZZ_CHECK(dk_data_create(bytes, len, &d) == 0);
    put(g, dst, d, bytes, len);
    free(bytes);
}

static void
op_concat(struct prog *g, int dst, int a, int b)
{
    const struct slot *x = &g->s[a], *y = &g->s[b];
    if (x->len + y->len > MAX_SIZE ||
        dk_data_region_count(x->d) + dk_data_region_count(y->d) >
            MAX_REGIONS) {
        return;
    }
    size_t len = x->len + y->len;
    uint8_t *m = malloc(len == 0 ? 1 : len);
    FUZZ_CHECK(m != NULL);
    if (x->len > 0) {
        memcpy(m, x->model, x->len);
    }
    if (y->len > 0) {
        memcpy(m + x->len, y->model, y->len);
    }
    dk_data_t *d;
    FUZZ_CHECK(dk_data_create_concat(x->d, y->d, &d) == 0);
    if (x->len == 0) {
        FUZZ_CHECK(d == y->d);
    } else if (y->len == 0) {
        FUZZ_CHECK(d == x->d);
    } else {
        size_t nr = dk_data_region_count(d);
        FUZZ_CHECK(nr ==
                   dk_data_region_count(x->d) + dk_data_region_count(y->d));
    }
    put(g, dst, d, m, len);
    free(m);
}

static void
op_subrange(struct prog *g, fuzz_in_t *in, int dst, int src)
{
    const struct slot *x = &g->s[src];
    size_t off = pick_size(in, x->len);
    size_t len = pick_size(in, x->len);
    size_t want_off = off, want_len = len;
    if (off >= x->len || len == 0) {
        want_off = 0;
        want_len = 0;
    } else if (len > x->len - off) {
        want_len = x->len - off;
    }
    dk_data_t *d;
    FUZZ_CHECK(dk_data_create_subrange(x->d, off, len, &d) == 0);
    if (want_len > 0 && want_len == x->len) {
        FUZZ_CHECK(d == x->d);
    }
    if (want_len > 0) {
        FUZZ_CHECK(dk_data_region_count(d) <= dk_data_region_count(x->d));
    }
    uint8_t *m = want_len > 0 ? x->model + want_off : NULL;
    /* put() may free the source's model: copy the piece first. */
    uint8_t *copy = malloc(want_len == 0 ? 1 : want_len);
    FUZZ_CHECK(copy != NULL);
    if (want_len > 0) {
        memcpy(copy, m, want_len);
    }
    put(g, dst, d, copy, want_len);
    free(copy);
}

static void
op_copy_region(struct prog *g, fuzz_in_t *in, int dst, int src)
{
    const struct slot *x = &g->s[src];
    size_t loc = pick_size(in, x->len);
    size_t offset = 12345;
    dk_data_t *d;
    FUZZ_CHECK(dk_data_copy_region(x->d, loc, &offset, &d) == 0);
    if (loc >= x->len) {
        FUZZ_CHECK(d == dk_data_empty());
        FUZZ_CHECK(offset == x->len);
        dk_release(d);
        return;
    }
    size_t n = dk_data_get_size(d);
    FUZZ_CHECK(dk_data_region_count(d) == 1);
    FUZZ_CHECK(offset <= loc && loc - offset < n);
    FUZZ_CHECK(n <= x->len - offset);
    uint8_t *copy = malloc(n);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, x->model + offset, n);
    put(g, dst, d, copy, n);
    free(copy);
}

static void
op_apply(struct prog *g, fuzz_in_t *in, int src)
{
    const struct slot *x = &g->s[src];
    size_t regions = dk_data_region_count(x->d);
    size_t stop = fuzz_u8(in) % 8;
    uint8_t *buf = malloc(x->len == 0 ? 1 : x->len);
    FUZZ_CHECK(buf != NULL);
    struct flat f = {buf, x->len, 0, 0, stop};
    bool done = dk_data_apply(x->d, &f, flatten);
    bool stopped = stop != 0 && stop <= regions;
    FUZZ_CHECK(done == !stopped);
    FUZZ_CHECK(f.regions == (stopped ? stop : regions));
    if (f.next > 0) {
        FUZZ_CHECK(memcmp(buf, x->model, f.next) == 0);
    }
    free(buf);
}

static void
op_map(struct prog *g, int dst, int src)
{
    const struct slot *x = &g->s[src];
    const void *bytes = NULL;
    size_t size = 12345;
    dk_data_t *d;
    FUZZ_CHECK(dk_data_create_map(x->d, &bytes, &size, &d) == 0);
    FUZZ_CHECK(size == x->len);
    FUZZ_CHECK(bytes != NULL);
    FUZZ_CHECK(dk_data_region_count(d) <= 1);
    if (size > 0) {
        FUZZ_CHECK(memcmp(bytes, x->model, size) == 0);
    }
    uint8_t *copy = malloc(size == 0 ? 1 : size);
    FUZZ_CHECK(copy != NULL);
    if (size > 0) {
        memcpy(copy, bytes, size);
    }
    /* The view stays valid while d lives, even once the source goes. */
    put(g, dst, d, copy, size);
    free(copy);
}

static void
op_retain_release(struct prog *g, int src)
{
    dk_data_t *d = g->s[src].d;
    dk_retain(d);
    dk_retain(d);
    dk_release(d);
    dk_release(d);
    check_slot(&g->s[src]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct prog g;
    memset(&g, 0, sizeof g);
    for (int i = 0; i < NSLOTS; i++) {
        g.s[i].d = dk_data_empty();
    }
    fuzz_in_t in = {data, size};
    for (int op = 0; op < MAX_OPS && fuzz_more(&in); op++) {
        uint8_t code = fuzz_u8(&in);
        uint8_t regs = fuzz_u8(&in);
        int dst = regs % NSLOTS, src = (regs / NSLOTS) % NSLOTS;
        switch (code % 10) {
        case 0:
            op_create(&g, &in, dst, false, false);
            break;
        case 1:
            op_create(&g, &in, dst, true, code & 0x80);
            break;
        case 2:
            op_concat(&g, dst, src, fuzz_u8(&in) % NSLOTS);
            break;
        case 3:
            op_subrange(&g, &in, dst, src);
            break;
        case 4:
            op_copy_region(&g, &in, dst, src);
            break;
        case 5:
            op_apply(&g, &in, src);
            break;
        case 6:
            op_map(&g, dst, src);
            break;
        case 7:
            put(&g, dst, dk_data_empty(), NULL, 0);
            break;
        case 8:
            op_retain_release(&g, src);
            break;
        default:
            /* An object concatenated with itself. */
            op_concat(&g, dst, src, src);
            break;
        }
    }
    for (int i = 0; i < NSLOTS; i++) {
        dk_release(g.s[i].d);
        free(g.s[i].model);
    }
    FUZZ_CHECK(g.nocopy_freed == g.nocopy_made);
    return 0;
}
