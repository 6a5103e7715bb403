"""inspect.signature() on every public callable of every dispatchkit
module (the C functions and methods carry text signatures), and keyword
calls that prove the parameter names are the ones the functions accept."""
import importlib
import inspect
import mmap
import os
import threading

import pytest

import dispatchkit as dk
import dispatchkit.atomics as atomics
import dispatchkit.sync as sync
import dispatchkit.zerobuffer as zb
from shm_names import unlink_all, zerobuffer_paths

MODULES = ["dispatchkit", "dispatchkit.sync", "dispatchkit.atomics",
           "dispatchkit.atomics.base", "dispatchkit.atomics.view",
           "dispatchkit.atomics.ctx", "dispatchkit.zerobuffer",
           "dispatchkit.zerobuffer.types", "dispatchkit.zerobuffer.duplex",
           "dispatchkit.asyncio"]

# Classes whose constructor has no signature, on purpose: the view classes
# come from atomicview() and cannot be constructed.
NO_CONSTRUCTOR = {"AtomicView", "AtomicBytesView", "AtomicIntegralView",
                  "AtomicIntView", "AtomicUintView"}

DUNDERS = {"__call__", "__enter__", "__exit__", "__bytes__", "__init__"}


def public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    return names


def ours(cls):
    return cls.__module__.startswith("dispatchkit")


def callables():
    """(qualified name, object) for every public function, class and
    method defined by dispatchkit (inherited builtins left out)."""
    seen = set()
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in public_names(module):
            obj = getattr(module, name)
            if id(obj) in seen or inspect.ismodule(obj) or not callable(obj):
                continue
            seen.add(id(obj))
            qual = f"{modname}.{name}"
            if not isinstance(obj, type):
                yield qual, obj
                continue
            if issubclass(obj, BaseException):
                # Python classes over the builtin exceptions, whose
                # constructors have no signature either.
                continue
            if obj.__name__ not in NO_CONSTRUCTOR:
                yield qual, obj
            for klass in obj.__mro__:
                if not ours(klass):
                    continue
                for attr, value in vars(klass).items():
                    if attr.startswith("_") and attr not in DUNDERS:
                        continue
                    if isinstance(value, (staticmethod, classmethod)):
                        value = getattr(obj, attr)
                    if callable(value) and not isinstance(value, type):
                        yield f"{qual}.{attr}", value


ALL = list(callables())


def test_the_walk_reaches_the_extension():
    names = {q for q, _ in ALL}
    for q in ("dispatchkit.Queue.run_async", "dispatchkit.apply",
              "dispatchkit.sync.Mutex.acquire_ns",
              "dispatchkit.atomics.base.AtomicInt.fetch_add",
              "dispatchkit.zerobuffer.Writer.write_frame",
              "dispatchkit.Once.__call__", "dispatchkit.IOChannel.read"):
        assert q in names
    assert len(ALL) > 300


@pytest.mark.parametrize("qual,obj", ALL, ids=[q for q, _ in ALL])
def test_signature(qual, obj):
    sig = inspect.signature(obj)
    assert isinstance(sig, inspect.Signature)


def kw(fn, **kwargs):
    """fn(**kwargs), after checking that fn's signature names them."""
    inspect.signature(fn).bind(**kwargs)
    return fn(**kwargs)


def test_dispatch_keywords():
    q = kw(dk.Queue, label="sig", concurrent=False, qos=0,
           relative_priority=0, target=None, inactive=False)
    assert q.label == "sig"
    done = threading.Event()
    kw(q.after, delay_seconds=0.0, func=done.set)
    assert done.wait(10)
    kw(q.set_target_queue, target=None)
    kw(q.set_context, value=1, finalizer=None)
    assert kw(dk.Queue.global_queue, priority=0).is_concurrent
    g = dk.Group()
    assert kw(g.wait, timeout=0) is True
    assert kw(g.wait, timeout_seconds=0) is True
    assert kw(g.wait, timeout=None, timeout_seconds=None) is True
    s = kw(dk.Semaphore, value=1)
    assert kw(s.wait, timeout_seconds=0) is True
    assert kw(s.wait, timeout=0) is False
    out = []
    kw(dk.apply, iterations=3, func=out.append, queue=None)
    assert sorted(out) == [0, 1, 2]
    assert kw(dk.walltime, timestamp=0.0, delta_seconds=0.0) > 0
    assert kw(dk.drain_main_queue, timeout=0) == 0
    w = kw(dk.Workloop, label="w", inactive=False)
    kw(w.run_sync, func=lambda: None, qos=0x15)
    d = kw(dk.Data, bytes=b"abcd")
    assert bytes(kw(d.subrange, offset=1, length=2)) == b"bc"
    assert bytes(kw(dk.Data, data=b"xy")) == b"xy"
    t = kw(dk.Timer, interval=1.0, handler=lambda: None, queue=None,
           start_delay=0.0, leeway=0.0, repeating=True)
    kw(t.set_timer, interval=2.0, start_delay=0.0, leeway=0.0,
       repeating=False)
    t.cancel()
    assert repr(kw(dk.Once)) == "<dispatchkit.Once done=False>"
    # Positional-only parameters refuse keywords, as their signature says.
    assert inspect.signature(q.run_async).parameters["func"].kind is \
        inspect.Parameter.POSITIONAL_ONLY
    with pytest.raises(TypeError):
        q.run_async(func=lambda: None)


