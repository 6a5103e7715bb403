/*
 * 16-byte atomics through the CPU's double-width compare-and-swap. Built
 * with -mcx16 on x86_64 so the __sync builtins inline cmpxchg16b (never a
 * libatomic lock). Every operation, even a load, is a CAS loop, so the
 * memory must be writable.
 */
#include "dk/atomic.h"

#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#if defined(__SIZEOF_INT128__) &&                                             \
    (defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16) || defined(__aarch64__))
#define DK_HAVE_CAS16 1
__extension__ typedef unsigned __int128 u128;

static u128
get(const void *v)
{
    u128 x;
    memcpy(&x, v, sizeof x);
    return x;
}

static void
put(void *out, u128 x)
{
    memcpy(out, &x, sizeof x);
}

static u128
cas_val(void *p, u128 expected, u128 desired)
{
    return __sync_val_compare_and_swap((u128 *)p, expected, desired);
}
#endif

bool
dk_atomic16_supported(void)
{
#ifdef DK_HAVE_CAS16
#if defined(__x86_64__)
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_CMPXCHG16B) != 0;
#else
    return true;
#endif
#else
    return false;
#endif
}

#ifdef DK_HAVE_CAS16
void
dk_atomic16_load(void *p, void *out)
{
    /* CAS with equal expected and desired values: returns the current
     * value and writes back what was there. */
    put(out, cas_val(p, 0, 0));
}

void
dk_atomic16_store(void *p, const void *v)
{
    u128 want = get(v);
    u128 cur = cas_val(p, 0, 0);
    for (;;) {
        u128 seen = cas_val(p, cur, want);
        if (seen == cur) {
            return;
        }
        cur = seen;
    }
}

void
dk_atomic16_rmw(void *p, dk_atomic_op_t op, const void *arg, void *old)
{
    u128 a = arg != NULL ? get(arg) : 0;
    u128 cur = cas_val(p, 0, 0);
    for (;;) {
        u128 next;
        switch (op) {
        case DK_AOP_EXCHANGE:
            next = a;
            break;
        case DK_AOP_ADD:
            next = cur + a;
            break;
        case DK_AOP_SUB:
            next = cur - a;
            break;
        case DK_AOP_AND:
            next = cur & a;
            break;
        case DK_AOP_OR:
            next = cur | a;
            break;
        case DK_AOP_XOR:
            next = cur ^ a;
            break;
        case DK_AOP_NOT:
            next = ~cur;
            break;
        default: /* DK_AOP_NEG */
            next = (u128)0 - cur;
            break;
        }
        u128 seen = cas_val(p, cur, next);
        if (seen == cur) {
            put(old, cur);
            return;
        }
        cur = seen;
    }
}

bool
dk_atomic16_cas(void *p, void *expected, const void *desired)
{
    u128 e = get(expected);
    u128 seen = cas_val(p, e, get(desired));
    put(expected, seen);
    return seen == e;
}
#else
void
dk_atomic16_load(void *p, void *out)
{
    (void)p;
    (void)out;
}

void
dk_atomic16_store(void *p, const void *v)
{
    (void)p;
    (void)v;
}

void
dk_atomic16_rmw(void *p, dk_atomic_op_t op, const void *arg, void *old)
{
    (void)p;
    (void)op;
    (void)arg;
    (void)old;
}

bool
dk_atomic16_cas(void *p, void *expected, const void *desired)
{
    (void)p;
    (void)expected;
    (void)desired;
    return false;
}
#endif
