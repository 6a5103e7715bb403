"""Data and Workloop: every row of the seed's tables, zero-copy sharing,
region structure, properties against Python slicing, misuse."""
import array
import gc
import mmap
import threading
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

import dispatchkit as dk


# ---- Data --------------------------------------------------------------

def test_data_basics_from_seed():
    d = dk.Data(b"Hello, World!")
    assert len(d) == 13 and d.size == 13
    assert bytes(d) == b"Hello, World!"
    assert bytes(dk.Data(b"Hello, ").concat(dk.Data(b"World!"))) == \
        b"Hello, World!"
    assert bytes(dk.Data(b"The quick brown fox").subrange(4, 5)) == b"quick"
    assert len(dk.Data()) == 0 and bytes(dk.Data(None)) == b""


@pytest.mark.parametrize("src", [
    b"abc", bytearray(b"abc"), memoryview(b"abc"), array.array("B", b"abc"),
])
def test_data_accepts_any_bytes_like(src):
    d = dk.Data(src)
    assert bytes(d) == b"abc"
    assert bytes(dk.Data(data=src)) == b"abc"


def test_data_copies_its_input_once():
    src = bytearray(b"abc")
    d = dk.Data(src)
    src[0] = ord("X")
    assert bytes(d) == b"abc"  # immutable: a copy was taken


def test_data_from_mmap():
    m = mmap.mmap(-1, 4096)
    m[:5] = b"mmap!"
    assert bytes(dk.Data(m).subrange(0, 5)) == b"mmap!"
    m.close()


def test_data_rejects_non_bytes():
    for bad in ("text", 42, object()):
        with pytest.raises(TypeError):
            dk.Data(bad)
    with pytest.raises(TypeError):
        dk.Data(b"a").concat(None)
    with pytest.raises(TypeError):
        dk.Data(b"a").concat(b"b")


def test_concat_and_subrange_share_memory():
    big = dk.Data(bytes(50 * 1024 * 1024))
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        parts = [big.subrange(i * 1024 * 1024, 10 * 1024 * 1024)
                 for i in range(20)]
        joined = parts[0]
        for p in parts[1:]:
            joined = joined.concat(p)
        grew = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert joined.size == 200 * 1024 * 1024
    # Twenty 10 MiB slices and a 200 MiB concatenation cost no byte copies:
    # only small Python wrappers.
    assert grew < 64 * 1024


def test_region_structure_and_copy_region():
    d = dk.Data(b"hello ").concat(dk.Data(b"world"))
    assert d.regions == 2
    region, offset = d.copy_region(7)
    assert bytes(region) == b"world" and offset == 6
    region, offset = d.copy_region(0)
    assert bytes(region) == b"hello " and offset == 0
    region, offset = d.copy_region(11)
    assert bytes(region) == b"" and offset == 11
    with pytest.raises(ValueError, match="location out of bounds for empty"):
        dk.Data().copy_region(0)


def test_apply_one_call_per_region():
    d = dk.Data(b"ab").concat(dk.Data(b"cd")).concat(dk.Data(b"ef"))
    calls = []
    assert d.apply(lambda off, chunk: calls.append((off, chunk))) is True
    assert calls == [(0, b"ab"), (2, b"cd"), (4, b"ef")]
    calls.clear()
    assert d.apply(lambda off, chunk: (calls.append(off), False)[1]) is False
    assert calls == [0]
    assert dk.Data().apply(lambda o, c: 1 / 0) is True  # empty: no call

    def boom(off, chunk):
        raise KeyError(off)

    with pytest.raises(KeyError):
        d.apply(boom)
    with pytest.raises(TypeError):
        d.apply(None)


def test_subrange_clipping_and_bad_values():
    d = dk.Data(b"0123456789")
    assert bytes(d.subrange(8, 100)) == b"89"
    assert bytes(d.subrange(10, 1)) == b""
    assert bytes(d.subrange(3, 0)) == b""
    with pytest.raises(OverflowError):
        d.subrange(-1, 2)
    with pytest.raises(OverflowError):
        d.subrange(1, -2)
    with pytest.raises(TypeError):
        d.subrange("1", 2)


def test_buffer_protocol_equality_hash():
    d = dk.Data(b"ab").concat(dk.Data(b"cd"))
    mv = memoryview(d)
    assert mv.readonly and mv.tobytes() == b"abcd"
    assert d == dk.Data(b"abcd") and d != dk.Data(b"abce")
    assert hash(d) == hash(dk.Data(b"abcd"))
    assert {d: 1}[dk.Data(b"abcd")] == 1
    assert "size=4" in repr(d)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)),
                max_size=5))
