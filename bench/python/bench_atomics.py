"""Per-operation cost of inc, load and cmpxchg_strong on atomic() and
atomicview() objects: dispatchkit.atomics vs the atomics package vs a plain
`x += 1` on a Python int, in one run."""
import sys
import timeit

import dispatchkit.atomics as ours

SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def emit(workload, impl, value, unit):
    print(f"{workload}\t{impl}\t{value:.1f}\t{unit}", flush=True)


def per_op(stmt, n, obj):
    # `a` is a local of the timing loop, as `x` is for the plain increment,
    # so both pay the same (fast) name lookup.
    return min(timeit.repeat(stmt, setup="a = _obj", globals={"_obj": obj},
                             number=n, repeat=5)) / n * 1e9


def main():
    try:
        import atomics as peer
    except ImportError:
        peer = None
    n_ours = 1_000_000 // SCALE
    n_peer = 20_000 // SCALE
    plain = min(timeit.repeat("x += 1", setup="x = 0", number=n_ours,
                              repeat=5)) / n_ours * 1e9
    keep = []
    for kind in ("atomic", "atomicview"):
        objs = []
        for lib, n in ((ours, n_ours), (peer, n_peer)):
            if lib is None:
                continue
            if kind == "atomic":
                obj = lib.atomic(width=8, atype=lib.INT)
            else:
                ctx = lib.atomicview(buffer=bytearray(8), atype=lib.INT)
                obj = ctx.__enter__()
                keep.append(ctx)  # an open context must stay referenced
            objs.append((lib, obj, n))
        for op, stmt in (("inc", "a.inc()"), ("load", "a.load()"),
                         ("cmpxchg_strong", "a.cmpxchg_strong(0, 0)")):
            name = f"{kind}.{op}"
            for lib, obj, n in objs:
                impl = "dispatchkit" if lib is ours else "atomics (cffi)"
                emit(name, impl, per_op(stmt, n, obj), "ns/op")
            emit(name, "plain x += 1", plain, "ns/op")
    for ctx in keep:
        ctx.__exit__(None, None, None)


if __name__ == "__main__":
    main()
