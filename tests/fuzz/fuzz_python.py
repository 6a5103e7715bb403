"""Fuzz target (atheris): the buffer-taking constructors of dispatchkit.sync
and dispatchkit.atomics, where the binding validates before the core is
reached, on arbitrary buffers: bytearray, bytes (read-only), memoryview
slices at any offset (misaligned), strided and multi-dimensional views,
anonymous mmap, array.array, any length and contents; then a few
non-blocking operations on whatever was accepted. Only the documented
exceptions may come out (ValueError, TypeError, BufferError,
OverflowError, RuntimeError for a lock this thread does not hold or
already holds, and the atomics package's own); anything else, or a
crash, is a finding. The functions here are instrumented too, so getting
past a constructor counts as new coverage.

    python tests/fuzz/fuzz_python.py -max_total_time=30 CORPUS_DIR...
"""
import array
import mmap
import sys

import atheris

with atheris.instrument_imports():
    import dispatchkit.atomics as atomics
    import dispatchkit.sync as sync

ALLOWED = (ValueError, TypeError, BufferError, OverflowError,
           atomics.AlignmentError, atomics.MemoryOrderError,
           atomics.UnsupportedOperationException,
           atomics.UnsupportedWidthException)

ATYPES = [atomics.ANY, atomics.INTEGRAL, atomics.BYTES, atomics.INT,
          atomics.UINT, None, int]

_MAP = mmap.mmap(-1, 4096)


@atheris.instrument_func
def make_buffer(fdp):
    """A buffer object of some kind, length and alignment."""
    kind = fdp.ConsumeIntInRange(0, 7)
    n = fdp.ConsumeIntInRange(0, 96)
    raw = bytearray(fdp.ConsumeBytes(n).ljust(n, b"\0"))
    off = fdp.ConsumeIntInRange(0, 17)
    if kind == 0:
        return raw
    if kind == 1:
        return bytes(raw)
    if kind == 2:
        return memoryview(raw)[off:]
    if kind == 3:
        return memoryview(raw)[::2]
    if kind == 4:
        _MAP[0:len(raw)] = raw
        return memoryview(_MAP)[off:off + n]
    if kind == 5:
        return array.array("I", raw[:len(raw) // 4 * 4])
    if kind == 6:
        m = memoryview(raw)
        ok = len(raw) >= 2 and len(raw) % 2 == 0
        return m.cast("B", (2, len(raw) // 2)) if ok else m
    return memoryview(bytes(raw))[off:]


@atheris.instrument_func
def sync_object(fdp, buf):
    which = fdp.ConsumeIntInRange(0, 5)
    if which == 0:
        m = sync.Mutex(buf, shared=fdp.ConsumeBool())
        if m.try_acquire():
            m.last_acquired_ns()
            m.release()
        m.owner_pid()
        m.magic()
        try:
            m.release()
        except RuntimeError:
            pass  # documented: this process does not hold it
    elif which == 1:
        initial = fdp.ConsumeIntInRange(-2, 2**33) \
            if fdp.ConsumeBool() else None
        s = sync.Semaphore(buf, initial=initial)
        s.post(fdp.ConsumeIntInRange(0, 2**32 + 2))
        s.wait(blocking=False)
        s.value()
        s.last_acquired_ns()
    elif which == 2:
        e = sync.Event(buf)
        e.is_set()
        e.wait(timeout_ns=0)
        e.set()
        e.clear()
    elif which == 3:
        w = sync.FutexWord(buf)
        w.wake(fdp.ConsumeIntInRange(0, 4))
        w.store_release(w.load_acquire())
    elif which == 4:
        a = sync.AtomicU32(buf)
        a.cas(a.load(), fdp.ConsumeIntInRange(-1, 2**32))
    else:
        a = sync.AtomicU64(buf)
        a.store(fdp.ConsumeIntInRange(-1, 2**64))


@atheris.instrument_func
def atomic_object(fdp, buf):
    atype = fdp.PickValueInList(ATYPES)
    if fdp.ConsumeBool():
        a = atomics.atomic(width=fdp.ConsumeIntInRange(-2, 20), atype=atype)
        if hasattr(a, "load"):  # ANY objects have no operations
            a.load()
        return
    with atomics.atomicview(buffer=buf, atype=atype) as a:
        if not hasattr(a, "load"):
            return
        v = a.load()
        if not a.readonly:
            a.store(v)
            if atype in (atomics.INT, atomics.UINT):
                a.fetch_add(fdp.ConsumeIntInRange(-2**70, 2**70))


@atheris.instrument_func
def test_one(data):
    fdp = atheris.FuzzedDataProvider(data)
    buf = make_buffer(fdp)
    try:
        if fdp.ConsumeBool():
            sync_object(fdp, buf)
        else:
            atomic_object(fdp, buf)
    except ALLOWED:
        pass


def main():
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
