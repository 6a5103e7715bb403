/*
 * Fuzz target: the atomics of dk/atomic.h on a 64-byte buffer, at every
 * width the input names (1..17, 24, 32, and sizes near SIZE_MAX), every
 * offset, every memory order value (including ones that are not a
 * dk_memory_order) and every op and bit index. The raw-bytes API must
 * return -EINVAL exactly when the header's rules say and then touch
 * nothing; otherwise its result and the buffer must match a plain
 * (non-atomic) model computed here. Where the input is valid, every other
 * code runs the same operation through the unchecked helpers of
 * src/atomic_raw.h instead, which the Python binding calls after its own
 * checks, against the same model. The width-generic calls the Python
 * binding makes after its own validation (load_w, store_w, rmw_w, cas_w),
 * the typed u32/u64 calls under sync.AtomicU32/U64, and the order
 * predicates are checked against the same model, the
 * predicates against C11's rules written out independently.
 *
 * The model reads values as little-endian bytes: the targets we run on.
 */
#include "fuzz.h"

#include <errno.h>

#include "atomic_raw.h"
#include "dk/atomic.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the model in this target assumes a little-endian machine"
#endif

#define BUF 64
#define MAX_OPS 256

__extension__ typedef unsigned __int128 u128;

/* clang-format off */
static const size_t widths[] = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 24, 32,
    1, 2, 4, 8, 16, SIZE_MAX, (size_t)1 << 20, SIZE_MAX - 15,
};
/* clang-format on */

struct state {
    uint8_t *mem;       /* 32-byte aligned */
    uint8_t model[BUF]; /* what mem must hold */
};

static u128
get(const uint8_t *p, size_t w)
{
    u128 v = 0;
    for (size_t i = w; i-- > 0;) {
        v = (v << 8) | p[i];
    }
    return v;
}

