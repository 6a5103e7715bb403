"""A semaphore's awaitable wait takes its unit as the wake-up is handled
(src/python/aio_wait.c, fired_result): the future resolves with 2 and
the coroutine returns without another step; a unit so taken for a
coroutine cancelled before it resumes is given back. Under asyncio's loop
and uvloop's, on the loop's io_uring and on the futex watcher thread."""
import asyncio
import errno
import mmap
import threading
import uuid

import pytest

import dispatchkit.sync as sync
from dispatchkit import _dk
from dispatchkit import asyncio as dkio
from shm_names import fastipc_paths, unlink_all

uvloop = pytest.importorskip("uvloop")


@pytest.fixture(params=["asyncio", "uvloop", "asyncio-watcher",
                        "uvloop-watcher"])
def loop_kind(request, monkeypatch):
    if request.param.endswith("-watcher"):
        monkeypatch.setenv("DK_NO_IO_URING", "1")
    return request.param


@pytest.fixture
def run(loop_kind):
    lp = (asyncio.new_event_loop() if loop_kind.startswith("asyncio")
          else uvloop.new_event_loop())
    yield lp.run_until_complete
    lp.close()


@pytest.fixture
def sem():
    buf = mmap.mmap(-1, 4096)
    yield sync.Semaphore(memoryview(buf)[:64], initial=0)


def post_soon(s, n=1):
    """post(n) from another thread, once the caller awaits."""
    t = threading.Timer(0.02, s.post, (n,))
    t.start()
    return t


async def registered_wait(s):
    """An _AioWait on `s` with its future watched (dkio.wait's first
    step), without the coroutine around it."""
    loop = asyncio.get_running_loop()
    w = _dk._AioWait(dkio._waker_for(loop), s)
    fut = loop.create_future()
    assert w.step(fut, -1, False) == -errno.EAGAIN
    return w, fut


def test_wake_up_takes_the_unit(run, sem):
    async def main():
        w, fut = await registered_wait(sem)
        post_soon(sem).join()
        assert await asyncio.wait_for(fut, 10) == 2
        # Taken for us: nothing left, and no step() to take it.
        assert sem.value() == 0

    run(main())


def test_unit_taken_for_a_coroutine_that_gives_up_is_given_back(run, sem):
    async def main():
        w, fut = await registered_wait(sem)
        post_soon(sem).join()
        await asyncio.wait({fut}, timeout=10)
        assert fut.result() == 2 and sem.value() == 0
        w.abandon()  # cancelled before it saw the 2
        assert sem.value() == 1

    run(main())
    assert sem.wait(timeout_ns=1_000_000_000)  # a sync waiter gets it


def test_cancelled_future_gets_no_unit(run, sem):
    async def main():
        w, fut = await registered_wait(sem)
        fut.cancel()
        post_soon(sem).join()
        for _ in range(20):  # let the wake-up reach the loop
            await asyncio.sleep(0.005)
        assert sem.value() == 1
        w.abandon()
        assert sem.value() == 1

    run(main())


@pytest.mark.parametrize("loop_kind", ["asyncio", "asyncio-watcher"],
                         indirect=True)
def test_task_cancelled_after_its_wake_up_loses_no_unit(loop_kind, sem):
    # dkio.wait's future resolves with 2 (the unit taken), then the task
    # is cancelled before it resumes: it raises CancelledError and the
    # unit goes back to the semaphore. Needs a loop whose create_future
    # can be wrapped (asyncio's; uvloop's Loop is a closed type).
    lp = asyncio.new_event_loop()
    made, tasks = [], []
    create = lp.create_future

    def create_future():
        f = create()
        if not tasks or asyncio.current_task(lp) is not tasks[0]:
            return f  # asyncio.sleep's
        made.append(f)
        # Added before the task awaits it, so it runs first, with the
        # task's wake-up still queued behind it.
        f.add_done_callback(lambda f: tasks[0].cancel())
        return f

    lp.create_future = create_future
    try:
        tasks.append(lp.create_task(dkio.wait(sem)))
        lp.run_until_complete(asyncio.sleep(0.02))
        post_soon(sem).join()
        with pytest.raises(asyncio.CancelledError):
            lp.run_until_complete(tasks[0])
        assert made[-1].result() == 2
        assert sem.value() == 1
    finally:
        lp.close()
    assert sem.wait(timeout_ns=1_000_000_000)


@pytest.fixture
def named(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTIPC_PID_DIR", str(tmp_path / "pids"))
    n = "dkasw" + uuid.uuid4().hex[:10]
    yield n
    unlink_all(fastipc_paths(n))


def test_named_semaphore_cancelled_wait_leaves_the_unit(run, named):
    s = sync.NamedSemaphore(named, initial=0)
    try:
        async def main():
            t = asyncio.ensure_future(dkio.wait(s))
            await asyncio.sleep(0.02)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            s.post(1)

        run(main())
        assert s.wait(timeout=1.0)
        assert s.value() == 0
    finally:
        s.close()
