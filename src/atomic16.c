/*
 * 16-byte atomics through the CPU's double-width compare-and-swap. Built
 * with -mcx16 on x86_64 so the __sync builtins inline cmpxchg16b (never a
 * libatomic lock: libatomic's 16-byte path may take a lock, which is not
 * address-free and so is wrong between processes). Every writing
 * operation is a CAS loop. A load is a single MOVDQA on x86_64 CPUs with
 * AVX, which Intel (SDM vol. 3A 9.1.1) and AMD (APM vol. 2 7.3.2)
 * guarantee to be atomic when 16-byte aligned; that load does not write,
 * so it also works on read-only memory, and it does not take the cache
 * line exclusively. Elsewhere a load is a CAS of the value with itself.
 */
#include "dk/atomic.h"

#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <emmintrin.h>
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

/* Whether CPUID leaf 1 reports `bit` in ECX. ECX is read once and cached
 * with bit 31 (the hypervisor bit, which we never ask about) set, so 0
 * means "not read yet"; threads racing on the first call all store the
 * same value. */
#if defined(__x86_64__)
static bool
cpuid1_ecx_has(unsigned bit)
{
    static unsigned cached;
    unsigned v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v == 0) {
        unsigned a, b, c = 0, d;
        if (!__get_cpuid(1, &a, &b, &c, &d)) {
            c = 0;
        }
        v = c | 0x80000000u;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return (v & bit) != 0;
}
#endif

bool
dk_atomic16_supported(void)
{
#ifdef DK_HAVE_CAS16
#if defined(__x86_64__)
    return cpuid1_ecx_has(bit_CMPXCHG16B);
#else
    return true;
#endif
#else
    return false;
#endif
}

/* ThreadSanitizer replaces 16-byte CAS with a lock and two plain 8-byte
 * stores, which a plain 16-byte load can see half done: under TSan every
 * load is a (likewise emulated) CAS. */
#if defined(__SANITIZE_THREAD__)
#define DK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DK_TSAN 1
#endif
#endif

bool
dk_atomic16_readonly_load_supported(void)
{
#if defined(DK_HAVE_CAS16) && defined(__x86_64__) && !defined(DK_TSAN)
    return cpuid1_ecx_has(bit_AVX) && cpuid1_ecx_has(bit_CMPXCHG16B);
#else
    return false;
#endif
}

#ifdef DK_HAVE_CAS16
void
dk_atomic16_load(void *p, void *out)
{
#if defined(__x86_64__) && !defined(DK_TSAN)
    if (dk_atomic16_readonly_load_supported()) {
        /* One aligned MOVDQA in asm, so the compiler cannot split it. The
         * "memory" clobber keeps it ordered like a sequentially consistent
         * load: x86 loads are not reordered with older locked writes
         * (every 16-byte write here is lock cmpxchg16b). */
        __m128i v;
        __asm__ volatile("movdqa %1, %0"
                         : "=x"(v)
                         : "m"(*(const __m128i *)p)
                         : "memory");
        memcpy(out, &v, 16);
        return;
    }
#endif
    /* CAS with equal expected and desired values: returns the current
     * value and writes back what was there. */
    put(out, cas_val(p, 0, 0));
}

/* The value a CAS loop starts from. */
static u128
peek(void *p)
{
    unsigned char v[16];
    dk_atomic16_load(p, v);
    return get(v);
}

void
dk_atomic16_store(void *p, const void *v)
{
    u128 want = get(v);
    u128 cur = peek(p);
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
    u128 cur = peek(p);
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
        case DK_AOP_INC:
            next = cur + 1;
            break;
        case DK_AOP_DEC:
            next = cur - 1;
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
