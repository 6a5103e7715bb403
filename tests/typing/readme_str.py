"""The atomics seed README's "Special Methods" (str of an atomic and of a view) snippet with only the
import changed, type-checked by make lint-python."""
import dispatchkit.atomics as atomics

a = atomics.atomic(width=4, atype=atomics.INT)
print(a)  # AtomicInt(value=0, width=4, readonly=False, signed=True)

buf = bytearray(2)
with atomics.atomicview(buffer=buf, atype=atomics.BYTES) as a:
    print(a)  # AtomicBytesView(value=b'\x00\x00', width=2, readonly=True)
