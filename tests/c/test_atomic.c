/* Tests of the public atomics (dk/atomic.h): every width and operation,
 * wrap-around, 16-byte CAS, and contended increments. */
#include "runner.h"

#include <pthread.h>
#include <string.h>

#include "atomic_raw.h"
#include "dk/atomic.h"

DK_TEST(atomic_width_ops_wrap_and_return_old)
{
    unsigned widths[] = {1, 2, 4, 8};
    for (int i = 0; i < 4; i++) {
        unsigned w = widths[i];
        uint64_t mem[2] = {0, 0};
        uint64_t max = w == 8 ? UINT64_MAX : (1ull << (w * 8)) - 1;
        CHECK(dk_atomic_width_supported(w));
        dk_atomic_store_w(mem, w, max, DK_MO_SEQ_CST);
        CHECK_EQ(dk_atomic_rmw_w(mem, w, DK_AOP_ADD, 1, DK_MO_RELAXED), max);
        CHECK_EQ(dk_atomic_load_w(mem, w, DK_MO_ACQUIRE), 0); /* wrapped */
        CHECK_EQ(dk_atomic_rmw_w(mem, w, DK_AOP_SUB, 1, DK_MO_ACQ_REL), 0);
        CHECK(dk_atomic_load_w(mem, w, DK_MO_SEQ_CST) == max);
        CHECK(dk_atomic_rmw_w(mem, w, DK_AOP_NOT, 0, DK_MO_SEQ_CST) == max);
        CHECK_EQ(dk_atomic_load_w(mem, w, DK_MO_SEQ_CST), 0);
        dk_atomic_store_w(mem, w, 5, DK_MO_RELEASE);
        CHECK_EQ(dk_atomic_rmw_w(mem, w, DK_AOP_NEG, 0, DK_MO_SEQ_CST), 5);
        CHECK(dk_atomic_load_w(mem, w, DK_MO_SEQ_CST) == ((0 - 5ull) & max));
        dk_atomic_store_w(mem, w, 0x0f, DK_MO_SEQ_CST);
        dk_atomic_rmw_w(mem, w, DK_AOP_OR, 0xf0, DK_MO_SEQ_CST);
        dk_atomic_rmw_w(mem, w, DK_AOP_AND, 0x3c, DK_MO_SEQ_CST);
        dk_atomic_rmw_w(mem, w, DK_AOP_XOR, 0x01, DK_MO_SEQ_CST);
        CHECK_EQ(dk_atomic_load_w(mem, w, DK_MO_SEQ_CST), 0x3d);
        uint64_t e = 7;
        CHECK(!dk_atomic_cas_w(mem, w, &e, 9, false, DK_MO_SEQ_CST,
                               DK_MO_RELAXED));
        CHECK_EQ(e, 0x3d);
        CHECK(dk_atomic_cas_w(mem, w, &e, 9, false, DK_MO_SEQ_CST,
                              DK_MO_RELAXED));
        CHECK_EQ(dk_atomic_rmw_w(mem, w, DK_AOP_EXCHANGE, 1, DK_MO_SEQ_CST),
                 9);
        /* Nothing outside the width was touched. */
        CHECK_EQ(mem[1], 0);
        if (w < 8) {
            CHECK_EQ(mem[0] >> (w * 8), 0);
        }
    }
    CHECK(!dk_atomic_width_supported(3));
}

DK_TEST(atomic16_operations)
{
    if (!dk_atomic16_supported()) {
        return;
    }
    _Alignas(16) unsigned char mem[16] = {0};
    unsigned char v[16], old[16], one[16] = {1};
    memset(v, 0xff, sizeof v);
    dk_atomic16_store(mem, v);
    dk_atomic16_rmw(mem, DK_AOP_ADD, one, old);
    CHECK(memcmp(old, v, 16) == 0);
    dk_atomic16_load(mem, old);
    unsigned char zero[16] = {0};
    CHECK(memcmp(old, zero, 16) == 0); /* 2^128 - 1 + 1 wraps to 0 */
    unsigned char e[16] = {0}, d[16] = {9};
    CHECK(dk_atomic16_cas(mem, e, d));
    CHECK(!dk_atomic16_cas(mem, e, one));
    CHECK(memcmp(e, d, 16) == 0);
}

static uint32_t counter32;
static _Alignas(16) unsigned char counter128[16];

