"""Queue: every row of the seed's Queue table, ordering and exclusion."""
import os
import signal
import threading
import time

import pytest

import dispatchkit as dk


def test_serial_queue_runs_fifo_and_one_at_a_time():
    q = dk.Queue("com.example.serial")
    out, inside, overlaps = [], [0], [0]

    def task(i):
        inside[0] += 1
        if inside[0] != 1:
            overlaps[0] += 1
        out.append(i)
        inside[0] -= 1

    for i in range(5000):
        q.run_async(lambda i=i: task(i))
    q.run_sync(lambda: None)
    assert out == list(range(5000))
    assert overlaps[0] == 0


def test_async_then_sync_order_from_seed():
    q = dk.Queue("example")
    results = []
    q.run_async(lambda: results.append("async"))
    q.run_sync(lambda: results.append("sync"))
    assert results == ["async", "sync"]


def test_concurrent_queue_runs_in_parallel():
    q = dk.Queue("c", concurrent=True)
    running, peak = [0], [0]
    lock = threading.Lock()
    g = dk.Group()

    def task():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)  # releases the GIL
        with lock:
            running[0] -= 1

    for _ in range(4):
        g.run_async(q, task)
    assert g.wait(10)
    assert peak[0] >= 2


def test_barrier_is_exclusive_on_concurrent_queue():
    q = dk.Queue("rw", concurrent=True)
    state = {"readers": 0, "writer": False, "errors": 0, "writes": 0}
    lock = threading.Lock()

    def read():
        with lock:
            state["readers"] += 1
            if state["writer"]:
                state["errors"] += 1
        time.sleep(0.001)
        with lock:
            state["readers"] -= 1

    def write():
        with lock:
            state["writer"] = True
            if state["readers"]:
                state["errors"] += 1
        time.sleep(0.001)
        state["writes"] += 1
        with lock:
            state["writer"] = False

    for _ in range(20):
        for _ in range(4):
            q.run_async(read)
        q.barrier_async(write)
    q.barrier_sync(lambda: None)
    assert state["errors"] == 0
    assert state["writes"] == 20


def test_barrier_sync_waits_for_earlier_work():
    q = dk.Queue("rw", concurrent=True)
    done = []
    for i in range(10):
        q.run_async(lambda i=i: (time.sleep(0.002), done.append(i)))
    q.barrier_sync(lambda: done.append("barrier"))
    assert done[-1] == "barrier" and len(done) == 11


def test_labels():
    assert dk.Queue("com.example.q").label == "com.example.q"
    assert dk.Queue().label == ""
    assert dk.Queue(label=None).label == ""
    assert dk.Queue.global_queue().label == "com.apple.root.default-qos"
    assert dk.Queue.main_queue().label == "com.apple.main-thread"


@pytest.mark.parametrize("prio,label", [
    (dk.QUEUE_PRIORITY_HIGH, "com.apple.root.user-initiated-qos"),
    (dk.QUEUE_PRIORITY_DEFAULT, "com.apple.root.default-qos"),
    (dk.QUEUE_PRIORITY_LOW, "com.apple.root.utility-qos"),
    (dk.QUEUE_PRIORITY_BACKGROUND, "com.apple.root.background-qos"),
    (dk.QOS_CLASS_USER_INTERACTIVE, "com.apple.root.user-interactive-qos"),
    (dk.QOS_CLASS_USER_INITIATED, "com.apple.root.user-initiated-qos"),
    (dk.QOS_CLASS_DEFAULT, "com.apple.root.default-qos"),
    (dk.QOS_CLASS_UTILITY, "com.apple.root.utility-qos"),
    (dk.QOS_CLASS_BACKGROUND, "com.apple.root.background-qos"),
    (dk.QOS_CLASS_UNSPECIFIED, "com.apple.root.default-qos"),
])
def test_global_queue_priorities(prio, label):
    q = dk.Queue.global_queue(prio)
    assert q.label == label
    assert q.is_concurrent
    done = dk.Semaphore(0)
    q.run_async(done.signal)
    assert done.wait(5)


def test_global_queue_keyword_and_identity():
    assert dk.Queue.global_queue(priority=2) is dk.Queue.global_queue(0x19)


def test_unknown_priority_raises():
    with pytest.raises(ValueError, match="unknown priority"):
        dk.Queue.global_queue(12345)


