"""dispatchkit.Executor and Queue.submit: the concurrent.futures contract."""
import asyncio
import concurrent.futures as cf
import threading
import time
import traceback

import pytest

import dispatchkit as dk


@pytest.fixture
def ex():
    e = dk.Executor()
    yield e
    e.shutdown(wait=True)


def test_is_an_executor_and_returns_futures(ex):
    assert isinstance(ex, cf.Executor)
    f = ex.submit(lambda a, b=0: a + b, 2, b=5)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=10) == 7
    assert f.done() and not f.cancelled() and f.exception() is None


def test_fn_keyword_names_pass_through(ex):
    assert ex.submit(lambda fn, self: (fn, self), fn=1, self=2).result(
        10) == (1, 2)


def test_exception_arrives_with_traceback(ex):
    def inner():
        raise KeyError("boom")

    f = ex.submit(inner)
    with pytest.raises(KeyError) as info:
        f.result(10)
    names = [fr.name for fr in traceback.extract_tb(info.value.__traceback__)]
    assert "inner" in names
    assert isinstance(f.exception(), KeyError)


def test_base_exception_is_captured(ex):
    def leave():
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        ex.submit(leave).result(10)


def test_non_callable_is_a_type_error(ex):
    with pytest.raises(TypeError, match="callable"):
        ex.submit(42)
    with pytest.raises(TypeError):
        ex.submit()
    with pytest.raises(TypeError, match="callable"):
        ex.map(None, [1])


def test_bad_max_workers():
    with pytest.raises(ValueError):
        dk.Executor(0)
    with pytest.raises(ValueError):
        dk.Executor(-1)
    with pytest.raises(TypeError):
        dk.Executor("2")
    with pytest.raises(TypeError):
        dk.Executor(queue=42)


def test_map_in_order_with_several_iterables(ex):
    assert list(ex.map(lambda x: x * x, range(1000))) == [
        x * x for x in range(1000)]
    assert list(ex.map(pow, [2, 3, 4], [5, 2], chunksize=4)) == [32, 9]
    assert list(ex.map(abs, [])) == []
    with pytest.raises(ValueError):
        ex.map(abs, [1], chunksize=0)


def test_map_raises_the_first_error_in_order(ex):
    def f(x):
        if x == 3:
            raise ValueError(x)
        return x

    it = ex.map(f, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError):
        next(it)


def test_map_timeout_is_honoured(ex):
    gate = threading.Event()
    try:
        it = ex.map(lambda _: gate.wait(10), range(2), timeout=0.05)
        with pytest.raises(cf.TimeoutError):
            list(it)
    finally:
        gate.set()


def test_wait_and_as_completed(ex):
    fs = [ex.submit(time.sleep, 0.01) for _ in range(8)]
    done, not_done = cf.wait(fs, timeout=10)
    assert len(done) == 8 and not not_done
    fs = [ex.submit(abs, -i) for i in range(200)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=10)) == \
        list(range(200))
    gate = threading.Event()
    slow = ex.submit(gate.wait, 10)
    done, not_done = cf.wait([slow, ex.submit(int)],
                             return_when=cf.FIRST_COMPLETED, timeout=10)
    assert slow in not_done and len(done) == 1
    gate.set()
    assert slow.result(10) is True


def test_done_callbacks_run(ex):
    seen = []
    ev = threading.Event()
    gate = threading.Event()
    f = ex.submit(gate.wait, 10)
    f.add_done_callback(lambda fut: (seen.append(fut.result()), ev.set()))
    gate.set()
    assert ev.wait(10) and seen == [True]
    # Added after completion: runs at once in the caller.
    f.add_done_callback(lambda fut: seen.append("late"))
    assert seen == [True, "late"]


def test_cancel_not_started_never_runs():
    e = dk.Executor(max_workers=1)
    gate = threading.Event()
    ran = []
    first = e.submit(gate.wait, 10)
    second = e.submit(ran.append, 1)
    assert second.cancel()
    assert second.cancelled()
    gate.set()
    assert first.result(10) is True
    e.shutdown(wait=True)
    assert ran == []
    done, _ = cf.wait([second], timeout=10)
    assert second in done
    with pytest.raises(cf.CancelledError):
        second.result()


