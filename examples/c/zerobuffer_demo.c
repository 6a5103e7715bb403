/*
 * A reader creates a ZeroBuffer; a forked writer streams frames of mixed
 * sizes into it (wrapping the ring many times); the reader checks every
 * frame's sequence and bytes in place. Any zerobuffer-ipc peer could be
 * on either side. Build: see meson.build (zerobuffer-demo). Exits 0 when
 * every frame arrived intact.
 */
#include <dk/time.h>
#include <dk/zerobuffer.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { FRAMES = 20000 };

static uint64_t
frame_size(uint64_t i)
{
    return 1 + (i * 7919) % 5000; /* 1..5000 bytes */
}

static uint8_t
frame_byte(uint64_t i, uint64_t k)
{
    return (uint8_t)(i * 31 + k);
}

static int
write_all(const char *name)
{
    dk_zb_writer_t *w;
    if (dk_zb_writer_open(name, &w, NULL) < 0) {
        return 1;
    }
    if (dk_zb_writer_set_metadata(w, "demo", 4) < 0) {
        return 1;
    }
    for (uint64_t i = 0; i < FRAMES; i++) {
        void *buf;
        uint64_t seq;
        uint64_t n = frame_size(i);
        if (dk_zb_writer_acquire(w, n, dk_now() + 5000000000u, &buf, &seq) <
            0) {
            return 1;
        }
        for (uint64_t k = 0; k < n; k++) { /* filled in place: no copy */
            ((uint8_t *)buf)[k] = frame_byte(i, k);
        }
        if (dk_zb_writer_commit(w) < 0) {
            return 1;
        }
    }
    dk_zb_writer_destroy(w);
    return 0;
}

int
main(void)
{
    char name[64];
    snprintf(name, sizeof name, "dk-demo-%d", (int)getpid());
    dk_zb_reader_t *r;
    if (dk_zb_reader_create(name, 64, 64 * 1024, DK_ZB_MODE_PRIVATE, &r) < 0) {
        return 1;
    }
    pid_t writer = fork();
    if (writer == 0) {
        _exit(write_all(name));
    }
    uint64_t good = 0;
    for (uint64_t i = 0;; i++) {
        dk_zb_frame_t f;
        int rc = dk_zb_reader_read(r, dk_now() + 5000000000u, &f);
        if (rc == -EPIPE) {
            break; /* the writer left and everything was read */
        }
        if (rc < 0) {
            fprintf(stderr, "read: %s\n", strerror(-rc));
            break;
        }
        bool ok = f.sequence == i + 1 && f.size == frame_size(i);
        for (uint64_t k = 0; ok && k < f.size; k++) {
            ok = f.data[k] == frame_byte(i, k);
        }
        good += ok;
        if (dk_zb_reader_release(r, &f) < 0) {
            fprintf(stderr, "release refused\n");
            break;
        }
    }
    const void *meta;
    uint64_t meta_size = 0;
    int mrc = dk_zb_reader_metadata(r, &meta, &meta_size);
    int status = 0;
    waitpid(writer, &status, 0);
    printf("frames intact: %llu of %d, metadata %.*s\n",
           (unsigned long long)good, FRAMES, mrc == 0 ? (int)meta_size : 0,
           mrc == 0 ? (const char *)meta : "");
    dk_zb_reader_destroy(r);
    return good == FRAMES && status == 0 ? 0 : 1;
}