def test_qos_and_relative_priority():
    q = dk.Queue("u", qos=dk.QOS_CLASS_UTILITY, relative_priority=-10)
    out = []
    q.run_sync(lambda: out.append(1))
    assert out == [1]
    with pytest.raises(ValueError):
        dk.Queue("bad", qos=0x42)
    with pytest.raises(ValueError):
        dk.Queue("bad", qos=dk.QOS_CLASS_UTILITY, relative_priority=1)
    with pytest.raises(ValueError):
        dk.Queue("bad", qos=dk.QOS_CLASS_UTILITY, relative_priority=-16)


def test_suspend_resume_nested_counts():
    q = dk.Queue("work")
    out = []
    q.suspend()
    q.suspend()
    q.run_async(lambda: out.append("ran"))
    time.sleep(0.05)
    assert out == []
    q.resume()
    time.sleep(0.05)
    assert out == []
    q.resume()
    q.run_sync(lambda: None)
    assert out == ["ran"]


def test_inactive_queue_sample():
    q = dk.Queue("lazy", inactive=True)
    assert q.is_inactive is True
    out = []
    q.run_async(lambda: out.append("ran"))
    q.set_target_queue(dk.Queue.global_queue())
    time.sleep(0.05)
    assert out == []
    q.activate()
    assert q.is_inactive is False
    q.run_sync(lambda: None)
    assert out == ["ran"]


def test_target_queue_hierarchy_serializes_children():
    parent = dk.Queue("parent")
    a = dk.Queue("a", target=parent)
    b = dk.Queue("b", concurrent=True, target=parent)
    inside, overlaps, count = [0], [0], [0]

    def task():
        inside[0] += 1
        if inside[0] != 1:
            overlaps[0] += 1
        time.sleep(0)  # give the GIL away mid-task
        count[0] += 1
        inside[0] -= 1

    for _ in range(300):
        a.run_async(task)
        b.run_async(task)
    a.run_sync(lambda: None)
    b.barrier_sync(lambda: None)
    parent.run_sync(lambda: None)
    assert count[0] == 600
    assert overlaps[0] == 0


def test_set_target_queue_accepts_none_and_queue_keyword():
    q = dk.Queue("t", inactive=True)
    q.set_target_queue(None)
    q.set_target_queue(queue=dk.Queue.global_queue(dk.QOS_CLASS_UTILITY))
    q.activate()
    out = []
    q.run_sync(lambda: out.append(1))
    assert out == [1]


def test_context_and_finalizer():
    q = dk.Queue("ctx")
    assert q.get_context() is None
    finalized = []
    # cygcd's finalizer is "an optional callable with no arguments".
    q.set_context({"a": 1}, finalizer=lambda: finalized.append("first"))
    assert q.get_context() == {"a": 1}
    q.set_context("second")
    assert finalized == ["first"]  # replacing finalizes the old value now
    assert q.get_context() == "second"
    q.set_context("third")  # "second" had no finalizer: nothing is called
    assert finalized == ["first"]


def test_finalizer_taking_an_argument_is_reported_not_fed():
    q = dk.Queue("ctx")
    q.set_context("value", finalizer=lambda v: None)
    with pytest.raises(TypeError):
        q.set_context("next")  # the finalizer is called with no arguments


def test_finalizer_without_a_value_still_runs():
    q = dk.Queue("ctx")
    finalized = []
    q.set_context(None, finalizer=lambda: finalized.append(True))
    q.set_context("x")
    assert finalized == [True]


def test_finalizer_runs_when_queue_goes_away():
    q = dk.Queue("ctx")
    done = dk.Semaphore(0)
    got = []
    q.set_context("value", finalizer=lambda: (got.append("finalized"),
                                              done.signal()))
    del q
    assert done.wait(5)
    assert got == ["finalized"]


def test_specifics_on_queue_and_module_level():
    parent = dk.Queue("p")
    child = dk.Queue("c", target=parent)
    key, other = object(), "other"
    parent.set_specific(key, "parent-value")
    parent.set_specific(other, "parent-other")
    child.set_specific(key, "child-value")
    assert child.get_specific(key) == "child-value"
    assert child.get_specific(other) is None  # this queue only
    seen = []
    child.run_sync(lambda: seen.append((dk.get_specific(key),
                                        dk.get_specific(other))))
    assert seen == [("child-value", "parent-other")]
    assert dk.get_specific(key) is None  # not on any queue
    child.set_specific(key, None)
    assert child.get_specific(key) is None
    seen.clear()
    child.run_sync(lambda: seen.append(dk.get_specific(key)))
    assert seen == ["parent-value"]


