/*
 * Asynchronous I/O on file descriptors, never blocking a worker: an fd
 * that is not a regular file is read or written only once a read or write
 * source says it is ready, and the operation waits for that without a
 * thread.
 *
 * dk_read_f reads once (up to `length` bytes; for a regular file, until
 * `length` or end of file) as soon as data is available. dk_write_f writes
 * all of `len` bytes, continuing partial writes as the fd becomes
 * writable. Their handlers run once on `q`.
 *
 * A channel (dk_io_t) runs its operations one after another in submission
 * order. A read delivers the data in chunks of at most the high-water mark
 * and at least the low-water mark (except the last), each as one handler
 * call; the final call has done = true. Handler calls of one operation run
 * in order and never concurrently. A barrier runs after every earlier
 * operation has finished and before any later one starts, even once the
 * channel is closed with DK_IO_STOP (as in libdispatch), which ends pending
 * reads and writes with ECANCELED; the cleanup handler
 * runs once, after the last operation, with 0 or the first error. The fd
 * is never closed by the channel.
 */
#ifndef DK_IO_H
#define DK_IO_H

#include <sys/types.h>

#include "dk/data.h"
#include "dk/queue.h"

DK_BEGIN_DECLS

/* error is 0 or an errno value. */
typedef void (*dk_read_handler_t)(void *ctx, const void *data, size_t len,
                                  int error);
/* remaining: the bytes not written (empty on success). */
typedef void (*dk_write_handler_t)(void *ctx, const void *remaining,
                                   size_t len, int error);

/* Returns 0, -EBADF (fd not open) or -ENOMEM. The data passed to a handler
 * is valid only during the call. q NULL: the default global queue. */
DK_EXPORT int dk_read_f(int fd, size_t length, dk_queue_t *q, void *ctx,
                        dk_read_handler_t handler) DK_WARN_UNUSED;
DK_EXPORT int dk_write_f(int fd, const void *buf, size_t len, dk_queue_t *q,
                         void *ctx, dk_write_handler_t handler) DK_WARN_UNUSED;

typedef struct dk_io_s dk_io_t;

#define DK_IO_STREAM 0
#define DK_IO_RANDOM 1
#define DK_IO_STOP 0x1u
#define DK_IO_STRICT_INTERVAL 0x1u

/* Called with done, the data (read: bytes read; write: bytes remaining),
 * and 0 or an errno value. */
typedef void (*dk_io_handler_t)(void *ctx, bool done, const void *data,
                                size_t len, int error);

/* Create a channel in *out. Returns 0, -EBADF, -EINVAL (type), -ESPIPE
 * (RANDOM on an fd that cannot seek) or -ENOMEM; *out is NULL on failure.
 * cleanup(cleanup_ctx, error) runs on q when the channel is closed and its
 * operations have finished. */
DK_EXPORT int dk_io_create(int type, int fd, dk_queue_t *q, void *cleanup_ctx,
                           void (*cleanup)(void *ctx, int error),
                           dk_io_t **out) DK_WARN_UNUSED;
/* Operations. `offset` is used by RANDOM channels only (relative to the
 * file position when the channel was created). Returns 0, -EPIPE if the
 * channel is closed, -ENOMEM. */
DK_EXPORT int dk_io_read(dk_io_t *io, off_t offset, size_t length,
                         dk_queue_t *q, void *ctx,
                         dk_io_handler_t handler) DK_WARN_UNUSED;
DK_EXPORT int dk_io_write(dk_io_t *io, off_t offset, const void *data,
                          size_t len, dk_queue_t *q, void *ctx,
                          dk_io_handler_t handler) DK_WARN_UNUSED;
DK_EXPORT int dk_io_barrier_f(dk_io_t *io, void *ctx,
                              dk_function_t fn) DK_WARN_UNUSED;
DK_EXPORT void dk_io_close(dk_io_t *io, unsigned flags);
DK_EXPORT bool dk_io_is_closed(const dk_io_t *io);
DK_EXPORT int dk_io_get_fd(const dk_io_t *io);
DK_EXPORT void dk_io_set_high_water(dk_io_t *io, size_t size);
DK_EXPORT void dk_io_set_low_water(dk_io_t *io, size_t size);
/* Deliver partial data (below the low-water mark) at least every
 * interval_ns. */
DK_EXPORT void dk_io_set_interval(dk_io_t *io, uint64_t interval_ns,
                                  unsigned flags);
/*
 * Delivery buffers. By default the data passed to a read handler is valid
 * only during the call. With an allocator, every buffer passed to a
 * handler comes from alloc(actx, size) (size >= the data's length), reads
 * go straight into it when they can, and the handler owns it: no copy is
 * made between the kernel and the handler. free(actx, buf) is called for
 * buffers that are not delivered. When alloc returns NULL, the handler is
 * called with no buffer (data NULL, length 0) and ENOMEM. Set it before
 * the first read.
 */
DK_EXPORT void dk_io_set_allocator(dk_io_t *io,
                                   void *(*alloc)(void *actx, size_t size),
                                   void (*free_fn)(void *actx, void *buf),
                                   void *actx);
/*
 * The same operations with data objects instead of byte pointers (as
 * libdispatch's dispatch_io_* and dispatch_read/write): the handler gets a
 * data object it may retain (a read's chunk; a write's unwritten rest).
 * Data to write is copied when the operation is submitted.
 */
typedef void (*dk_io_data_handler_t)(void *ctx, bool done, dk_data_t *data,
                                     int error);
DK_EXPORT int dk_io_read_data(dk_io_t *io, off_t offset, size_t length,
                              dk_queue_t *q, void *ctx,
                              dk_io_data_handler_t handler) DK_WARN_UNUSED;
DK_EXPORT int dk_io_write_data(dk_io_t *io, off_t offset, dk_data_t *data,
                               dk_queue_t *q, void *ctx,
                               dk_io_data_handler_t handler) DK_WARN_UNUSED;
DK_EXPORT int dk_read_data(int fd, size_t length, dk_queue_t *q, void *ctx,
                           void (*handler)(void *ctx, dk_data_t *data,
                                           int error)) DK_WARN_UNUSED;
DK_EXPORT int dk_write_data(int fd, dk_data_t *data, dk_queue_t *q, void *ctx,
                            void (*handler)(void *ctx, dk_data_t *remaining,
                                            int error)) DK_WARN_UNUSED;
/* A channel is a dk object: dk_retain/dk_release and the dk_object_*
 * context and finalizer apply (the finalizer runs on the cleanup queue).
 * These two are dk_retain and dk_release. */
DK_EXPORT void dk_io_retain(dk_io_t *io);
DK_EXPORT void dk_io_release(dk_io_t *io);

DK_END_DECLS

#endif /* DK_IO_H */
