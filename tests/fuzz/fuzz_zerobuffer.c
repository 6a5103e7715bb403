/*
 * Fuzz target: the zerobuffer reader on a whole segment written by a
 * hostile peer. Each input creates a real reader (shared memory object,
 * semaphores, lock file), overwrites its whole segment (OIEB, metadata
 * block and payload ring) with bytes from the input through a mapping of
 * our own, as a third process would, and then runs a script of reader
 * and writer calls from the rest of the input: reads, releases in any
 * order, forged tickets, metadata, pokes into the segment between calls,
 * and a writer connecting to the mutated segment and writing into it.
 * Every call must return one of the codes its header documents; every
 * frame and metadata pointer must lie inside the reader's own ring and
 * metadata block (the mapping is shared memory, which ASan does not
 * watch, so this target checks the bounds itself and touches every byte
 * it is handed). The same image also goes through dk_zb_segment_check
 * from an exactly sized heap copy, where ASan sees any stray read.
 *
 * Input: [0] metadata block 64 * (b % 4); [1] payload ring
 * 64 * (1 + b % 32); [2] flags (FLAG_*); [3] sem-w tokens to post first;
 * then up to 128 + M + P bytes of segment image; then the script.
 */
#include "fuzz.h"

#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dk/zerobuffer.h"

#define FLAG_WRITER_IS_US 1u /* writer_pid = our pid after the overlay */
#define FLAG_READER_IS_US 2u /* reader_pid = our pid (writer can connect) */
#define FLAG_KEEP_SIZES 4u   /* restore the OIEB's size and version */
#define MAX_HELD 200         /* past the reader's first 64 pending credits */
#define MAX_OPS 256

struct run {
    char name[64];
    dk_zb_reader_t *r;
    dk_zb_writer_t *w;
    sem_t *sem_w;
    uint8_t *seg; /* our own mapping, the hostile peer's view */
    size_t seg_len;
    const uint8_t *rbase; /* the reader's mapping */
    uint64_t msize, psize;
    dk_zb_frame_t held[MAX_HELD];
    int nheld;
    bool closed;
};

/* Find the reader's mapping of the segment: before a writer connects it
 * is the only mapping of /dev/shm/NAME in this process besides ours. */
static const uint8_t *
reader_base_from_maps(const char *name, const uint8_t *ours)
{
    char want[96], line[512];
    snprintf(want, sizeof want, "/dev/shm/%s\n", name);
    FILE *f = fopen("/proc/self/maps", "r");
    FUZZ_CHECK(f != NULL);
    const uint8_t *base = NULL;
    while (fgets(line, sizeof line, f) != NULL) {
        size_t n = strlen(line), k = strlen(want);
        if (n >= k && strcmp(line + n - k, want) == 0) {
            unsigned long long lo;
            FUZZ_CHECK(sscanf(line, "%llx-", &lo) == 1);
            if ((uintptr_t)lo == (uintptr_t)ours) {
                continue;
            }
            FUZZ_CHECK(base == NULL);
            base = (const uint8_t *)(uintptr_t)lo;
        }
    }
    fclose(f);
    FUZZ_CHECK(base != NULL);
    return base;
}

/* Where the reader mapped the segment. Cheaply, when there is a metadata
 * block: store an empty metadata record through our mapping and ask the
 * reader where it is (the overlay replaces it anyway). */
static const uint8_t *
reader_base(const struct run *t)
{
    if (t->msize == 0) {
        return reader_base_from_maps(t->name, t->seg);
    }
    dk_zb_oieb_t *o = (dk_zb_oieb_t *)(void *)t->seg;
    memset(t->seg + DK_ZB_OIEB_SIZE, 0, 8);
    o->metadata_written_bytes = 8;
    const void *data;
    uint64_t size;
    FUZZ_CHECK(dk_zb_reader_metadata(t->r, &data, &size) == 0);
    FUZZ_CHECK(size == 0);
    o->metadata_written_bytes = 0;
    return (const uint8_t *)data - DK_ZB_OIEB_SIZE - 8;
}

static void
touch(const uint8_t *p, uint64_t n)
{
    volatile uint8_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
        sum = (uint8_t)(sum + p[i]);
    }
    (void)sum;
}

