/*
 * ZeroBuffer: one-way zero-copy frame IPC through a shared memory ring,
 * binary compatible with zerobuffer-ipc (Python) and its C++ and C#
 * siblings. A Reader creates and owns a buffer called NAME; one Writer
 * connects to it. The shared objects are
 *   /dev/shm/NAME             [OIEB 128 B][metadata M][payload ring P]
 *   /dev/shm/sem.sem-w-NAME   POSIX semaphore: one post per frame written
 *   /dev/shm/sem.sem-r-NAME   POSIX semaphore: one post per space release
 *   /tmp/zerobuffer/NAME.lock flock'ed by the reader for its whole life
 * M and P are multiples of 64. A frame is a 16-byte header {u64 size,
 * u64 sequence} followed by its bytes, unaligned; {0, 0} is a wrap
 * marker. Everything is little-endian. docs/zerobuffer.md has the whole
 * protocol and the rules we follow where the peers have defects.
 *
 * Threads: a reader may be used from several threads (reads and releases
 * are serialised inside); a writer must be used by one thread at a time.
 * Time is an absolute CLOCK_MONOTONIC deadline in ns (dk_now() + timeout),
 * DK_ZB_FOREVER for none; 0 polls once.
 *
 * Every offset and size read from the segment is bounds-checked before
 * use: a hostile or corrupted segment gives -EPROTO (or -EILSEQ), never an
 * access outside the mapping. A segment truncated under a live mapping
 * (by any process allowed to write it) does not raise SIGBUS: the lost
 * pages are replaced with zeros and every later read, acquire or commit
 * gives -EPROTO. Creation allocates the segment's pages, so a full
 * /dev/shm gives -ENOSPC there.
 */
#ifndef DK_ZEROBUFFER_H
#define DK_ZEROBUFFER_H

#include "dk/base.h"

DK_BEGIN_DECLS

#define DK_ZB_FOREVER DK_TIME_FOREVER /* the older name */
#define DK_ZB_OIEB_SIZE 128u
#define DK_ZB_HEADER_SIZE 16u
#define DK_ZB_ALIGN 64u
/* Longest NAME: sem-w-NAME must fit glibc's NAME_MAX with "sem." added. */
#define DK_ZB_NAME_MAX 240u
/* Largest payload ring or metadata block we create (1 TiB). */
#define DK_ZB_SIZE_MAX (1ull << 40)
/* File modes: ours by default; the peers' for mixed-user interop. */
#define DK_ZB_MODE_PRIVATE 0600u
#define DK_ZB_MODE_PEERS 0666u

/* The Operation Info Exchange Block at offset 0 (the wire layout). */
typedef struct dk_zb_oieb_s {
    uint32_t oieb_size; /* 128 */
    uint8_t version_major;
    uint8_t version_minor;
    uint8_t version_patch;
    uint8_t version_reserved;
    uint64_t metadata_size;          /* M, set by the reader */
    uint64_t metadata_free_bytes;    /* writer */
    uint64_t metadata_written_bytes; /* writer: 8 + length, 0 = none */
    uint64_t payload_size;           /* P, set by the reader */
    uint64_t payload_free_bytes;     /* both sides, atomic add/sub only */
    uint64_t payload_write_pos;      /* writer */
    uint64_t payload_read_pos;       /* reader */
    uint64_t payload_written_count;  /* writer: frames + markers */
    uint64_t payload_read_count;     /* reader: frames + markers */
    uint64_t writer_pid;             /* 0 when no writer */
    uint64_t reader_pid;             /* 0 when the reader has gone */
    uint64_t reserved[4];
} dk_zb_oieb_t;

_Static_assert(sizeof(dk_zb_oieb_t) == 128, "OIEB is 128 bytes");
_Static_assert(offsetof(dk_zb_oieb_t, metadata_size) == 8, "OIEB layout");
_Static_assert(offsetof(dk_zb_oieb_t, payload_size) == 32, "OIEB layout");
_Static_assert(offsetof(dk_zb_oieb_t, payload_read_pos) == 56, "OIEB layout");
_Static_assert(offsetof(dk_zb_oieb_t, writer_pid) == 80, "OIEB layout");
_Static_assert(offsetof(dk_zb_oieb_t, reader_pid) == 88, "OIEB layout");

/* Details of the last -EPROTO or -EILSEQ. */
typedef struct dk_zb_error_s {
    uint64_t expected; /* -EILSEQ: the sequence number expected */
    uint64_t got;      /* -EILSEQ: the one found */
    char message[192];
} dk_zb_error_t;

/* A frame being read: data points into the ring, valid until released
 * (and, the memory, until the reader is destroyed). */
typedef struct dk_zb_frame_s {
    const uint8_t *data;
    uint64_t size;
    uint64_t sequence;
    uint64_t ticket; /* identifies the frame to dk_zb_reader_release */
} dk_zb_frame_t;

typedef struct dk_zb_reader_s dk_zb_reader_t;
typedef struct dk_zb_writer_s dk_zb_writer_t;