def test_after_runs_later_and_in_order():
    q = dk.Queue("timer")
    start = time.monotonic()
    out = []
    done = dk.Semaphore(0)
    q.after(0.06, lambda: (out.append((2, time.monotonic() - start)),
                           done.signal()))
    q.after(0.02, lambda: (out.append((1, time.monotonic() - start)),
                           done.signal()))
    assert done.wait(5) and done.wait(5)
    assert [o[0] for o in out] == [1, 2]
    assert out[0][1] >= 0.02 and out[1][1] >= 0.06


def test_after_keyword_and_zero_delay():
    q = dk.Queue("t")
    done = dk.Semaphore(0)
    q.after(delay_seconds=0, func=done.signal)
    assert done.wait(5)


def test_run_sync_reraises_and_queue_stays_usable():
    q = dk.Queue("err")

    def boom():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        q.run_sync(boom)
    with pytest.raises(KeyError):
        q.barrier_sync(boom)
    out = []
    q.run_sync(lambda: out.append(1))
    assert out == [1]


def test_run_sync_reraises_from_busy_queue():
    q = dk.Queue("busy")
    gate = dk.Semaphore(0)
    q.run_async(lambda: gate.wait(5))  # keeps the queue busy: no fast path
    t = threading.Timer(0.05, gate.signal)
    t.start()

    def boom():
        raise RuntimeError("from worker")

    with pytest.raises(RuntimeError, match="from worker"):
        q.run_sync(boom)
    t.join()


def test_async_exception_goes_to_unraisablehook(unraisable):
    q = dk.Queue("e")

    def boom():
        raise ValueError("lost?")

    q.run_async(boom)
    q.run_sync(lambda: None)
    assert len(unraisable) == 1
    assert isinstance(unraisable[0].exc_value, ValueError)
    assert unraisable[0].object is boom


class Interrupted(Exception):
    pass


def test_run_sync_left_by_a_signal_reports_the_later_exception(unraisable):
    # A signal handler that raises ends the wait (as Ctrl-C does); the
    # call still runs once the queue gets to it, and its exception, with
    # nobody left to re-raise it in, goes to sys.unraisablehook.
    def handler(signum, frame):
        raise Interrupted

    def boom():
        raise ValueError("late")

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        q = dk.Queue("abandoned")
        gate = dk.Semaphore(0)
        q.run_async(gate.wait)
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(Interrupted):
            q.run_sync(boom)
        gate.signal()
        q.run_sync(lambda: None)  # after boom's trampoline has returned
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert [type(u.exc_value) for u in unraisable] == [ValueError]
    assert unraisable[0].object is boom


def test_run_sync_from_busy_queue_runs_after_pending_items():
    q = dk.Queue("order")
    out = []
    q.run_async(lambda: (time.sleep(0.02), out.append("first")))
    q.run_sync(lambda: out.append("sync"))
    assert out == ["first", "sync"]


def test_threading_local_survives_between_callbacks_on_a_worker():
    local = threading.local()
    q = dk.Queue("tl")
    seen = []

    def first():
        local.value = threading.get_ident()

    def second():
        seen.append(getattr(local, "value", None) == threading.get_ident())

    q.run_async(first)
    q.run_async(second)
    q.run_sync(lambda: None)
    assert seen == [True]


def test_repr_and_weakref():
    import weakref
    q = dk.Queue("r", concurrent=True)
    assert "r" in repr(q) and "concurrent" in repr(q)
    assert weakref.ref(q)() is q


def test_many_queues_pending_work_is_not_lost_when_dropped():
    done = dk.Semaphore(0)
    for i in range(100):
        q = dk.Queue(f"q{i}")
        q.run_async(done.signal)
        del q
    for _ in range(100):
        assert done.wait(5)


def test_set_specific_none_on_a_queue_without_specifics_is_a_no_op():
    q = dk.Queue("nospecifics")
    q.set_specific("k", None)
    assert q.get_specific("k") is None
    q.set_specific("k", 1)
    q.set_specific("k", None)
    assert q.get_specific("k") is None