static void
check_error_message(const dk_zb_error_t *e)
{
    FUZZ_CHECK(memchr(e->message, '\0', sizeof e->message) != NULL);
}

/* A frame the reader handed out lies inside its ring, after a header. */
static void
check_frame(const struct run *t, const dk_zb_frame_t *f)
{
    const uint8_t *ring = t->rbase + DK_ZB_OIEB_SIZE + t->msize;
    FUZZ_CHECK(f->data >= ring + DK_ZB_HEADER_SIZE);
    FUZZ_CHECK(f->data <= ring + t->psize);
    FUZZ_CHECK(f->size <= t->psize - DK_ZB_HEADER_SIZE);
    FUZZ_CHECK((uint64_t)(f->data - ring) + f->size <= t->psize);
    touch(f->data, f->size);
}

static void
keep_frame(struct run *t, const dk_zb_frame_t *f)
{
    check_frame(t, f);
    if (t->nheld < MAX_HELD) {
        t->held[t->nheld++] = *f;
    } else {
        /* Hand it straight back, as a reader that copies would. */
        int rc = dk_zb_reader_release(t->r, f);
        FUZZ_CHECK(rc == 0);
    }
}

static void
check_read_rc(const char *what, int rc, bool polled)
{
    switch (rc) {
    case 0:
    case -EPROTO:
    case -EILSEQ:
    case -EBADF:
    case -ENOMEM:
        return;
    case -EAGAIN:
        if (polled) {
            return;
        }
        break;
    case -ETIMEDOUT:
    case -EPIPE:
        if (!polled) {
            return;
        }
        break;
    default:
        break;
    }
    FUZZ_BAD_RC(what, rc);
}

static void
op_read(struct run *t, bool try)
{
    dk_zb_frame_t f;
    int rc =
        try ? dk_zb_reader_try_read(t->r, &f) : dk_zb_reader_read(t->r, 0, &f);
    check_read_rc(try ? "try_read" : "read", rc, try);
    if (rc == 0) {
        keep_frame(t, &f);
    }
    check_error_message(dk_zb_reader_error(t->r));
}

static void
op_release(struct run *t, fuzz_in_t *in)
{
    if (t->nheld == 0) {
        return;
    }
    int i = fuzz_u8(in) % t->nheld;
    int rc = dk_zb_reader_release(t->r, &t->held[i]);
    /* A held frame is ours: released once (0), or again (-EALREADY). */
    if (rc != 0 && rc != -EALREADY) {
        FUZZ_BAD_RC("release", rc);
    }
    if (t->closed) {
        FUZZ_CHECK(rc == 0);
    }
}

static void
op_forged_release(struct run *t, fuzz_in_t *in)
{
    dk_zb_frame_t f = {0};
    f.ticket = fuzz_u8(in) & 1 ? fuzz_u64(in) : fuzz_u8(in);
    int rc = dk_zb_reader_release(t->r, &f);
    if (rc != 0 && rc != -EALREADY && rc != -EINVAL) {
        FUZZ_BAD_RC("release (forged ticket)", rc);
    }
}

static void
op_metadata(struct run *t)
{
    const void *data;
    uint64_t size;
    int rc = dk_zb_reader_metadata(t->r, &data, &size);
    switch (rc) {
    case 0: {
        const uint8_t *meta = t->rbase + DK_ZB_OIEB_SIZE;
        FUZZ_CHECK((const uint8_t *)data == meta + 8);
        FUZZ_CHECK(t->msize >= 8 && size <= t->msize - 8);
        touch(data, size);
        break;
    }
    case -ENODATA:
    case -EPROTO:
    case -EBADF:
        break;
    default:
        FUZZ_BAD_RC("metadata", rc);
    }
}

/* A hostile peer changes the segment between two of our calls. */
static void
op_poke(struct run *t, fuzz_in_t *in)
{
    size_t at = fuzz_u16(in) % t->seg_len;
    t->seg[at] = fuzz_u8(in);
}

static void
op_poke_oieb(struct run *t, fuzz_in_t *in)
{
    size_t at = (size_t)(fuzz_u8(in) % 16) * 8;
    uint64_t v = fuzz_u64(in);
    memcpy(t->seg + at, &v, 8);
}