/* (x + 63) & ~63. */
DK_EXPORT uint64_t dk_zb_align(uint64_t x);

/* Whether NAME is usable: 1..DK_ZB_NAME_MAX bytes, no '/', no "..", no
 * control characters or spaces. 0, -EINVAL, or -ENAMETOOLONG. */
DK_EXPORT int dk_zb_name_check(const char *name) DK_WARN_UNUSED;

/*
 * Create the buffer NAME and become its reader. metadata_size may be 0;
 * payload_size must be > 0; both are rounded up to 64. A reader that
 * crashed under the same name is replaced (its segment is marked
 * reader-less first, so its writer gets -EPIPE). Returns 0, -EINVAL
 * (name or sizes), -ENAMETOOLONG, -EEXIST (a live reader owns NAME),
 * -ENOMEM, -ENOSPC (no room for the segment in /dev/shm), -EPERM (the
 * lock directory /tmp/zerobuffer is not owned by root or us, or is
 * writable by others without the sticky bit, or NAME.lock is a symlink or
 * not a regular file of ours), or the -errno of shm_open/sem_open/open
 * (-EACCES, -EMFILE...).
 */
DK_EXPORT int dk_zb_reader_create(const char *name, uint64_t metadata_size,
                                  uint64_t payload_size, unsigned mode,
                                  dk_zb_reader_t **out) DK_WARN_UNUSED;

/*
 * Take the next frame, waiting until the deadline. Returns 0 (*frame
 * set), -ETIMEDOUT (no frame; the writer is alive or never came),
 * -EPIPE (the writer died or left, and every frame it wrote was read),
 * -EPROTO (corrupted segment; see dk_zb_reader_error), -EILSEQ (wrong
 * sequence number; expected/got in dk_zb_reader_error), -EINTR (a signal
 * interrupted the wait), -EBADF (closed). After -EPROTO/-EILSEQ nothing
 * was consumed: the next call reports the same error. A frame numbered 1
 * from a writer other than the last one (a writer that reconnected)
 * restarts the expected sequence instead of being an error.
 */
DK_EXPORT int dk_zb_reader_read(dk_zb_reader_t *r, uint64_t deadline,
                                dk_zb_frame_t *frame) DK_WARN_UNUSED;

/* Take the next frame if one is already there: no waiting, no system
 * call when none is. 0, -EAGAIN, or the errors of dk_zb_reader_read. */
DK_EXPORT int dk_zb_reader_try_read(dk_zb_reader_t *r,
                                    dk_zb_frame_t *frame) DK_WARN_UNUSED;

/*
 * Give a frame's space back to the writer. Space is returned in ring
 * order: a frame released before an older one is credited when the older
 * one is released too. 0, -EALREADY (released before), -EINVAL (not a
 * frame of this reader). After close: 0 and nothing happens.
 */
DK_EXPORT int dk_zb_reader_release(dk_zb_reader_t *r,
                                   const dk_zb_frame_t *frame) DK_WARN_UNUSED;

/* Release several frames at once: one credit of their space (one atomic
 * add on the OIEB) and one sem-r post per frame. Frames released before
 * are skipped. 0, or -EINVAL (a frame not of this reader: nothing is
 * released). After close: 0 and nothing happens. */
DK_EXPORT int dk_zb_reader_release_many(dk_zb_reader_t *r,
                                        const dk_zb_frame_t *frames, size_t n);

/* The metadata the writer stored (without its length prefix). 0,
 * -ENODATA (none yet), -EPROTO (invalid length), -EBADF (closed). */
DK_EXPORT int dk_zb_reader_metadata(dk_zb_reader_t *r, const void **data,
                                    uint64_t *size) DK_WARN_UNUSED;

/* Whether a writer is connected and its process alive. */
DK_EXPORT bool dk_zb_reader_writer_connected(dk_zb_reader_t *r);
/* Wait until a live writer is connected, or the deadline. Our writers
 * wake the waiter when they connect; a peer's writer is seen within 50 ms
 * (peers make no wake-up). Returns 0, -ETIMEDOUT, -EBADF (closed, also
 * while waiting), -EINTR (a signal: call again). */
DK_EXPORT int dk_zb_reader_wait_writer(dk_zb_reader_t *r,
                                       uint64_t deadline) DK_WARN_UNUSED;

/* Frames and payload bytes read so far. */
DK_EXPORT uint64_t dk_zb_reader_frames(const dk_zb_reader_t *r);
DK_EXPORT uint64_t dk_zb_reader_bytes(const dk_zb_reader_t *r);
DK_EXPORT const dk_zb_error_t *dk_zb_reader_error(const dk_zb_reader_t *r);

/* Detach: clear reader_pid, unlink the segment, semaphores and lock file.
 * The mapping stays until dk_zb_reader_destroy, so frame data pointers
 * remain readable. Idempotent. */
DK_EXPORT void dk_zb_reader_close(dk_zb_reader_t *r);
/* Close if needed, unmap, free. */
DK_EXPORT void dk_zb_reader_destroy(dk_zb_reader_t *r);