def test_io_keywords():
    r, w = os.pipe()
    try:
        got = []
        done = threading.Event()

        def cb(data, error):
            got.append((bytes(data), error))
            done.set()

        kw(dk.write_async, fd=w, data=b"hi", callback=lambda *a: None,
           queue=None)
        kw(dk.read_async, fd=r, length=2, handler=cb)
        assert done.wait(10) and got[0] == (b"hi", 0)
        ch = kw(dk.IOChannel, fd=r, io_type=dk.IO_STREAM, queue=None,
                cleanup_handler=None)
        kw(ch.set_interval, interval_ns=1000000, flags=0, strict=False)
        kw(ch.close, stop=True)
    finally:
        os.close(r)
        os.close(w)


def test_sync_keywords():
    buf = mmap.mmap(-1, 64)
    m = kw(sync.Mutex, buffer=buf, shared=False)
    assert kw(m.acquire_ns, timeout_ns=0, spin=0) is True
    m.release()
    buf2 = mmap.mmap(-1, 64)
    s = kw(sync.Semaphore, buffer=buf2, initial=1, shared=False,
           fastipc_compat=False)
    assert kw(s.wait, blocking=False, timeout_ns=0, spin=0) is True
    kw(s.post, n=2)
    assert s.value() == 2
    with pytest.raises(TypeError):
        s.post(count=1)  # the name is n
    word = bytearray(8)
    f = kw(sync.FutexWord, buffer=word, shared=False)
    assert kw(f.wait, expected=1, timeout_ns=0) is False
    assert kw(f.wake, n=1) == 0
    a = kw(sync.AtomicU32, buffer=word)
    assert kw(a.cas, expected=0, new=5) is True and a.load() == 5
    e = kw(sync.Event, buffer=bytearray(4), shared=False)
    assert kw(e.wait, timeout_ns=0) is False


def test_atomics_keywords():
    a = kw(atomics.base.AtomicInt, width=4)
    order = atomics.MemoryOrder.SEQ_CST
    kw(a.store, desired=5, order=order)
    assert kw(a.load, order=order) == 5
    assert kw(a.fetch_add, value=2, order=order) == 5
    assert kw(a.exchange, desired=1, order=order) == 7
    r = kw(a.cmpxchg_strong, expected=1, desired=2, success=order,
           failure=atomics.MemoryOrder.RELAXED)
    assert r.success and a.load() == 2
    assert kw(a.bit_test, index=1, order=order) is True
    kw(a.inc, order=order)
    assert a.load() == 3
    assert inspect.signature(a.load).parameters["order"].default is order
    b = kw(atomics.base.AtomicBytes, width=2)
    kw(b.store, desired=b"ab")
    assert kw(atomics.base.AtomicIntegral, width=1, is_signed=False).signed \
        is False
    x = kw(atomics.base.Atomic, width=1, is_integral=True, is_signed=True)
    assert x.width == 1
    assert kw(atomics.CmpxchgResult, success=True, expected=1).expected == 1


def test_zerobuffer_keywords():
    n = f"dksig-{os.getpid()}"
    try:
        with kw(zb.Reader, name=n, config=zb.BufferConfig(0, 4096)) as r:
            with kw(zb.Writer, name=n) as w:
                kw(w.write_frame, data=b"x")
                f = kw(r.read_frame, timeout=5.0)
                kw(r.release_frame, frame=f)
    finally:
        unlink_all(zerobuffer_paths(n))