static void
op_post(struct run *t, fuzz_in_t *in)
{
    int n = 1 + fuzz_u8(in) % 8;
    for (int i = 0; i < n; i++) {
        FUZZ_CHECK(sem_post(t->sem_w) == 0);
    }
}

static void
check_acquire_rc(const char *what, int rc)
{
    switch (rc) {
    case 0:
    case -EINVAL:
    case -EMSGSIZE:
    case -EPIPE:
    case -ETIMEDOUT:
    case -EBUSY:
    case -EPROTO:
    case -EBADF:
        return;
    default:
        FUZZ_BAD_RC(what, rc);
    }
}

static void
op_writer(struct run *t, fuzz_in_t *in)
{
    if (t->w == NULL) {
        dk_zb_error_t err;
        memset(&err, 0, sizeof err);
        int rc = dk_zb_writer_open(t->name, &t->w, &err);
        switch (rc) {
        case 0:
            FUZZ_CHECK(dk_zb_writer_max_frame(t->w) <= t->seg_len);
            break;
        case -ENOENT:
            FUZZ_CHECK(t->closed);
            break;
        case -ENOTCONN:
        case -EBUSY:
        case -EPROTO:
        case -ENOMEM:
            break;
        default:
            FUZZ_BAD_RC("writer_open", rc);
        }
        check_error_message(&err);
        return;
    }
    uint8_t payload[2048 + 64];
    uint64_t size = fuzz_u16(in) % (t->psize + 32);
    memset(payload, (int)(size & 0xff), sizeof payload);
    int rc = dk_zb_writer_write(t->w, payload, size, 0);
    check_acquire_rc("writer_write", rc);
    check_error_message(dk_zb_writer_error(t->w));
}

static void
op_writer_parts(struct run *t, fuzz_in_t *in)
{
    if (t->w == NULL) {
        return;
    }
    uint8_t how = fuzz_u8(in);
    if (how % 4 == 3) {
        uint8_t meta[256];
        uint64_t size = fuzz_u8(in);
        memset(meta, 0x6d, sizeof meta);
        int rc = dk_zb_writer_set_metadata(t->w, meta, size);
        if (rc != 0 && rc != -EALREADY && rc != -ENOSPC && rc != -EINVAL &&
            rc != -EBADF) {
            FUZZ_BAD_RC("writer_set_metadata", rc);
        }
        return;
    }
    void *buf;
    uint64_t seq;
    uint64_t size = fuzz_u16(in) % (t->psize + 32);
    int rc = dk_zb_writer_acquire(t->w, size, 0, &buf, &seq);
    check_acquire_rc("writer_acquire", rc);
    if (rc == 0) {
        /* The reservation lies in the writer's ring: fill it. */
        memset(buf, 0x77, (size_t)size);
        FUZZ_CHECK(seq == dk_zb_writer_next_sequence(t->w));
    }
    /* Cancel, commit, or leave it reserved for a later call to find. */
    if (how % 4 == 2) {
        return;
    }
    rc = how % 4 == 0 ? dk_zb_writer_cancel(t->w) : dk_zb_writer_commit(t->w);
    if (rc != 0 && rc != -EINVAL) {
        FUZZ_BAD_RC("writer_commit/cancel", rc);
    }
}

static void
op_queries(struct run *t)
{
    (void)dk_zb_reader_writer_connected(t->r);
    (void)dk_zb_reader_frames(t->r);
    (void)dk_zb_reader_bytes(t->r);
    check_error_message(dk_zb_reader_error(t->r));
    if (t->w != NULL) {
        (void)dk_zb_writer_reader_connected(t->w);
        (void)dk_zb_writer_frames(t->w);
        (void)dk_zb_writer_bytes(t->w);
    }
}

static void
op_close(struct run *t, fuzz_in_t *in)
{
    if (fuzz_u8(in) & 1 && t->w != NULL) {
        dk_zb_writer_close(t->w);
        return;
    }
    dk_zb_reader_close(t->r);
    t->closed = true;
}