static void *
hammer(void *arg)
{
    (void)arg;
    unsigned char one[16] = {1}, old[16];
    for (int i = 0; i < 100000; i++) {
        dk_atomic_rmw_w(&counter32, 4, DK_AOP_ADD, 1, DK_MO_RELAXED);
        if (dk_atomic16_supported() && i % 10 == 0) {
            dk_atomic16_rmw(counter128, DK_AOP_ADD, one, old);
        }
    }
    return NULL;
}

DK_TEST(atomic_contended_increments_lose_nothing)
{
    t_run_threads(4, hammer, NULL);
    CHECK_EQ(counter32, 400000);
    if (dk_atomic16_supported()) {
        CHECK_EQ(counter128[0] | (counter128[1] << 8) | (counter128[2] << 16),
                 40000);
    }
}

/* ---- the raw-bytes API (dk_atomic_load/store/fetch_op/cmpxchg/bit) ---- */

#include <errno.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

__extension__ typedef unsigned __int128 u128_t;

static const size_t raw_widths[] = {1, 2, 4, 8, 16};

static bool
raw_width_ok(size_t w)
{
    return w != 16 || dk_atomic16_supported();
}

static u128_t
raw_mask(size_t w)
{
    return w == 16 ? ~(u128_t)0 : ((u128_t)1 << (w * 8)) - 1;
}

/* Values travel as native-order bytes; on this (little-endian) target
 * that is the low `w` bytes of a u128_t. */
static u128_t
raw_get(const void *v, size_t w)
{
    u128_t x = 0;
    memcpy(&x, v, w);
    return x;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static u128_t
rnd(size_t w)
{
    u128_t x = 0;
    for (int i = 0; i < 2; i++) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        x = (x << 64) | rng_state;
    }
    /* Bias toward the edges, where wrap-around happens. */
    switch (rng_state % 5) {
    case 0:
        x = 0;
        break;
    case 1:
        x = raw_mask(w);
        break;
    case 2:
        x = raw_mask(w) >> 1; /* largest signed */
        break;
    default:
        break;
    }
    return x & raw_mask(w);
}

static u128_t
reference(dk_atomic_op_t op, u128_t cur, u128_t arg, size_t w)
{
    u128_t r;
    switch (op) {
    case DK_AOP_EXCHANGE:
        r = arg;
        break;
    case DK_AOP_ADD:
        r = cur + arg;
        break;
    case DK_AOP_SUB:
        r = cur - arg;
        break;
    case DK_AOP_AND:
        r = cur & arg;
        break;
    case DK_AOP_OR:
        r = cur | arg;
        break;
    case DK_AOP_XOR:
        r = cur ^ arg;
        break;
    case DK_AOP_NOT:
        r = ~cur;
        break;
    case DK_AOP_NEG:
        r = (u128_t)0 - cur;
        break;
    case DK_AOP_INC:
        r = cur + 1;
        break;
    default:
        r = cur - 1;
        break;
    }
    return r & raw_mask(w);
}

/* The operations under test work on mem + 16 of a 48-byte buffer filled
 * with 0xa5 (guarded_object); check_guards: nothing before it, after it
 * or past the width w changed. */
static void *
guarded_object(unsigned char mem[48])
{
    memset(mem, 0xa5, 48);
    return mem + 16;
}

static void
check_guards(const unsigned char mem[48], size_t w)
{
    for (size_t i = 0; i < 16; i++) {
        CHECK_EQ(mem[i], 0xa5);
        CHECK_EQ(mem[32 + i], 0xa5);
    }
    for (size_t i = w; i < 16; i++) {
        CHECK_EQ(mem[16 + i], 0xa5);
    }
}

DK_TEST(atomic_raw_every_op_and_width_matches_reference)
{
    for (size_t wi = 0; wi < 5; wi++) {
        size_t w = raw_widths[wi];
        if (!raw_width_ok(w)) {
            continue;
        }
        for (int iter = 0; iter < 2000; iter++) {
            /* Guard bytes around the object: nothing outside it changes. */
            _Alignas(16) unsigned char mem[48];
            void *p = guarded_object(mem);
            u128_t start = rnd(w), arg = rnd(w);
            CHECK_EQ(dk_atomic_store(p, w, &start, DK_MO_RELEASE), 0);
            dk_atomic_op_t op = (dk_atomic_op_t)(iter % (DK_AOP_DEC + 1));
            unsigned char old[16] = {0}, now[16] = {0};
            CHECK_EQ(dk_atomic_fetch_op(p, w, op, &arg, old,
                                        (dk_memory_order)(iter % 6)),
                     0);
            CHECK(raw_get(old, w) == start);
            CHECK_EQ(dk_atomic_load(p, w, now, DK_MO_ACQUIRE), 0);
            CHECK(raw_get(now, w) == reference(op, start, arg, w));
            check_guards(mem, w);
        }
    }
}