def test_cancel_running_fails(ex):
    started = threading.Event()
    gate = threading.Event()
    f = ex.submit(lambda: (started.set(), gate.wait(10)))
    assert started.wait(10)
    assert not f.cancel()
    assert f.running()
    gate.set()
    assert f.result(10)[1] is True


def test_max_workers_limits_concurrency():
    e = dk.Executor(max_workers=2)
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def work():
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.005)
        with lock:
            now[0] -= 1

    fs = [e.submit(work) for _ in range(20)]
    cf.wait(fs, timeout=30)
    e.shutdown()
    assert all(f.done() for f in fs)
    assert peak[0] <= 2


def test_max_workers_one_is_fifo():
    e = dk.Executor(max_workers=1)
    out = []
    for i in range(200):
        e.submit(out.append, i)
    e.shutdown(wait=True)
    assert out == list(range(200))


def test_shutdown_waits_and_refuses_new_work():
    e = dk.Executor()
    out = []
    for i in range(50):
        e.submit(lambda i=i: (time.sleep(0.001), out.append(i)))
    e.shutdown(wait=True)
    assert sorted(out) == list(range(50))
    with pytest.raises(RuntimeError, match="after shutdown"):
        e.submit(int)
    with pytest.raises(RuntimeError, match="after shutdown"):
        e.map(int, [1])
    e.shutdown()  # twice is fine


def test_shutdown_cancel_futures():
    e = dk.Executor(max_workers=1)
    started, gate = threading.Event(), threading.Event()
    ran = []

    def hold():
        started.set()
        return gate.wait(10)

    first = e.submit(hold)
    rest = [e.submit(ran.append, i) for i in range(10)]
    # A task that has started is not cancelled: wait until it has (the
    # test raced here: shutdown could cancel it before a worker took it).
    assert started.wait(10)
    threading.Timer(0.05, gate.set).start()
    e.shutdown(wait=True, cancel_futures=True)
    assert first.result() is True
    assert all(f.cancelled() for f in rest)
    assert ran == []


def test_repr_counts_pending_items_and_shutdown():
    e = dk.Executor(max_workers=1)
    assert repr(e).endswith("pending=0 shutdown=False>")
    gate = threading.Event()
    futs = [e.submit(gate.wait, 10) for _ in range(3)]  # one runs, two wait
    assert "pending=3 " in repr(e)
    gate.set()
    e.shutdown(wait=True)
    assert all(f.result(10) for f in futs)
    assert repr(e).endswith("pending=0 shutdown=True>")
    assert e._core.is_shutdown is True


def test_shutdown_without_wait_returns_and_work_finishes():
    e = dk.Executor()
    gate = threading.Event()
    f = e.submit(gate.wait, 10)
    e.shutdown(wait=False)
    assert not f.done()
    gate.set()
    assert f.result(10) is True


def test_shutdown_from_own_task_is_an_error():
    e = dk.Executor()

    def inner():
        with pytest.raises(RuntimeError, match="itself"):
            e.shutdown(wait=True)
        return "ok"

    assert e.submit(inner).result(10) == "ok"
    e.shutdown()


def test_context_manager():
    with dk.Executor() as e:
        f = e.submit(time.sleep, 0.01)
    assert f.done()
    with pytest.raises(RuntimeError):
        e.submit(int)


def test_queue_argument_runs_there():
    q = dk.Queue("exec-serial")
    key = object()
    q.set_specific(key, "mine")
    with dk.Executor(queue=q) as e:
        assert e.submit(dk.get_specific, key).result(10) == "mine"
        out = []
        for i in range(100):
            e.submit(out.append, i)
    assert out == list(range(100))


def test_run_in_executor_and_default_executor():
    async def main():
        loop = asyncio.get_running_loop()
        e = dk.Executor()
        assert await loop.run_in_executor(e, pow, 2, 10) == 1024
        loop.set_default_executor(e)
        assert await asyncio.to_thread(pow, 3, 3) == 27
        assert await loop.run_in_executor(None, abs, -4) == 4
        assert await asyncio.wrap_future(e.submit(abs, -3)) == 3
        return e

    e = asyncio.run(main())
    # asyncio.run shut the default executor down.
    with pytest.raises(RuntimeError):
        e.submit(int)


