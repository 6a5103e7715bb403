/* Tests of the public atomics (dk/atomic.h): every width and operation,
 * wrap-around, 16-byte CAS, and contended increments. */
#include "runner.h"

#include <pthread.h>
#include <string.h>

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
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        pthread_create(&t[i], NULL, hammer, NULL);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK_EQ(counter32, 400000);
    if (dk_atomic16_supported()) {
        CHECK_EQ(counter128[0] | (counter128[1] << 8) | (counter128[2] << 16),
                 40000);
    }
}