/* The unchecked helpers the binding calls (src/atomic_raw.h): on valid
 * input, the same results as the checked API, with unaligned value
 * buffers, nothing written past the width, and `old` optional. */
DK_TEST(atomic_unchecked_raw_ops_match_reference)
{
    static const dk_memory_order loads[] = {DK_MO_RELAXED, DK_MO_CONSUME,
                                            DK_MO_ACQUIRE, DK_MO_SEQ_CST};
    static const dk_memory_order stores[] = {DK_MO_RELAXED, DK_MO_RELEASE,
                                             DK_MO_SEQ_CST};
    for (size_t wi = 0; wi < 5; wi++) {
        size_t w = raw_widths[wi];
        if (!raw_width_ok(w)) {
            continue;
        }
        for (int iter = 0; iter < 2000; iter++) {
            _Alignas(16) unsigned char mem[48];
            void *p = guarded_object(mem);
            /* Value buffers one byte off alignment, with guard bytes. */
            unsigned char vbuf[18], obuf[18];
            memset(vbuf, 0x5a, sizeof vbuf);
            memset(obuf, 0x5a, sizeof obuf);
            u128_t start = rnd(w), arg = rnd(w);
            memcpy(vbuf + 1, &start, w);
            dk__atomic_store_raw(p, w, vbuf + 1, stores[iter % 3]);
            CHECK(raw_get(p, w) == start);
            dk_atomic_op_t op = (dk_atomic_op_t)(iter % (DK_AOP_DEC + 1));
            memcpy(vbuf + 1, &arg, w);
            bool want_old = iter % 7 != 0;
            dk__atomic_fetch_op_raw(
                p, w, op, dk__atomic_op_needs_arg(op) ? vbuf + 1 : NULL,
                want_old ? obuf + 1 : NULL, (dk_memory_order)(iter % 6));
            if (want_old) {
                CHECK(raw_get(obuf + 1, w) == start);
            }
            u128_t now = reference(op, start, arg, w);
            dk__atomic_load_raw(p, w, obuf + 1, loads[iter % 4]);
            CHECK(raw_get(obuf + 1, w) == now);
            CHECK(raw_get(p, w) == now);
            /* A failing then a succeeding strong cmpxchg; a weak one in a
             * loop. */
            u128_t wrong = (now + 1) & raw_mask(w), next = rnd(w);
            memcpy(obuf + 1, &wrong, w);
            memcpy(vbuf + 1, &next, w);
            CHECK(!dk__atomic_cmpxchg_raw(p, w, obuf + 1, vbuf + 1, false));
            CHECK(raw_get(obuf + 1, w) == now && raw_get(p, w) == now);
            CHECK(dk__atomic_cmpxchg_raw(p, w, obuf + 1, vbuf + 1, false));
            CHECK(raw_get(p, w) == next);
            int spins = 0;
            while (!dk__atomic_cmpxchg_raw(p, w, vbuf + 1, obuf + 1, true)) {
                CHECK(raw_get(vbuf + 1, w) == next);
                CHECK(++spins < 1000000);
            }
            CHECK(raw_get(p, w) == now);
            CHECK(vbuf[0] == 0x5a && obuf[0] == 0x5a);
            for (size_t i = 1 + w; i < sizeof vbuf; i++) {
                CHECK(vbuf[i] == 0x5a && obuf[i] == 0x5a);
            }
            check_guards(mem, w);
        }
    }
}