/* The checker, from a heap copy exactly as long as the image. */
static void
check_image(const uint8_t *img, size_t len)
{
    uint8_t *copy = malloc(len == 0 ? 1 : len);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, img, len);
    dk_zb_error_t err;
    memset(&err, 0, sizeof err);
    int64_t n = dk_zb_segment_check(copy, len, 1000, &err);
    if (n < 0 && n != -EPROTO && n != -EILSEQ) {
        FUZZ_BAD_RC("segment_check", n);
    }
    check_error_message(&err);
    free(copy);
}

static void
overlay(struct run *t, fuzz_in_t *in, uint8_t flags)
{
    size_t n = in->n < t->seg_len ? in->n : t->seg_len;
    check_image(in->p, n);
    memcpy(t->seg, in->p, n);
    in->p += n;
    in->n -= n;
    dk_zb_oieb_t *o = (dk_zb_oieb_t *)(void *)t->seg;
    if (flags & FLAG_KEEP_SIZES) {
        o->oieb_size = DK_ZB_OIEB_SIZE;
        o->version_major = 1;
        o->metadata_size = t->msize;
        o->payload_size = t->psize;
    }
    if (flags & FLAG_WRITER_IS_US) {
        o->writer_pid = (uint64_t)getpid();
    }
    if (flags & FLAG_READER_IS_US) {
        o->reader_pid = (uint64_t)getpid();
    }
}

static void
setup(struct run *t, uint64_t msize, uint64_t psize)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "dkfuzz-zb-%d", (int)getpid());
    t->msize = msize;
    t->psize = psize;
    int rc = dk_zb_reader_create(t->name, msize, psize, 0600, &t->r);
    FUZZ_CHECK(rc == 0);
    char path[96];
    snprintf(path, sizeof path, "/%s", t->name);
    int fd = shm_open(path, O_RDWR, 0);
    FUZZ_CHECK(fd >= 0);
    t->seg_len = (size_t)(DK_ZB_OIEB_SIZE + msize + psize);
    void *p =
        mmap(NULL, t->seg_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    FUZZ_CHECK(p != MAP_FAILED);
    close(fd);
    t->seg = p;
    snprintf(path, sizeof path, "/sem-w-%s", t->name);
    t->sem_w = sem_open(path, 0);
    FUZZ_CHECK(t->sem_w != SEM_FAILED);
    t->rbase = reader_base(t);
}

static void
teardown(struct run *t)
{
    dk_zb_writer_destroy(t->w);
    dk_zb_reader_destroy(t->r);
    sem_close(t->sem_w);
    munmap(t->seg, t->seg_len);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) {
        return 0;
    }
    fuzz_in_t in = {data, size};
    uint64_t msize = 64u * (fuzz_u8(&in) % 4);
    uint64_t psize = 64u * (1u + fuzz_u8(&in) % 32);
    uint8_t flags = fuzz_u8(&in);
    int tokens = fuzz_u8(&in) % 16;
    struct run t;
    setup(&t, msize, psize);
    overlay(&t, &in, flags);
    for (int i = 0; i < tokens; i++) {
        FUZZ_CHECK(sem_post(t.sem_w) == 0);
    }
    for (int op = 0; op < MAX_OPS && fuzz_more(&in); op++) {
        switch (fuzz_u8(&in) % 12) {
        case 0:
            op_read(&t, true);
            break;
        case 1:
            op_read(&t, false);
            break;
        case 2:
            op_post(&t, &in);
            break;
        case 3:
            op_release(&t, &in);
            break;
        case 4:
            op_forged_release(&t, &in);
            break;
        case 5:
            op_metadata(&t);
            break;
        case 6:
            op_poke(&t, &in);
            break;
        case 7:
            op_poke_oieb(&t, &in);
            break;
        case 8:
            op_writer(&t, &in);
            break;
        case 9:
            op_writer_parts(&t, &in);
            break;
        case 10:
            op_queries(&t);
            break;
        default:
            op_close(&t, &in);
            break;
        }
    }
    /* Whatever the script left held goes back in ring order or not. */
    for (int i = t.nheld - 1; i >= 0; i--) {
        int rc = dk_zb_reader_release(t.r, &t.held[i]);
        FUZZ_CHECK(rc == 0 || rc == -EALREADY);
    }
    teardown(&t);
    return 0;
}
