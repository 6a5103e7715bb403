/*
 * Data objects: an immutable list of regions over reference-counted
 * backing buffers. Building a new object copies the region list (pointers
 * and counts), never the bytes; only dk_data_create copies its input, and
 * dk_data_create_map copies when asked to flatten several regions. The
 * static data_* functions return NULL for out of memory, the only failure;
 * the public dk_data_* constructors at the end turn that into -ENOMEM.
 */
#include "internal.h"

#include "dk/data.h"

#include <errno.h>
#include <string.h>

struct backing {
    uint32_t refcnt;
    void *ptr;
    void (*destructor)(void *ctx, void *ptr);
    void *ctx;
};

struct region {
    struct backing *buf;
    size_t offset; /* within the backing buffer */
    size_t len;
};

struct dk_data_s {
    struct dk__object obj;
    size_t size;
    size_t nregions;
    struct region regions[];
};

static struct dk_data_s empty = {
    .obj = {DK_REFCNT_IMMORTAL, DK_KIND_DATA, NULL, NULL},
};

dk_data_t *
dk_data_empty(void)
{
    return &empty;
}

static void
backing_retain(struct backing *b)
{
    dk__atomic_add_relaxed(&b->refcnt, 1);
}

static void
backing_release(struct backing *b)
{
    if (dk__atomic_sub_acq_rel(&b->refcnt, 1) != 1) {
        return;
    }
    if (b->destructor != NULL) {
        b->destructor(b->ctx, b->ptr);
    } else {
        free(b->ptr);
    }
    free(b);
}

static dk_data_t *
data_alloc(size_t nregions)
{
    if (nregions > (SIZE_MAX - sizeof(dk_data_t)) / sizeof(struct region)) {
        return NULL;
    }
    dk_data_t *d = malloc(sizeof *d + nregions * sizeof(struct region));
    if (d == NULL) {
        return NULL;
    }
    dk__object_init(&d->obj, DK_KIND_DATA);
    d->size = 0;
    d->nregions = nregions;
    return d;
}

/* The data object's part of the object model (object.c). A finalizer
 * runs on the default global queue, as libdispatch's does. */
static void
data_dispose(struct dk__object *o)
{
    dk_data_t *d = (dk_data_t *)o;
    for (size_t i = 0; i < d->nregions; i++) {
        backing_release(d->regions[i].buf);
    }
    free(d);
}

static int
data_describe(const struct dk__object *o, const char *refcnt, char *buf,
              size_t len)
{
    const dk_data_t *d = (const dk_data_t *)o;
    return snprintf(buf, len, "data[%p] = { refcnt = %s, size = %zu }",
                    (const void *)d, refcnt, d->size);
}

const struct dk__vtable dk__data_vtable = {
    .kind = DK_KIND_DATA,
    .name = "data",
    .finalize = dk__finalize_on_root,
    .dispose = data_dispose,
    .describe = data_describe,
};

static dk_data_t *
data_create_nocopy(void *buffer, size_t size,
                   void (*destructor)(void *ctx, void *buffer), void *ctx)
{
    if (size == 0) {
        if (destructor != NULL) {
            destructor(ctx, buffer);
        } else {
            free(buffer);
        }
        return &empty;
    }
    struct backing *b = malloc(sizeof *b);
    dk_data_t *d = b != NULL ? data_alloc(1) : NULL;
    if (d == NULL) {
        free(b);
        return NULL;
    }
    *b = (struct backing){1, buffer, destructor, ctx};
    d->size = size;
    d->regions[0] = (struct region){b, 0, size};
    return d;
}

static void
unmap_buffer(void *ctx, void *buffer)
{
    dk__os_munmap(buffer, (size_t)(uintptr_t)ctx);
}

static dk_data_t *
data_create_mapped(void *buffer, size_t size)
{
    return data_create_nocopy(buffer, size, unmap_buffer,
                              (void *)(uintptr_t)size);
}

static dk_data_t *
data_create(const void *bytes, size_t size)
{
    if (size == 0) {
        return &empty;
    }
    void *copy = malloc(size);
    if (copy == NULL) {
        return NULL;
    }
    memcpy(copy, bytes, size);
    dk_data_t *d = data_create_nocopy(copy, size, NULL, NULL);
    if (d == NULL) {
        free(copy);
    }
    return d;
}

size_t
dk_data_get_size(const dk_data_t *d)
{
    return d->size;
}

size_t
dk_data_region_count(const dk_data_t *d)
{
    return d->nregions;
}

static dk_data_t *
data_create_concat(dk_data_t *a, dk_data_t *b)
{
    if (a->size == 0) {
        dk_retain(b);
        return b;
    }
    if (b->size == 0) {
        dk_retain(a);
        return a;
    }
    dk_data_t *d = data_alloc(a->nregions + b->nregions);
    if (d == NULL) {
        return NULL;
    }
    memcpy(d->regions, a->regions, a->nregions * sizeof(struct region));
    memcpy(d->regions + a->nregions, b->regions,
           b->nregions * sizeof(struct region));
    for (size_t i = 0; i < d->nregions; i++) {
        backing_retain(d->regions[i].buf);
    }
    d->size = a->size + b->size;
    return d;
}