DK_TEST(atomic_raw_wraps_at_every_width)
{
    for (size_t wi = 0; wi < 5; wi++) {
        size_t w = raw_widths[wi];
        if (!raw_width_ok(w)) {
            continue;
        }
        _Alignas(16) unsigned char mem[16] = {0}, v[16], old[16];
        /* unsigned max + 1 = 0 */
        memset(v, 0xff, w);
        CHECK_EQ(dk_atomic_store(mem, w, v, DK_MO_SEQ_CST), 0);
        CHECK_EQ(
            dk_atomic_fetch_op(mem, w, DK_AOP_INC, NULL, NULL, DK_MO_SEQ_CST),
            0);
        CHECK(raw_get(mem, w) == 0);
        /* 0 - 1 = unsigned max, i.e. signed -1 */
        CHECK_EQ(
            dk_atomic_fetch_op(mem, w, DK_AOP_DEC, NULL, old, DK_MO_RELAXED),
            0);
        CHECK(raw_get(old, w) == 0 && raw_get(mem, w) == raw_mask(w));
        /* signed max + 1 = signed min; neg(signed min) = signed min */
        u128_t smax = raw_mask(w) >> 1, smin = smax + 1;
        CHECK_EQ(dk_atomic_store(mem, w, &smax, DK_MO_RELAXED), 0);
        CHECK_EQ(
            dk_atomic_fetch_op(mem, w, DK_AOP_INC, NULL, NULL, DK_MO_ACQ_REL),
            0);
        CHECK(raw_get(mem, w) == smin);
        CHECK_EQ(
            dk_atomic_fetch_op(mem, w, DK_AOP_NEG, NULL, NULL, DK_MO_SEQ_CST),
            0);
        CHECK(raw_get(mem, w) == smin);
    }
}

DK_TEST(atomic_raw_cmpxchg_weak_and_strong)
{
    for (size_t wi = 0; wi < 5; wi++) {
        size_t w = raw_widths[wi];
        if (!raw_width_ok(w)) {
            continue;
        }
        _Alignas(16) unsigned char mem[16] = {0};
        u128_t seven = 7, nine = 9, e = 1;
        CHECK_EQ(dk_atomic_store(mem, w, &seven, DK_MO_SEQ_CST), 0);
        /* Failure: returns 0, reports the value seen, writes nothing. */
        CHECK_EQ(dk_atomic_cmpxchg(mem, w, &e, &nine, false, DK_MO_SEQ_CST,
                                   DK_MO_ACQUIRE),
                 0);
        CHECK(e == 7 && raw_get(mem, w) == 7);
        CHECK_EQ(dk_atomic_cmpxchg(mem, w, &e, &nine, false, DK_MO_ACQ_REL,
                                   DK_MO_RELAXED),
                 1);
        CHECK(raw_get(mem, w) == 9);
        /* A weak CAS may fail spuriously; in a loop it succeeds. */
        u128_t next = 10;
        e = 9;
        int r, spins = 0;
        while ((r = dk_atomic_cmpxchg(mem, w, &e, &next, true, DK_MO_RELEASE,
                                      DK_MO_RELAXED)) == 0) {
            CHECK(e == 9);
            CHECK(++spins < 1000000);
        }
        CHECK_EQ(r, 1);
        CHECK(raw_get(mem, w) == 10);
    }
}

DK_TEST(atomic_raw_bit_operations)
{
    for (size_t wi = 0; wi < 5; wi++) {
        size_t w = raw_widths[wi];
        if (!raw_width_ok(w)) {
            continue;
        }
        for (unsigned i = 0; i < w * 8; i++) {
            _Alignas(16) unsigned char mem[16] = {0};
            u128_t bit = (u128_t)1 << i;
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_TEST, i, DK_MO_ACQUIRE), 0);
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_SET, i, DK_MO_SEQ_CST), 0);
            CHECK(raw_get(mem, w) == bit);
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_SET, i, DK_MO_RELAXED), 1);
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_TEST, i, DK_MO_SEQ_CST), 1);
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_COMPL, i, DK_MO_ACQ_REL),
                     1);
            CHECK(raw_get(mem, w) == 0);
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_COMPL, i, DK_MO_RELEASE),
                     0);
            CHECK(raw_get(mem, w) == bit);
            memset(mem, 0xff, w);
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_RESET, i, DK_MO_SEQ_CST),
                     1);
            CHECK(raw_get(mem, w) == (raw_mask(w) & ~bit));
            CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_RESET, i, DK_MO_SEQ_CST),
                     0);
        }
    }
}

/* Found by tests/fuzz/fuzz_atomic: a failure order was called valid for
 * a success order that is not a memory order at all. */
