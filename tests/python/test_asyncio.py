"""dispatchkit.asyncio under asyncio's own loop and uvloop's."""
import asyncio
import gc
import threading
import traceback
import weakref

import pytest

import dispatchkit as dk
from dispatchkit import asyncio as dkio

uvloop = pytest.importorskip("uvloop")

G = dk.Queue.global_queue()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request):
    lp = (asyncio.new_event_loop() if request.param == "asyncio"
          else uvloop.new_event_loop())
    yield lp
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.close()


def test_result_args_kwargs(loop):
    async def main():
        assert await dkio.run(G, pow, 2, 5) == 32
        assert await dkio.run(G, lambda **k: k, a=1, fn=2, queue=3) == {
            "a": 1, "fn": 2, "queue": 3}
        assert await dkio.run(dk.Queue("s"), sorted, [3, 1, 2]) == [1, 2, 3]
        return threading.get_ident()

    assert loop.run_until_complete(main()) == threading.get_ident()


def test_exception_with_traceback(loop):
    def inner():
        raise LookupError("x")

    async def main():
        with pytest.raises(LookupError) as info:
            await dkio.run(G, inner)
        names = [f.name for f in
                 traceback.extract_tb(info.value.__traceback__)]
        assert "inner" in names

    loop.run_until_complete(main())


def test_runs_off_the_loop_thread(loop):
    async def main():
        return await dkio.run(G, threading.get_ident)

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_gathered_results_in_order_one_fd(loop):
    async def main():
        fd = dkio._waker_fd()
        out = await asyncio.gather(*[dkio.run(G, abs, -i)
                                     for i in range(3000)])
        assert dkio._waker_fd() == fd
        return out

    assert loop.run_until_complete(main()) == list(range(3000))


def test_no_call_soon_threadsafe_and_no_thread_per_call():
    lp = asyncio.new_event_loop()

    def forbidden(*a, **k):
        raise AssertionError("call_soon_threadsafe used")

    lp.call_soon_threadsafe = forbidden
    before = threading.active_count()

    async def main():
        return await asyncio.gather(*[dkio.run(G, abs, -i)
                                      for i in range(500)])

    try:
        assert lp.run_until_complete(main()) == list(range(500))
        assert threading.active_count() == before
    finally:
        del lp.call_soon_threadsafe
        lp.close()


def test_cancel_before_start_never_runs(loop):
    q = dk.Queue("aio-cancel")
    gate = threading.Event()
    ran = []

    async def main():
        q.run_async(lambda: gate.wait(10))
        task = asyncio.ensure_future(dkio.run(q, ran.append, 1))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        # The queue is serial: this runs after the cancelled item's turn.
        assert await dkio.run(q, lambda: "after") == "after"

    loop.run_until_complete(main())
    assert ran == []


def test_cancel_awaiting_task_while_running(loop):
    q = dk.Queue("aio-running")
    started = threading.Event()
    gate = threading.Event()

    async def main():
        task = asyncio.ensure_future(
            dkio.run(q, lambda: (started.set(), gate.wait(10))))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The loop still resolves later items (the dropped result did no
        # harm).
        assert await dkio.run(q, int) == 0

    loop.run_until_complete(main())


def test_wait_for_timeout(loop):
    gate = threading.Event()

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(dkio.run(G, gate.wait, 10), 0.02)
        gate.set()

    loop.run_until_complete(main())


def test_bad_input(loop):
    async def main():
        with pytest.raises(TypeError, match="callable"):
            dkio.run(G, 42)
        with pytest.raises(TypeError):
            dkio.run(None, abs, 1)
        with pytest.raises(TypeError):
            dkio.run("queue", abs, 1)
        with pytest.raises(TypeError):
            dkio.run(G, 42, k=1)

    loop.run_until_complete(main())


def test_no_running_loop():
    with pytest.raises(RuntimeError, match="running event loop"):
        dkio.run(G, abs, 1)

    err = []

    def thread():
        try:
            dkio.run(G, abs, 1)
        except RuntimeError as e:
            err.append(e)

    t = threading.Thread(target=thread)
    t.start()
    t.join(10)
    assert len(err) == 1


class Token:
    pass


def test_loop_closed_with_pending_items(loop, unraisable):
    q = dk.Queue("aio-closed")
    gate = threading.Event()
    tok = Token()
    ref = weakref.ref(tok)

    async def main():
        q.run_async(lambda: gate.wait(10))
        fut = dkio.run(q, lambda t: t, tok)
        await asyncio.sleep(0)
        return fut

    fut = loop.run_until_complete(main())
    loop.close()
    del tok
    gate.set()
    q.barrier_sync(lambda: None)
    assert not fut.done()  # its loop is gone: nothing resolves it
    del fut
    gc.collect()
    assert ref() is None
    assert unraisable == []


def test_loop_dropped_frees_waker():
    lp = asyncio.new_event_loop()

    async def main():
        await dkio.run(G, int)
        return weakref.ref(lp)

    r = lp.run_until_complete(main())
    lp.close()
    del lp
    gc.collect()
    assert r() is None


def test_two_loops_in_two_threads():
    def body(out):
        async def main():
            return sum(await asyncio.gather(*[dkio.run(G, abs, -i)
                                              for i in range(300)]))
        out.append(asyncio.run(main()))

    out = []
    ts = [threading.Thread(target=body, args=(out,)) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert out == [sum(range(300))] * 2


# ---- one at a time: the loop waits briefly for the result ------------------


def test_one_at_a_time_hands_results_over_without_a_wakeup(loop):
    # Awaiting run()'s future first lets the loop's thread wait a moment
    # for the result (GIL released); a tiny call finishes within it, so
    # its future is done before the loop ever sleeps.
    async def main():
        got = 0
        for _ in range(200):
            fut = dkio.run(G, int, "7")
            got += bool(fut._dk_waker.spin(fut))
            assert await fut == 7
        return got

    assert loop.run_until_complete(main()) > 0


def test_one_at_a_time_mixed_with_gathered_and_failures(loop):
    def boom(i):
        raise ValueError(i)

    async def main():
        side = asyncio.ensure_future(
            asyncio.gather(*[dkio.run(G, abs, -i) for i in range(500)]))
        for i in range(300):
            if i % 3 == 0:
                with pytest.raises(ValueError) as info:
                    await dkio.run(G, boom, i)
                assert info.value.args == (i,)
            else:
                assert await dkio.run(G, divmod, i, 7) == divmod(i, 7)
        assert await side == list(range(500))

    loop.run_until_complete(main())


def test_idle_loop_and_pool_burn_no_cpu_after_a_burst(loop):
    import resource

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def main():
        for _ in range(500):
            await dkio.run(G, int)
        t0 = cpu()
        await asyncio.sleep(0.5)
        return cpu() - t0

    # The spins (the loop's, the workers') are bounded: a worker or loop
    # spinning on would burn about the whole 0.5 s.
    assert loop.run_until_complete(main()) < 0.2


def test_awaiting_long_calls_does_not_keep_the_loop_spinning(loop):
    import time

    async def main():
        t0 = time.thread_time()
        for _ in range(40):
            await dkio.run(G, time.sleep, 0.01)
        return time.thread_time() - t0

    # 0.4 s awaited; a loop spinning through each call would burn it all.
    assert loop.run_until_complete(main()) < 0.15