static dk_data_t *
data_create_subrange(dk_data_t *d, size_t offset, size_t length)
{
    if (offset >= d->size || length == 0) {
        return &empty;
    }
    if (length > d->size - offset) {
        length = d->size - offset;
    }
    if (offset == 0 && length == d->size) {
        dk_retain(d);
        return d;
    }
    /* Find the first and last regions touched. */
    size_t first = 0, pos = 0;
    while (pos + d->regions[first].len <= offset) {
        pos += d->regions[first].len;
        first++;
    }
    size_t skip = offset - pos;
    size_t last = first, left = length + skip;
    while (left > d->regions[last].len) {
        left -= d->regions[last].len;
        last++;
    }
    dk_data_t *r = data_alloc(last - first + 1);
    if (r == NULL) {
        return NULL;
    }
    for (size_t i = first; i <= last; i++) {
        struct region g = d->regions[i];
        if (i == first) {
            g.offset += skip;
            g.len -= skip;
        }
        if (i == last) {
            g.len = (i == first ? left - skip : left);
        }
        r->regions[i - first] = g;
        backing_retain(g.buf);
    }
    r->size = length;
    return r;
}

static dk_data_t *
data_copy_region(dk_data_t *d, size_t location, size_t *offset)
{
    if (location >= d->size) {
        *offset = d->size;
        return &empty;
    }
    size_t pos = 0;
    for (size_t i = 0; i < d->nregions; i++) {
        if (location < pos + d->regions[i].len) {
            *offset = pos;
            if (d->nregions == 1) {
                dk_retain(d);
                return d;
            }
            dk_data_t *r = data_alloc(1);
            if (r == NULL) {
                return NULL;
            }
            r->regions[0] = d->regions[i];
            backing_retain(r->regions[0].buf);
            r->size = d->regions[i].len;
            return r;
        }
        pos += d->regions[i].len;
    }
    DK_INTERNAL_CRASH("data region sizes do not add up");
    return NULL;
}

bool
dk_data_apply(dk_data_t *d, void *ctx,
              bool (*fn)(void *ctx, size_t offset, const void *bytes,
                         size_t len))
{
    size_t pos = 0;
    for (size_t i = 0; i < d->nregions; i++) {
        const struct region *g = &d->regions[i];
        if (!fn(ctx, pos, (const char *)g->buf->ptr + g->offset, g->len)) {
            return false;
        }
        pos += g->len;
    }
    return true;
}

static dk_data_t *
data_create_map(dk_data_t *d, const void **bytes, size_t *size)
{
    *size = d->size;
    if (d->nregions <= 1) {
        dk_retain(d);
        *bytes = d->nregions == 1 ? (const char *)d->regions[0].buf->ptr +
                                        d->regions[0].offset
                                  : (const void *)"";
        return d;
    }
    char *flat = malloc(d->size);
    if (flat == NULL) {
        return NULL;
    }
    size_t pos = 0;
    for (size_t i = 0; i < d->nregions; i++) {
        const struct region *g = &d->regions[i];
        memcpy(flat + pos, (const char *)g->buf->ptr + g->offset, g->len);
        pos += g->len;
    }
    dk_data_t *m = data_create_nocopy(flat, d->size, NULL, NULL);
    if (m == NULL) {
        free(flat);
        return NULL;
    }
    *bytes = flat;
    return m;
}

/* ---- the public constructors: 0 or -ENOMEM, the object in *out ------- */

int
dk_data_create(const void *bytes, size_t size, dk_data_t **out)
{
    *out = data_create(bytes, size);
    return *out != NULL ? 0 : -ENOMEM;
}

int
dk_data_create_nocopy(void *buffer, size_t size,
                      void (*destructor)(void *ctx, void *buffer), void *ctx,
                      dk_data_t **out)
{
    *out = data_create_nocopy(buffer, size, destructor, ctx);
    return *out != NULL ? 0 : -ENOMEM;
}

int
dk_data_create_mapped(void *buffer, size_t size, dk_data_t **out)
{
    *out = data_create_mapped(buffer, size);
    return *out != NULL ? 0 : -ENOMEM;
}

int
dk_data_create_concat(dk_data_t *a, dk_data_t *b, dk_data_t **out)
{
    *out = data_create_concat(a, b);
    return *out != NULL ? 0 : -ENOMEM;
}

int
dk_data_create_subrange(dk_data_t *d, size_t offset, size_t length,
                        dk_data_t **out)
{
    *out = data_create_subrange(d, offset, length);
    return *out != NULL ? 0 : -ENOMEM;
}

int
dk_data_copy_region(dk_data_t *d, size_t location, size_t *offset,
                    dk_data_t **out)
{
    *out = data_copy_region(d, location, offset);
    return *out != NULL ? 0 : -ENOMEM;
}

int
dk_data_create_map(dk_data_t *d, const void **bytes, size_t *size,
                   dk_data_t **out)
{
    *out = data_create_map(d, bytes, size);
    return *out != NULL ? 0 : -ENOMEM;
}