DK_TEST(atomic_valid_fail_needs_a_known_success_order)
{
    CHECK(dk_memory_order_valid_fail(DK_MO_RELAXED, DK_MO_SEQ_CST));
    CHECK(!dk_memory_order_valid_fail(DK_MO_RELAXED, DK_MO_SEQ_CST + 1));
    CHECK(!dk_memory_order_valid_fail(DK_MO_SEQ_CST, 100));
    CHECK(!dk_memory_order_valid_fail(DK_MO_RELAXED, -1));
}

DK_TEST(atomic_raw_rejects_bad_input_without_touching_memory)
{
    _Alignas(16) unsigned char mem[32] = {0}, v[16] = {1}, out[16];
    unsigned widths_bad[] = {0, 3, 5, 6, 7, 9, 12, 15, 17, 32};
    for (int i = 0; i < 10; i++) {
        size_t w = widths_bad[i];
        CHECK_EQ(dk_atomic_load(mem, w, out, DK_MO_SEQ_CST), -EINVAL);
        CHECK_EQ(dk_atomic_store(mem, w, v, DK_MO_SEQ_CST), -EINVAL);
        CHECK_EQ(dk_atomic_fetch_op(mem, w, DK_AOP_ADD, v, out, DK_MO_SEQ_CST),
                 -EINVAL);
        CHECK_EQ(dk_atomic_cmpxchg(mem, w, out, v, false, DK_MO_SEQ_CST,
                                   DK_MO_SEQ_CST),
                 -EINVAL);
        CHECK_EQ(dk_atomic_bit(mem, w, DK_ABIT_SET, 0, DK_MO_SEQ_CST),
                 -EINVAL);
    }
    for (size_t wi = 1; wi < 5; wi++) { /* misaligned, widths 2..16 */
        size_t w = raw_widths[wi];
        if (!raw_width_ok(w)) {
            continue;
        }
        CHECK_EQ(dk_atomic_store(mem + 1, w, v, DK_MO_SEQ_CST), -EINVAL);
        CHECK_EQ(dk_atomic_fetch_op(mem + w / 2, w, DK_AOP_INC, NULL, NULL,
                                    DK_MO_SEQ_CST),
                 -EINVAL);
    }
    /* Orders invalid for the operation, and unknown orders. */
    CHECK_EQ(dk_atomic_load(mem, 4, out, DK_MO_RELEASE), -EINVAL);
    CHECK_EQ(dk_atomic_load(mem, 4, out, DK_MO_ACQ_REL), -EINVAL);
    CHECK_EQ(dk_atomic_store(mem, 4, v, DK_MO_ACQUIRE), -EINVAL);
    CHECK_EQ(dk_atomic_store(mem, 4, v, DK_MO_ACQ_REL), -EINVAL);
    CHECK_EQ(dk_atomic_store(mem, 4, v, (dk_memory_order)9), -EINVAL);
    CHECK_EQ(
        dk_atomic_fetch_op(mem, 4, DK_AOP_ADD, v, out, (dk_memory_order)-1),
        -EINVAL);
    CHECK_EQ(
        dk_atomic_cmpxchg(mem, 4, out, v, false, DK_MO_ACQUIRE, DK_MO_SEQ_CST),
        -EINVAL); /* failure stronger than success */
    CHECK_EQ(
        dk_atomic_cmpxchg(mem, 4, out, v, true, DK_MO_SEQ_CST, DK_MO_RELEASE),
        -EINVAL); /* a release failure order */
    CHECK_EQ(dk_atomic_bit(mem, 4, DK_ABIT_TEST, 0, DK_MO_RELEASE), -EINVAL);
    /* Unknown ops, missing argument, bit index out of range. */
    CHECK_EQ(
        dk_atomic_fetch_op(mem, 4, (dk_atomic_op_t)99, v, out, DK_MO_SEQ_CST),
        -EINVAL);
    CHECK_EQ(dk_atomic_fetch_op(mem, 4, DK_AOP_ADD, NULL, out, DK_MO_SEQ_CST),
             -EINVAL);
    CHECK_EQ(dk_atomic_bit(mem, 4, (dk_atomic_bit_op_t)7, 0, DK_MO_SEQ_CST),
             -EINVAL);
    CHECK_EQ(dk_atomic_bit(mem, 4, DK_ABIT_SET, 32, DK_MO_SEQ_CST), -EINVAL);
    CHECK_EQ(dk_atomic_bit(mem, 1, DK_ABIT_SET, 8, DK_MO_SEQ_CST), -EINVAL);
    unsigned char zero[32] = {0};
    CHECK(memcmp(mem, zero, sizeof mem) == 0);
}