static void
put(uint8_t *p, size_t w, u128 v)
{
    for (size_t i = 0; i < w; i++) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static u128
mask_of(size_t w)
{
    return w >= 16 ? ~(u128)0 : (((u128)1 << (8 * w)) - 1);
}

/* C11's orders, written out: loads may not release, stores may not
 * acquire, and a CAS's failure order is a load order no stronger than
 * the load half of its success order. */
static int
load_half(int mo)
{
    switch (mo) {
    case DK_MO_CONSUME:
        return 1;
    case DK_MO_ACQUIRE:
    case DK_MO_ACQ_REL:
        return 2;
    case DK_MO_SEQ_CST:
        return 3;
    default:
        return 0;
    }
}

static bool
known(int mo)
{
    return mo >= DK_MO_RELAXED && mo <= DK_MO_SEQ_CST;
}

static bool
model_valid_load(int mo)
{
    return known(mo) && mo != DK_MO_RELEASE && mo != DK_MO_ACQ_REL;
}

static bool
model_valid_store(int mo)
{
    return mo == DK_MO_RELAXED || mo == DK_MO_RELEASE || mo == DK_MO_SEQ_CST;
}

static bool
model_valid_fail(int fail, int succ)
{
    return known(succ) && model_valid_load(fail) &&
           load_half(fail) <= load_half(succ);
}

static u128
apply_op(int op, u128 cur, u128 arg)
{
    switch (op) {
    case DK_AOP_EXCHANGE:
        return arg;
    case DK_AOP_ADD:
        return cur + arg;
    case DK_AOP_SUB:
        return cur - arg;
    case DK_AOP_AND:
        return cur & arg;
    case DK_AOP_OR:
        return cur | arg;
    case DK_AOP_XOR:
        return cur ^ arg;
    case DK_AOP_NOT:
        return ~cur;
    case DK_AOP_NEG:
        return (u128)0 - cur;
    case DK_AOP_INC:
        return cur + 1;
    default:
        return cur - 1;
    }
}

static bool
op_needs_arg(int op)
{
    return op != DK_AOP_NOT && op != DK_AOP_NEG && op != DK_AOP_INC &&
           op != DK_AOP_DEC;
}

static void
check_mem(const struct state *s)
{
    FUZZ_CHECK(memcmp(s->mem, s->model, BUF) == 0);
}

/* A value of up to 16 bytes, often one of the edges. */
static void
pick_value(fuzz_in_t *in, uint8_t out[16])
{
    uint8_t how = fuzz_u8(in);
    switch (how % 4) {
    case 0:
        memset(out, 0, 16);
        out[0] = fuzz_u8(in);
        break;
    case 1:
        memset(out, 0xff, 16);
        break;
    case 2:
        memset(out, 0, 16);
        out[how / 4 % 16] = 0x80;
        break;
    default:
        fuzz_bytes(in, out, 16);
        break;
    }
}

static void
raw_op(struct state *s, fuzz_in_t *in, uint8_t code)
{
    size_t w = widths[fuzz_u8(in) % (sizeof widths / sizeof widths[0])];
    size_t off = fuzz_u8(in) % BUF;
    int mo = (int)(fuzz_u8(in) % 9) - 1;
    int mo2 = (int)(fuzz_u8(in) % 9) - 1;
    uint8_t v[16], e[16], out[16];
    pick_value(in, v);
    pick_value(in, e);
    memset(out, 0xa5, sizeof out);
    bool width_ok = w == 1 || w == 2 || w == 4 || w == 8 ||
                    (w == 16 && dk_atomic16_supported());
    bool target = width_ok && off % w == 0;
    if (target && off + w > BUF) {
        return; /* past the buffer: the caller's error, not the API's */
    }
    uint8_t *p = s->mem + off;
    u128 m = mask_of(w);
    u128 cur = target ? get(s->model + off, w) : 0;
    int rc;
    bool valid;
    /* On valid input only: the helpers' preconditions are the checks. */
    bool unchecked = (code / 5) % 2 == 1;
    switch (code % 5) {
    case 0:
        valid = target && model_valid_load(mo);
        if (valid && unchecked) {
            dk__atomic_load_raw(p, w, out, (dk_memory_order)mo);
            rc = 0;
        } else {
            rc = dk_atomic_load(p, w, out, (dk_memory_order)mo);
        }
        if (valid) {
            FUZZ_CHECK(rc == 0 && get(out, w) == cur);
        }
        break;
    case 1:
        valid = target && model_valid_store(mo);
        if (valid && unchecked) {
            dk__atomic_store_raw(p, w, v, (dk_memory_order)mo);
            rc = 0;
        } else {
            rc = dk_atomic_store(p, w, v, (dk_memory_order)mo);
        }
        if (valid) {
            FUZZ_CHECK(rc == 0);
            put(s->model + off, w, get(v, w));
        }
        break;
    case 2: {
        int op = (int)(fuzz_u8(in) % 12) - 1;
        bool null_arg = fuzz_u8(in) % 4 == 0;
        valid = target && known(mo) && op >= DK_AOP_EXCHANGE &&
                op <= DK_AOP_DEC && !(null_arg && op_needs_arg(op));
        if (valid && unchecked) {
            dk__atomic_fetch_op_raw(p, w, (dk_atomic_op_t)op,
                                    null_arg ? NULL : v, out,
                                    (dk_memory_order)mo);
            rc = 0;
        } else {
            rc = dk_atomic_fetch_op(p, w, (dk_atomic_op_t)op,
                                    null_arg ? NULL : v, out,
                                    (dk_memory_order)mo);
        }
        if (valid) {
            FUZZ_CHECK(rc == 0 && get(out, w) == cur);
            u128 arg = op_needs_arg(op) ? get(v, w) : 0;
            put(s->model + off, w, apply_op(op, cur, arg) & m);
        }
        break;
    }
    case 3: {
        bool weak = fuzz_u8(in) & 1;
        if (fuzz_u8(in) & 1 && target) {
            put(e, w, cur); /* an expected value that matches */
        }
        uint8_t e_in[16];
        memcpy(e_in, e, 16);
        valid = target && model_valid_fail(mo2, mo);
        if (valid && unchecked) {
            rc = dk__atomic_cmpxchg_raw(p, w, e, v, weak) ? 1 : 0;
        } else {
            rc = dk_atomic_cmpxchg(p, w, e, v, weak, (dk_memory_order)mo,
                                   (dk_memory_order)mo2);
        }
        if (valid) {
            bool equal = get(e_in, w) == cur;
            FUZZ_CHECK(rc == 0 || rc == 1);
            if (rc == 1) {
                FUZZ_CHECK(equal);
                put(s->model + off, w, get(v, w));
            } else {
                /* A weak CAS may fail spuriously, leaving e as it was,
                 * which then equals the value seen anyway. */
                FUZZ_CHECK(!equal || weak);
                FUZZ_CHECK(get(e, w) == cur);
            }
            FUZZ_CHECK(memcmp(e + w, e_in + w, 16 - w) == 0);
        } else {
            FUZZ_CHECK(memcmp(e, e_in, 16) == 0);
        }
        break;
    }
    default: {
        int op = (int)(fuzz_u8(in) % 6) - 1;
        unsigned index = fuzz_u8(in) % 4 == 0 ? fuzz_u32(in) : fuzz_u8(in);
        valid = target && known(mo) && op >= DK_ABIT_TEST &&
                op <= DK_ABIT_RESET && (size_t)index < 8 * w &&
                (op != DK_ABIT_TEST || model_valid_load(mo));
        rc = dk_atomic_bit(p, w, (dk_atomic_bit_op_t)op, index,
                           (dk_memory_order)mo);
        if (valid) {
            u128 bit = (u128)1 << index;
            FUZZ_CHECK(rc == ((cur & bit) != 0));
            u128 next = op == DK_ABIT_SET     ? cur | bit
                        : op == DK_ABIT_RESET ? cur & ~bit
                        : op == DK_ABIT_COMPL ? cur ^ bit
                                              : cur;
            put(s->model + off, w, next);
        }
        break;
    }
    }
    /* Nothing is written to `out` on -EINVAL, nor past its width. */
    size_t written = valid && w <= 16 ? w : 0;
    FUZZ_CHECK(valid ? rc >= 0 : rc == -EINVAL);
    for (size_t i = written; i < sizeof out; i++) {
        FUZZ_CHECK(out[i] == 0xa5);
    }
    check_mem(s);
}

/* The calls the binding makes once it has checked width, alignment and
 * orders itself: widths 1, 2, 4, 8, aligned, valid orders. */
static void
w_op(struct state *s, fuzz_in_t *in, uint8_t code)
{
    unsigned w = 1u << (fuzz_u8(in) % 4);
    size_t off = (fuzz_u8(in) % (BUF / w)) * w;
    uint8_t *p = s->mem + off;
    u128 m = mask_of(w);
    u128 cur = get(s->model + off, w);
    uint64_t arg = fuzz_u64(in);
    static const dk_memory_order loads[] = {DK_MO_RELAXED, DK_MO_CONSUME,
                                            DK_MO_ACQUIRE, DK_MO_SEQ_CST};
    static const dk_memory_order stores[] = {DK_MO_RELAXED, DK_MO_RELEASE,
                                             DK_MO_SEQ_CST};
    uint8_t o = fuzz_u8(in);
    switch (code % 4) {
    case 0:
        FUZZ_CHECK(dk_atomic_load_w(p, w, loads[o % 4]) == (uint64_t)cur);
        break;
    case 1:
        dk_atomic_store_w(p, w, arg, stores[o % 3]);
        put(s->model + off, w, arg);
        break;
    case 2: {
        int op = fuzz_u8(in) % 10;
        uint64_t old = dk_atomic_rmw_w(p, w, (dk_atomic_op_t)op, arg,
                                       (dk_memory_order)(o % 6));
        FUZZ_CHECK(old == (uint64_t)cur);
        put(s->model + off, w, apply_op(op, cur, arg & m) & m);
        break;
    }
    default: {
        uint64_t expected = fuzz_u8(in) & 1 ? (uint64_t)cur : fuzz_u64(in);
        uint64_t e = expected;
        bool ok = dk_atomic_cas_w(p, w, &e, arg, false, DK_MO_SEQ_CST,
                                  DK_MO_SEQ_CST);
        FUZZ_CHECK(ok == ((expected & (uint64_t)m) == (uint64_t)cur));
        if (ok) {
            put(s->model + off, w, arg);
        } else {
            FUZZ_CHECK(e == (uint64_t)cur);
        }
        break;
    }
    }
    check_mem(s);
}

/* The typed 32- and 64-bit calls behind sync.AtomicU32/AtomicU64. */
static void
typed_op(struct state *s, fuzz_in_t *in, uint8_t code)
{
    bool wide = fuzz_u8(in) & 1;
    size_t w = wide ? 8 : 4;
    size_t off = (fuzz_u8(in) % (BUF / w)) * w;
    void *p = s->mem + off;
    u128 cur = get(s->model + off, w);
    uint64_t v = fuzz_u64(in);
    if (!wide) {
        v = (uint32_t)v;
    }
    uint8_t o = fuzz_u8(in);
    dk_memory_order any = (dk_memory_order)(o % 6);
    dk_memory_order load = o & 1 ? DK_MO_ACQUIRE : DK_MO_SEQ_CST;
    dk_memory_order store = o & 1 ? DK_MO_RELEASE : DK_MO_RELAXED;
    uint64_t old, next = (uint64_t)cur;
    switch (code % 5) {
    case 0:
        old = wide ? dk_atomic_u64_load(p, load) : dk_atomic_u32_load(p, load);
        break;
    case 1:
        wide ? dk_atomic_u64_store(p, v, store)
             : dk_atomic_u32_store(p, (uint32_t)v, store);
        old = (uint64_t)cur;
        next = v;
        break;
    case 2:
        old = wide ? dk_atomic_u64_exchange(p, v, any)
                   : dk_atomic_u32_exchange(p, (uint32_t)v, any);
        next = v;
        break;
    case 3:
        old = wide ? dk_atomic_u64_fetch_add(p, v, any)
                   : dk_atomic_u32_fetch_add(p, (uint32_t)v, any);
        next = (uint64_t)((cur + v) & mask_of(w));
        break;
    default: {
        bool weak = o & 0x80;
        uint64_t e = fuzz_u8(in) & 1 ? (uint64_t)cur : v ^ 1;
        uint64_t e_in = e;
        bool ok;
        if (wide) {
            ok = dk_atomic_u64_cas(p, &e, v, weak, DK_MO_ACQ_REL,
                                   DK_MO_ACQUIRE);
        } else {
            uint32_t e32 = (uint32_t)e;
            e_in = e32;
            ok = dk_atomic_u32_cas(p, &e32, (uint32_t)v, weak, DK_MO_SEQ_CST,
                                   DK_MO_RELAXED);
            e = e32;
        }
        FUZZ_CHECK(!ok || e_in == (uint64_t)cur);
        FUZZ_CHECK(ok || weak || e_in != (uint64_t)cur);
        FUZZ_CHECK(e == (uint64_t)cur);
        old = (uint64_t)cur;
        next = ok ? v : (uint64_t)cur;
        break;
    }
    }
    FUZZ_CHECK(old == (uint64_t)cur);
    put(s->model + off, w, next);
    check_mem(s);
}

static void
order_predicates(fuzz_in_t *in)
{
    int a = (int)(int8_t)fuzz_u8(in), b = (int)(int8_t)fuzz_u8(in);
    FUZZ_CHECK(dk_memory_order_valid_load(a) == model_valid_load(a));
    FUZZ_CHECK(dk_memory_order_valid_store(a) == model_valid_store(a));
    FUZZ_CHECK(dk_memory_order_valid_fail(a, b) == model_valid_fail(a, b));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    struct state s;
    s.mem = aligned_alloc(32, BUF);
    FUZZ_CHECK(s.mem != NULL);
    fuzz_bytes(&in, s.model, BUF);
    memcpy(s.mem, s.model, BUF);
    for (int i = 0; i < MAX_OPS && fuzz_more(&in); i++) {
        uint8_t code = fuzz_u8(&in);
        if (code < 150) {
            raw_op(&s, &in, code);
        } else if (code < 220) {
            w_op(&s, &in, code);
        } else if (code < 240) {
            typed_op(&s, &in, code);
        } else {
            order_predicates(&in);
        }
    }
    free(s.mem);
    return 0;
}
