"""Misuse that would crash libdispatch raises a clear exception instead."""
import gc

import pytest

import dispatchkit as dk


def test_resume_without_suspend():
    q = dk.Queue("r")
    with pytest.raises(RuntimeError, match="over-resume"):
        q.resume()
    q.suspend()
    q.resume()
    with pytest.raises(RuntimeError):
        q.resume()


def test_dropping_suspended_queue_drains_its_work():
    done = dk.Semaphore(0)
    q = dk.Queue("s")
    q.suspend()
    q.suspend()
    q.run_async(done.signal)
    del q
    gc.collect()
    assert done.wait(5)


def test_dropping_inactive_queue_drains_its_work():
    done = dk.Semaphore(0)
    q = dk.Queue("i", inactive=True)
    q.run_async(done.signal)
    del q
    gc.collect()
    assert done.wait(5)


def test_activate_twice_or_on_active_queue():
    with pytest.raises(RuntimeError, match="not created as inactive"):
        dk.Queue("a").activate()
    q = dk.Queue("b", inactive=True)
    q.activate()
    with pytest.raises(RuntimeError):
        q.activate()


def test_unbalanced_group_leave():
    g = dk.Group()
    with pytest.raises(RuntimeError, match="unbalanced"):
        g.leave()
    g.enter()
    g.leave()
    with pytest.raises(RuntimeError):
        g.leave()


def test_group_dropped_with_outstanding_enter_warns_not_crashes(unraisable):
    g = dk.Group()
    g.enter()
    with pytest.warns(RuntimeWarning, match="unmatched enter"):
        del g
        gc.collect()


def refused_inside(queue, call):
    """Whether call, made from an item running on queue, raised
    RuntimeError (once: the item runs once)."""
    refused = []

    def inner():
        try:
            call()
        except RuntimeError:
            refused.append(1)

    queue.run_sync(inner)
    return refused == [1]


def test_run_sync_on_current_serial_queue_is_detected():
    q = dk.Queue("self")
    errors = []

    def inner():
        try:
            q.run_sync(lambda: None)
        except RuntimeError as e:
            errors.append(str(e))

    q.run_sync(inner)
    done = dk.Semaphore(0)
    q.run_async(lambda: (inner(), done.signal()))
    assert done.wait(5)
    assert len(errors) == 2 and "deadlock" in errors[0]


def test_sync_on_queue_targeting_current_queue_is_detected():
    parent = dk.Queue("p")
    child = dk.Queue("c", target=parent)
    assert refused_inside(parent, lambda: child.run_sync(lambda: None))


def test_barrier_sync_inside_own_concurrent_queue_is_detected():
    q = dk.Queue("c", concurrent=True)
    out = []

    def inner():
        q.run_sync(lambda: out.append("plain sync ok"))
        try:
            q.barrier_sync(lambda: None)
        except RuntimeError:
            out.append("barrier refused")

    q.run_sync(inner)
    assert out == ["plain sync ok", "barrier refused"]


def test_apply_on_current_serial_queue_is_detected():
    q = dk.Queue("s")
    assert refused_inside(q, lambda: dk.apply(3, lambda i: None, queue=q))


def test_set_target_queue_after_activation():
    q = dk.Queue("lazy", inactive=True)
    q.activate()
    with pytest.raises(RuntimeError, match="after it has been activated"):
        q.set_target_queue(dk.Queue.global_queue())


def test_set_target_queue_cycle_and_global():
    a = dk.Queue("a")
    b = dk.Queue("b", target=a)
    with pytest.raises(ValueError, match="cycle"):
        a.set_target_queue(b)
    with pytest.raises(RuntimeError):
        dk.Queue.global_queue().set_target_queue(a)


@pytest.mark.parametrize("bad", [None, 42, "not callable"])
def test_non_callables_rejected(bad):
    q = dk.Queue("x")
    g = dk.Group()
    for call in (q.run_async, q.run_sync, q.barrier_async, q.barrier_sync,
                 dk.Once()):
        with pytest.raises(TypeError, match="callable"):
            call(bad)
    with pytest.raises(TypeError):
        q.after(0.1, bad)
    with pytest.raises(TypeError):
        g.run_async(q, bad)
    with pytest.raises(TypeError):
        g.notify(q, bad)
    if bad is not None:  # finalizer=None is the default
        with pytest.raises(TypeError, match="callable"):
            q.set_context(1, finalizer=bad)


@pytest.mark.parametrize("bad", [None, 42, "q", object()])
def test_non_queues_rejected(bad):
    g = dk.Group()
    with pytest.raises(TypeError, match="Queue"):
        g.run_async(bad, lambda: None)
    with pytest.raises(TypeError, match="Queue"):
        g.notify(bad, lambda: None)
    if bad is not None:
        with pytest.raises(TypeError):
            dk.Queue("t", target=bad)
        with pytest.raises(TypeError):
            dk.Queue("t", inactive=True).set_target_queue(bad)


def test_negative_semaphore():
    with pytest.raises(ValueError, match=">= 0"):
        dk.Semaphore(-5)


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"),
                                   float("-inf")])
def test_bad_delays(delay):
    with pytest.raises(ValueError):
        dk.Queue("d").after(delay, lambda: None)


def test_bad_label_type():
    with pytest.raises(TypeError):
        dk.Queue(b"bytes-label")


def test_drain_main_queue_off_main_thread():
    import threading
    errors = []

    def worker():
        try:
            dk.drain_main_queue()
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert len(errors) == 1