DK_TEST(atomic16_load_works_on_read_only_memory)
{
    if (!dk_atomic16_readonly_load_supported()) {
        return; /* a CAS load would fault here: the API says so */
    }
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *m = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    for (int i = 0; i < 16; i++) {
        m[i] = (unsigned char)(i + 1);
    }
    CHECK_EQ(mprotect(m, (size_t)page, PROT_READ), 0);
    unsigned char out[16];
    CHECK_EQ(dk_atomic_load(m, 16, out, DK_MO_SEQ_CST), 0);
    CHECK(memcmp(out, m, 16) == 0);
    CHECK_EQ(dk_atomic_bit(m, 16, DK_ABIT_TEST, 8, DK_MO_ACQUIRE), 0);
    CHECK_EQ(dk_atomic_bit(m, 16, DK_ABIT_TEST, 9, DK_MO_ACQUIRE), 1);
    munmap(m, (size_t)page);
}

/* A 16-byte load must never see half of one store and half of another:
 * writers alternate between two values whose halves differ. */
static _Alignas(16) unsigned char torn_mem[16];
static int torn_stop;

static void *
torn_writer(void *arg)
{
    (void)arg;
    unsigned char a[16], b[16];
    memset(a, 0x11, 16);
    memset(b, 0xee, 16);
    while (!__atomic_load_n(&torn_stop, __ATOMIC_RELAXED)) {
        dk_atomic16_store(torn_mem, a);
        dk_atomic16_store(torn_mem, b);
    }
    return NULL;
}

DK_TEST(atomic16_loads_are_never_torn)
{
    if (!dk_atomic16_supported()) {
        return;
    }
    memset(torn_mem, 0x11, 16);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, torn_writer, NULL), 0);
    for (int i = 0; i < 200000; i++) {
        unsigned char v[16];
        CHECK_EQ(dk_atomic_load(torn_mem, 16, v, DK_MO_SEQ_CST), 0);
        for (int j = 1; j < 16; j++) {
            CHECK_EQ(v[j], v[0]);
        }
    }
    __atomic_store_n(&torn_stop, 1, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
}

/* ThreadSanitizer emulates 16-byte CAS under a process-local lock, which
 * is not address-free: the cross-process 16-byte check is skipped there. */
#if defined(__SANITIZE_THREAD__)
#define TSAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN_BUILD 1
#endif
#endif
#ifndef TSAN_BUILD
#define TSAN_BUILD 0
#endif

/* Processes incrementing every width of one MAP_SHARED object: the
 * operations are address-free, so no increment is lost. */
DK_TEST(atomic_raw_counters_shared_between_processes)
{
    enum { NPROC = 4, NINC = 15000 };
    _Static_assert(NPROC * NINC < 65536, "fits two bytes");
    unsigned char *m = mmap(NULL, 80, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    memset(m, 0, 80); /* width raw_widths[i] lives at 16 * i */
    pid_t pids[NPROC];
    for (int k = 0; k < NPROC; k++) {
        pids[k] = fork();
        CHECK(pids[k] >= 0);
        if (pids[k] == 0) {
            for (int i = 0; i < NINC; i++) {
                for (size_t wi = 0; wi < 5; wi++) {
                    size_t w = raw_widths[wi];
                    if (raw_width_ok(w) &&
                        dk_atomic_fetch_op(m + 16 * wi, w, DK_AOP_INC, NULL,
                                           NULL, DK_MO_RELAXED) != 0) {
                        _exit(2);
                    }
                }
            }
            _exit(0);
        }
    }
    for (int k = 0; k < NPROC; k++) {
        int st;
        CHECK_EQ(waitpid(pids[k], &st, 0), pids[k]);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    u128_t total = (u128_t)NPROC * NINC;
    CHECK(raw_get(m + 0, 1) == (total & 0xff));
    CHECK(raw_get(m + 16, 2) == total); /* below 2^16: no wrap */
    CHECK(raw_get(m + 32, 4) == total);
    CHECK(raw_get(m + 48, 8) == total);
    CHECK(!dk_atomic16_supported() || TSAN_BUILD ||
          raw_get(m + 64, 16) == total);
    munmap(m, 80);
}
