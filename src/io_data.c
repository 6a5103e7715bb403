/*
 * Data-object variants of the I/O calls (dk/io.h), for libdispatch's
 * dispatch_io_* and dispatch_read/dispatch_write: small adapters that turn
 * byte deliveries into data objects and back.
 */
#include "internal.h"

#include "dk/io.h"

#include <errno.h>

struct adapter {
    void *ctx;
    dk_io_data_handler_t io_handler;
    void (*simple)(void *ctx, dk_data_t *data, int error);
};

static struct adapter *
adapter_new(void *ctx, dk_io_data_handler_t io_handler,
            void (*simple)(void *ctx, dk_data_t *data, int error))
{
    struct adapter *a = malloc(sizeof *a);
    if (a != NULL) {
        a->ctx = ctx;
        a->io_handler = io_handler;
        a->simple = simple;
    }
    return a;
}

static dk_data_t *
wrap(const void *bytes, size_t len)
{
    dk_data_t *d;
    if (dk_data_create(bytes, len, &d) < 0) {
        return dk_data_empty(); /* out of memory: no data */
    }
    return d;
}

static void
on_io(void *p, bool done, const void *bytes, size_t len, int error)
{
    struct adapter *a = p;
    dk_data_t *d = wrap(bytes, len);
    a->io_handler(a->ctx, done, d, error);
    dk_release(d);
    if (done) {
        free(a);
    }
}

static void
on_simple(void *p, const void *bytes, size_t len, int error)
{
    struct adapter *a = p;
    dk_data_t *d = wrap(bytes, len);
    a->simple(a->ctx, d, error);
    dk_release(d);
    free(a);
}

int
dk_io_read_data(dk_io_t *io, off_t offset, size_t length, dk_queue_t *q,
                void *ctx, dk_io_data_handler_t handler)
{
    struct adapter *a = adapter_new(ctx, handler, NULL);
    if (a == NULL) {
        return -ENOMEM;
    }
    int rc = dk_io_read(io, offset, length, q, a, on_io);
    if (rc < 0) {
        free(a);
    }
    return rc;
}

/* dk_io_write_data (io not NULL) and dk_write_data: the data flattened
 * (no copy when it has one region) and written with a's handler. */
static int
write_data(dk_io_t *io, int fd, off_t offset, dk_data_t *data, dk_queue_t *q,
           struct adapter *a)
{
    dk_data_t *map;
    const void *bytes;
    size_t len;
    int rc = a == NULL ? -ENOMEM : dk_data_create_map(data, &bytes, &len, &map);
    if (rc < 0) {
        free(a);
        return rc;
    }
    rc = io != NULL ? dk_io_write(io, offset, bytes, len, q, a, on_io)
                    : dk_write_f(fd, bytes, len, q, a, on_simple);
    dk_release(map); /* the write kept its own copy */
    if (rc < 0) {
        free(a);
    }
    return rc;
}

int
dk_io_write_data(dk_io_t *io, off_t offset, dk_data_t *data, dk_queue_t *q,
                 void *ctx, dk_io_data_handler_t handler)
{
    return write_data(io, -1, offset, data, q, adapter_new(ctx, handler, NULL));
}

int
dk_read_data(int fd, size_t length, dk_queue_t *q, void *ctx,
             void (*handler)(void *ctx, dk_data_t *data, int error))
{
    struct adapter *a = adapter_new(ctx, NULL, handler);
    if (a == NULL) {
        return -ENOMEM;
    }
    int rc = dk_read_f(fd, length, q, a, on_simple);
    if (rc < 0) {
        free(a);
    }
    return rc;
}

int
dk_write_data(int fd, dk_data_t *data, dk_queue_t *q, void *ctx,
              void (*handler)(void *ctx, dk_data_t *remaining, int error))
{
    return write_data(NULL, fd, 0, data, q, adapter_new(ctx, NULL, handler));
}