def test_property_concat_subrange_match_bytes(pieces, cuts):
    d = dk.Data(pieces[0])
    ref = pieces[0]
    for p in pieces[1:]:
        d = d.concat(dk.Data(p))
        ref += p
    assert bytes(d) == ref and len(d) == len(ref)
    for off, length in cuts:
        d = d.subrange(off, length)
        ref = ref[off:off + length]
        assert bytes(d) == ref
        if ref:
            loc = off % len(ref)
            region, start = d.copy_region(loc)
            assert start <= loc < start + len(region)
            assert bytes(region) == ref[start:start + len(region)]
    chunks = []
    d.apply(lambda o, c: chunks.append((o, c)))
    assert b"".join(c for _, c in chunks) == ref


# ---- Workloop ----------------------------------------------------------

def test_workloop_sample_and_properties():
    wl = dk.Workloop("com.example.workloop")
    out = []
    wl.run_async(lambda: out.append("async"))
    wl.run_sync(lambda: out.append("sync"))
    assert out == ["async", "sync"]
    assert wl.label == "com.example.workloop" and wl.is_inactive is False


def test_inactive_workloop_rules():
    wl = dk.Workloop("lazy", inactive=True)
    assert wl.is_inactive
    with pytest.raises(RuntimeError, match="inactive workloop"):
        wl.run_async(lambda: None)
    with pytest.raises(RuntimeError, match="inactive workloop"):
        wl.run_sync(lambda: None)
    with pytest.raises(RuntimeError, match="inactive workloop"):
        wl.run_async(None)  # the inactive check comes first
    wl.set_autorelease_frequency(dk.AUTORELEASE_FREQUENCY_NEVER)
    with pytest.raises(ValueError):
        wl.set_autorelease_frequency(7)
    wl.activate()
    with pytest.raises(RuntimeError, match="only be set on inactive"):
        wl.set_autorelease_frequency(dk.AUTORELEASE_FREQUENCY_INHERIT)
    with pytest.raises(RuntimeError, match="not created as inactive"):
        wl.activate()
    with pytest.raises(RuntimeError, match="not created as inactive"):
        dk.Workloop("active").activate()
    out = []
    wl.run_sync(lambda: out.append(1))
    assert out == [1]


def test_workloop_runs_higher_qos_first():
    wl = dk.Workloop("prio")
    gate = threading.Event()
    order = []
    done = dk.Semaphore(0)
    wl.run_async(lambda: gate.wait(5))  # hold the workloop
    wl.run_async(lambda: order.append("bg"), qos=dk.QOS_CLASS_BACKGROUND)
    wl.run_async(lambda: order.append("default"))
    wl.run_async(lambda: order.append("ui"),
                 qos=dk.QOS_CLASS_USER_INTERACTIVE)
    wl.run_async(lambda: order.append("utility"), qos=dk.QOS_CLASS_UTILITY)
    wl.run_async(lambda: order.append("ui2"),
                 qos=dk.QOS_CLASS_USER_INTERACTIVE)
    wl.run_async(done.signal, qos=dk.QOS_CLASS_BACKGROUND)
    gate.set()
    assert done.wait(5)
    assert order == ["ui", "ui2", "default", "utility", "bg"]


def test_workloop_run_sync_reraises_and_detects_self_deadlock():
    wl = dk.Workloop("w")

    def boom():
        raise ValueError("from workloop")

    with pytest.raises(ValueError, match="from workloop"):
        wl.run_sync(boom)
    errors = []

    def inner():
        try:
            wl.run_sync(lambda: None)
        except RuntimeError as e:
            errors.append(e)

    wl.run_sync(inner)
    assert len(errors) == 1


def test_workloop_misuse():
    wl = dk.Workloop("m")
    with pytest.raises(TypeError, match="callable"):
        wl.run_async(42)
    with pytest.raises(ValueError):
        wl.run_async(lambda: None, qos=0x42)
    with pytest.raises(TypeError):
        dk.Workloop(b"bytes")
    with pytest.raises(TypeError):
        dk.Group().run_async(wl, lambda: None)  # not a Queue, as in cygcd


def test_dropping_inactive_workloop_runs_nothing_bad():
    wl = dk.Workloop("drop", inactive=True)
    del wl
    gc.collect()