/*
 * Connect to the buffer NAME as its writer. Returns 0, -EINVAL /
 * -ENAMETOOLONG (name), -ENOENT (no such buffer), -EPROTO (bad OIEB:
 * size, version or sizes; the message goes to *err if err is not NULL),
 * -ENOTCONN (no live
 * reader), -EBUSY (another live writer is connected), -ENOMEM, -errno.
 */
DK_EXPORT int dk_zb_writer_open(const char *name, dk_zb_writer_t **out,
                                dk_zb_error_t *err) DK_WARN_UNUSED;

/* Store the metadata (once). 0, -EALREADY (written before), -ENOSPC
 * (8 + size > M), -EINVAL (size 0), -EBADF (closed). */
DK_EXPORT int dk_zb_writer_set_metadata(dk_zb_writer_t *w, const void *data,
                                        uint64_t size) DK_WARN_UNUSED;

/*
 * Reserve space for a frame of `size` bytes, waiting for the reader to
 * release space until the deadline, and point *buf at it; *sequence is
 * the number the frame will carry. Commit with dk_zb_writer_commit.
 * Returns 0, -EINVAL (size 0), -EMSGSIZE (16 + size > P), -EPIPE (the
 * reader died or left), -ETIMEDOUT (still no space), -EINTR, -EBUSY (a
 * frame is already reserved), -EPROTO (corrupted free count), -EBADF.
 */
DK_EXPORT int dk_zb_writer_acquire(dk_zb_writer_t *w, uint64_t size,
                                   uint64_t deadline, void **buf,
                                   uint64_t *sequence) DK_WARN_UNUSED;
/* Publish the reserved frame. 0, -EINVAL (nothing reserved) or -EPROTO
 * (the segment was truncated under us: the frame is dropped). */
DK_EXPORT int dk_zb_writer_commit(dk_zb_writer_t *w) DK_WARN_UNUSED;
/* Drop the reserved frame unpublished. 0 or -EINVAL. */
DK_EXPORT int dk_zb_writer_cancel(dk_zb_writer_t *w) DK_WARN_UNUSED;
/* acquire + copy + commit. Same returns as acquire. A frame of 4 MiB or
 * more into a ring of 32 MiB or more is copied with non-temporal stores
 * (x86-64), past the caches it would only evict (docs/zerobuffer.md);
 * write_many copies the same way. */
DK_EXPORT int dk_zb_writer_write(dk_zb_writer_t *w, const void *data,
                                 uint64_t size,
                                 uint64_t deadline) DK_WARN_UNUSED;

/* One frame of a batch. */
typedef struct dk_zb_buf_s {
    const void *data;
    uint64_t size;
} dk_zb_buf_t;

/*
 * Copy n frames in, in order, waiting for space as acquire does (the
 * deadline is for the whole batch). The frames are published together
 * (one update of the OIEB, then one sem-w post per frame, as every
 * reader expects), and also before any wait for space, so a batch larger
 * than the ring goes through as the reader frees space. *done is the
 * number of frames written, also on error. Returns 0, -EINVAL (a frame
 * of size 0) or -EMSGSIZE (a frame too large), both before anything is
 * written, or acquire's other errors (frames before the failing one are
 * written and published).
 */
DK_EXPORT int dk_zb_writer_write_many(dk_zb_writer_t *w,
                                      const dk_zb_buf_t *frames, size_t n,
                                      uint64_t deadline, size_t *done);

/* Whether the reader is connected and its process alive. */
DK_EXPORT bool dk_zb_writer_reader_connected(dk_zb_writer_t *w);
DK_EXPORT uint64_t dk_zb_writer_frames(const dk_zb_writer_t *w);
/* The sequence number the next frame will carry (starts at 1). */
DK_EXPORT uint64_t dk_zb_writer_next_sequence(const dk_zb_writer_t *w);
DK_EXPORT uint64_t dk_zb_writer_bytes(const dk_zb_writer_t *w);
/* Largest frame payload this buffer takes (P - 16). */
DK_EXPORT uint64_t dk_zb_writer_max_frame(const dk_zb_writer_t *w);
DK_EXPORT const dk_zb_error_t *dk_zb_writer_error(const dk_zb_writer_t *w);

/* Disconnect (writer_pid = 0); mapping kept until destroy. Idempotent. */
DK_EXPORT void dk_zb_writer_close(dk_zb_writer_t *w);
DK_EXPORT void dk_zb_writer_destroy(dk_zb_writer_t *w);

/*
 * Check a whole segment image without any OS object: the OIEB, then the
 * frames from payload_read_pos to payload_write_pos (at most max_frames),
 * with the reader's own parser. Returns the number of frames found, or
 * -EPROTO / -EILSEQ with *err filled (err may be NULL). Never reads
 * outside [seg, seg + len). This is the entry point for fuzzing.
 */
DK_EXPORT int64_t dk_zb_segment_check(const void *seg, size_t len,
                                      uint64_t max_frames,
                                      dk_zb_error_t *err) DK_WARN_UNUSED;

DK_END_DECLS

#endif /* DK_ZEROBUFFER_H */