def test_wrap_future_cancel_cancels_pending_item():
    e = dk.Executor(max_workers=1)
    gate = threading.Event()
    ran = []

    async def main():
        first = e.submit(gate.wait, 10)
        af = asyncio.wrap_future(e.submit(ran.append, 1))
        await asyncio.sleep(0)
        af.cancel()
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.wrap_future(first)

    asyncio.run(main())
    e.shutdown()
    assert ran == []


def test_many_futures_from_many_threads(ex):
    results = []

    def producer(k):
        fs = [ex.submit(lambda i=i: i * k) for i in range(500)]
        results.append(sum(f.result(30) for f in fs))

    ts = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert sorted(results) == sorted(sum(range(500)) * k for k in range(4))


def test_result_timeout(ex):
    gate = threading.Event()
    f = ex.submit(gate.wait, 10)
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.01)
    gate.set()
    assert f.result(10) is True


# ---- Queue.submit ----------------------------------------------------------


def test_queue_submit_serial_fifo():
    q = dk.Queue("submit-fifo")
    out = []
    fs = [q.submit(out.append, i) for i in range(300)]
    assert all(f.result(10) is None for f in fs)
    assert out == list(range(300))


def test_queue_submit_concurrent_and_global():
    c = dk.Queue("submit-c", concurrent=True)
    assert c.submit(sum, [1, 2, 3]).result(10) == 6
    g = dk.Queue.global_queue()
    assert g.submit(lambda *a, **k: (a, k), 1, x=2).result(10) == (
        (1,), {"x": 2})
    with pytest.raises(TypeError, match="callable"):
        c.submit("no")


def test_queue_submit_exception_and_cancel():
    q = dk.Queue("submit-cancel")
    gate = threading.Event()
    ran = []
    first = q.submit(gate.wait, 10)
    second = q.submit(ran.append, 1)
    assert second.cancel()
    gate.set()
    assert first.result(10)
    with pytest.raises(ZeroDivisionError):
        q.submit(lambda: 1 / 0).result(10)
    assert ran == []


def test_queue_submit_main_queue():
    f = dk.Queue.main_queue().submit(abs, -2)
    assert not f.done()
    dk.drain_main_queue()
    assert f.result(0) == 2


def test_workloop_submit_qos():
    w = dk.Workloop("submit-wl")
    f = w.submit(lambda qos=None: qos, qos=dk.QOS_CLASS_UTILITY)
    assert f.result(10) is None  # qos= is the workloop's, not fn's
    assert w.submit(abs, -1).result(10) == 1
    with pytest.raises(ValueError):
        w.submit(abs, -1, qos=12345)
    out = []
    fs = [w.submit(out.append, i, qos=dk.QOS_CLASS_USER_INITIATED)
          for i in range(5)]
    cf.wait(fs, timeout=10)
    assert out == list(range(5))


def test_stdlib_future_fields_we_rely_on():
    # dispatchkit.Future makes these lazily and the worker writes _state,
    # _result and _exception directly: the stdlib must still use them.
    f = cf.Future()
    assert {"_condition", "_state", "_result", "_exception", "_waiters",
            "_done_callbacks"} <= set(vars(f))
    from concurrent.futures import _base
    assert _base.FINISHED == "FINISHED" and _base.RUNNING == "RUNNING"
    ours = dk.Future()
    assert not ours.done() and not ours.running()
    ours.set_result(3)  # the stdlib's own method on our lazy fields
    assert ours.result() == 3 and ours.done()


def test_forked_child_forgets_parent_tasks():
    import os
    e = dk.Executor(max_workers=1)
    gate = threading.Event()
    blocked = e.submit(gate.wait, 30)
    queued = e.submit(int)  # behind the gate, in the parent's FIFO
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's tasks will never run here
        try:
            ok = e.submit(pow, 2, 5).result(10) == 32
            e.shutdown(wait=True)  # does not wait for the parent's tasks
            os.write(w, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(w)
    try:
        got = os.read(r, 2)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
        gate.set()
    assert got == b"ok" and status == 0
    assert blocked.result(10) is True and queued.result(10) == 0
    e.shutdown()
