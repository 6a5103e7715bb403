"""Reprs that show state on every public object, and the context managers
that the standard library has for the same things: `with sem:` for both
semaphores (wait, then signal/post), `with group:` as enter/leave."""
import mmap
import os
import re
import signal
import threading
import uuid

import pytest

import dispatchkit as dk
import dispatchkit.sync as sync
import dispatchkit.zerobuffer as zb
from shm_names import fastipc_paths, unlink_all, zerobuffer_paths


def test_group_repr_and_with():
    g = dk.Group()
    assert repr(g) == "<dispatchkit.Group count=0>"
    with g as same:
        assert same is g
        assert repr(g) == "<dispatchkit.Group count=1>"
        assert g.wait(0) is False  # the block is an outstanding task
    assert repr(g) == "<dispatchkit.Group count=0>"
    assert g.wait(0) is True
    with pytest.raises(ValueError):
        with g:
            raise ValueError("left even on an exception")
    assert g.count == 0


def test_group_with_notifies_when_the_block_ends():
    g = dk.Group()
    q = dk.Queue("notify")
    fired = threading.Event()
    with g:
        g.notify(q, fired.set)
        assert not fired.wait(0.05)
    assert fired.wait(10)


def test_dispatch_semaphore_repr_and_with():
    s = dk.Semaphore(1)
    assert repr(s) == "<dispatchkit.Semaphore value=1>"
    with s as got:
        assert got is True
        assert repr(s) == "<dispatchkit.Semaphore value=0>"
        assert s.wait(0) is False
    assert repr(s) == "<dispatchkit.Semaphore value=1>"
    with pytest.raises(KeyError):
        with s:
            raise KeyError
    assert s.value == 1


def test_dispatch_semaphore_with_blocks_until_signalled():
    s = dk.Semaphore(0)
    inside = threading.Event()

    def body():
        with s:
            inside.set()

    t = threading.Thread(target=body)
    t.start()
    assert not inside.wait(0.05)
    s.signal()
    assert inside.wait(10)
    t.join(10)
    assert s.value == 1  # given back on exit


def test_once_repr():
    o = dk.Once()
    assert repr(o) == "<dispatchkit.Once done=False>"
    o(lambda: None)
    assert repr(o) == "<dispatchkit.Once done=True>"


def test_queue_and_workloop_reprs():
    assert repr(dk.Queue("q")) == "<dispatchkit.Queue 'q' serial>"
    assert repr(dk.Queue("c", concurrent=True, inactive=True)) == \
        "<dispatchkit.Queue 'c' concurrent inactive>"
    assert repr(dk.Workloop("w")) == "<dispatchkit.Workloop 'w'>"


def test_iochannel_repr():
    r, w = os.pipe()
    try:
        ch = dk.IOChannel(r)
        assert repr(ch) == f"<dispatchkit.IOChannel fd={r} stream open>"
        ch.close()
        assert repr(ch) == f"<dispatchkit.IOChannel fd={r} stream closed>"
    finally:
        os.close(r)
        os.close(w)


def test_source_reprs():
    t = dk.Timer(0.5, lambda: None)
    assert repr(t) == "<dispatchkit.Timer interval=0.5 repeating not started>"
    t.start()
    assert repr(t) == "<dispatchkit.Timer interval=0.5 repeating started>"
    t.cancel()
    assert repr(t) == \
        "<dispatchkit.Timer interval=0.5 repeating cancelled>"
    one = dk.Timer(2, lambda: None, repeating=False)
    assert repr(one) == "<dispatchkit.Timer interval=2.0 one-shot not started>"
    sig = dk.SignalSource(signal.SIGUSR2, lambda: None)
    assert repr(sig) == \
        f"<dispatchkit.SignalSource signal={int(signal.SIGUSR2)} not started>"
    r, w = os.pipe()
    try:
        assert repr(dk.ReadSource(r, lambda: None)) == \
            f"<dispatchkit.ReadSource fd={r} not started>"
        assert repr(dk.WriteSource(w, lambda: None)) == \
            f"<dispatchkit.WriteSource fd={w} not started>"
    finally:
        os.close(r)
        os.close(w)
    pid = os.getpid()
    assert repr(dk.ProcessSource(pid, lambda: None)) == \
        f"<dispatchkit.ProcessSource pid={pid} not started>"


def test_sync_semaphore_with():
    buf = mmap.mmap(-1, 64)
    s = sync.Semaphore(buf, initial=1, shared=False)
    assert "value=1" in repr(s)
    with s as got:
        assert got is True
        assert s.value() == 0 and "value=0" in repr(s)
        assert s.wait(blocking=False) is False
    assert s.value() == 1
    with pytest.raises(KeyError):
        with s:
            raise KeyError
    assert s.value() == 1


def test_sync_primitive_reprs_show_state():
    buf = mmap.mmap(-1, 64)
    m = sync.Mutex(buf, shared=False)
    assert re.fullmatch(r"<dispatchkit\.sync\.Mutex buf=0x[0-9a-f]+ "
                        r"shared=0 state=0 owner=0>", repr(m))
    with m:
        assert f"owner={os.getpid()}" in repr(m)
    word = bytearray(8)
    e = sync.Event(word, shared=False)
    assert "set=0" in repr(e)
    e.set()
    assert "set=1" in repr(e)
    a = sync.AtomicU64(bytearray(8))
    a.store(7)
    assert "value=7" in repr(a)


@pytest.fixture
def name():
    n = "dk" + uuid.uuid4().hex[:12]
    yield n
    unlink_all(fastipc_paths(n))


def test_named_reprs_and_named_semaphore_with(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTIPC_PID_DIR", str(tmp_path))
    m = sync.NamedMutex(name)
    assert repr(m) == f"<NamedMutex {name!r} unlocked>"
    with m:
        assert repr(m) == f"<NamedMutex {name!r} owner={os.getpid()}>"
    m.close()
    assert repr(m) == f"<NamedMutex {name!r} closed>"
    e = sync.NamedEvent(name)
    assert repr(e) == f"<NamedEvent {name!r} clear>"
    e.set()
    assert repr(e) == f"<NamedEvent {name!r} set>"
    e.close()
    s = sync.NamedSemaphore(name, initial=2)
    assert repr(s) == f"<NamedSemaphore {name!r} value=2>"
    with s as got:
        assert got is True
        assert repr(s) == f"<NamedSemaphore {name!r} value=1>"
    assert s.value() == 2
    s.close()
    assert repr(s) == f"<NamedSemaphore {name!r} closed>"


def test_zerobuffer_reprs():
    n = f"dkrepr-{os.getpid()}"
    try:
        with zb.Reader(n, zb.BufferConfig(0, 4096)) as r:
            assert repr(r) == f"<Reader {n!r} 0 frames>"
            with zb.Writer(n) as w:
                assert repr(w) == f"<Writer {n!r} 0 frames>"
                w.write_frame(b"abc")
                assert repr(w) == f"<Writer {n!r} 1 frames>"
                with r.read_frame(5) as f:
                    assert "size=3" in repr(f)
                assert repr(r) == f"<Reader {n!r} 1 frames>"
            assert repr(w) == f"<Writer {n!r} closed>"
        assert repr(r) == f"<Reader {n!r} closed>"
    finally:
        unlink_all(zerobuffer_paths(n))
