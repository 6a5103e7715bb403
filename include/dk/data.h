/*
 * Immutable data objects (GCD's dispatch_data). A data object is a list of
 * regions, each a slice of a reference-counted backing buffer; concat and
 * subrange build new lists over the same buffers, so they never copy the
 * bytes. Data objects are dk objects: dk_retain/dk_release apply.
 */
#ifndef DK_DATA_H
#define DK_DATA_H

#include "dk/base.h"

DK_BEGIN_DECLS

typedef struct dk_data_s dk_data_t;

/* The empty data object (immortal). */
DK_EXPORT dk_data_t *dk_data_empty(void);

/*
 * Every constructor below writes the new object (or a new reference to an
 * existing one) to *out and returns 0, or returns -ENOMEM with *out NULL.
 */

/* Copy `size` bytes. size 0 gives the empty object. */
DK_EXPORT int dk_data_create(const void *bytes, size_t size,
                             dk_data_t **out) DK_WARN_UNUSED;

/* Take `buffer` without copying; destructor(ctx, buffer) runs when the last
 * data object using it goes away (NULL: free(buffer)). On -ENOMEM the
 * buffer stays the caller's. */
DK_EXPORT int dk_data_create_nocopy(void *buffer, size_t size,
                                    void (*destructor)(void *ctx,
                                                       void *buffer),
                                    void *ctx, dk_data_t **out) DK_WARN_UNUSED;

/* Take a buffer mapped with mmap(2): munmap(buffer, size) runs when the
 * last data object using it goes away. On -ENOMEM the buffer stays
 * mapped. */
DK_EXPORT int dk_data_create_mapped(void *buffer, size_t size,
                                    dk_data_t **out) DK_WARN_UNUSED;

DK_EXPORT size_t dk_data_get_size(const dk_data_t *d);
/* Number of regions (contiguous pieces). */
DK_EXPORT size_t dk_data_region_count(const dk_data_t *d);

/* a followed by b, sharing both's buffers. */
DK_EXPORT int dk_data_create_concat(dk_data_t *a, dk_data_t *b,
                                    dk_data_t **out) DK_WARN_UNUSED;

/* [offset, offset + length) clipped to the data (GCD semantics: an offset at
 * or past the end, or length 0, gives the empty object). */
DK_EXPORT int dk_data_create_subrange(dk_data_t *d, size_t offset,
                                      size_t length,
                                      dk_data_t **out) DK_WARN_UNUSED;

/* The region containing `location` as its own data object, with the
 * region's start offset within d in *offset. Past the end: the empty object
 * and *offset = size. */
DK_EXPORT int dk_data_copy_region(dk_data_t *d, size_t location,
                                  size_t *offset,
                                  dk_data_t **out) DK_WARN_UNUSED;

/* Call fn once per region, in order: fn(ctx, region offset within d, bytes,
 * length); stop when it returns false. Returns false if it stopped. */
DK_EXPORT bool dk_data_apply(dk_data_t *d, void *ctx,
                             bool (*fn)(void *ctx, size_t offset,
                                        const void *bytes, size_t len));

/* A contiguous view: a data object with one region (d itself, retained, if
 * it has one; else a copy), its bytes in *bytes and size in *size. */
DK_EXPORT int dk_data_create_map(dk_data_t *d, const void **bytes,
                                 size_t *size, dk_data_t **out) DK_WARN_UNUSED;

DK_END_DECLS

#endif /* DK_DATA_H */
