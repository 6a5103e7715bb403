"""Group, Semaphore, Once, apply and the time functions."""
import gc
import os
import threading
import time
import weakref

import pytest

import dispatchkit as dk


def test_group_sample_from_seed():
    g = dk.Group()
    q = dk.Queue.global_queue()
    results = []
    lock = threading.Lock()
    for i in range(5):
        g.run_async(q, lambda i=i: (lock.acquire(), results.append(i),
                                    lock.release()))
    assert g.wait() is True
    assert sorted(results) == [0, 1, 2, 3, 4]
    done = dk.Semaphore(0)
    g.notify(q, done.signal)
    assert done.wait(5)


def test_group_wait_timeout_forms():
    g = dk.Group()
    g.enter()
    assert g.wait(0) is False
    assert g.wait(timeout=0.01) is False
    assert g.wait(timeout_seconds=0.01) is False
    with pytest.raises(TypeError):
        g.wait(timeout=1, timeout_seconds=1)
    threading.Timer(0.05, g.leave).start()
    assert g.wait(-1) is True
    assert g.wait() is True


def test_group_notify_fires_on_transition_to_zero():
    g = dk.Group()
    q = dk.Queue("n")
    fired = dk.Semaphore(0)
    g.enter()
    g.notify(q, fired.signal)
    assert fired.wait(0.05) is False
    g.leave()
    assert fired.wait(5)


def test_group_fan_out_across_queue_kinds():
    g = dk.Group()
    queues = [dk.Queue("s"), dk.Queue("c", concurrent=True),
              dk.Queue.global_queue()]
    count = [0]
    lock = threading.Lock()

    def inc():
        with lock:
            count[0] += 1

    for i in range(3000):
        g.run_async(queues[i % 3], inc)
    assert g.wait(30)
    assert count[0] == 3000


def test_semaphore_rate_limiting_pattern():
    sem = dk.Semaphore(2)
    q = dk.Queue.global_queue()
    g = dk.Group()
    active, peak = [0], [0]
    lock = threading.Lock()

    def limited():
        sem.wait()
        try:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            with lock:
                active[0] -= 1
        finally:
            sem.signal()

    for _ in range(6):
        g.run_async(q, limited)
    assert g.wait(20)
    assert peak[0] == 2


def test_semaphore_wait_and_signal_results():
    s = dk.Semaphore(1)
    assert s.wait(0) is True
    assert s.wait(0) is False
    assert s.wait(timeout=0.01) is False
    assert s.wait(timeout_seconds=0.01) is False
    assert s.signal() is False  # nobody waiting
    assert s.wait() is True
    t = threading.Thread(target=lambda: s.wait(5))
    t.start()
    while s.value != -1:
        time.sleep(0.001)
    assert s.signal() is True  # woke the waiter
    t.join(5)
    assert not t.is_alive()


def test_semaphore_default_value_and_bad_values():
    assert dk.Semaphore().wait(0) is False
    assert dk.Semaphore(value=3).value == 3
    with pytest.raises(ValueError):
        dk.Semaphore(-1)
    with pytest.raises(TypeError):
        dk.Semaphore("3")
    with pytest.raises(ValueError):
        dk.Semaphore(1).wait(float("nan"))


def test_semaphore_pingpong_between_python_threads():
    # Both sides hold the GIL when they signal: the woken side's GIL
    # hand-off (it watches for the signaller's next release) must never
    # lose a round, and the counts end where they started.
    ping, pong = dk.Semaphore(0), dk.Semaphore(0)
    rounds = 5000
    errors = []

    def ponger():
        for _ in range(rounds):
            if not ping.wait(20):
                errors.append("ping timed out")
                return
            pong.signal()

    t = threading.Thread(target=ponger)
    t.start()
    for _ in range(rounds):
        ping.signal()
        assert pong.wait(20)
    t.join(20)
    assert not t.is_alive() and errors == []
    assert ping.value == 0 and pong.value == 0


def test_semaphore_waiter_gets_through_while_signaller_keeps_the_gil():
    # The signaller keeps the GIL (pure Python work, no blocking call of
    # ours) after signalling: the waiter's watch for a release gives up
    # and it takes the GIL the usual way, every time.
    s = dk.Semaphore(0)
    got = []

    def waiter():
        for _ in range(20):
            got.append(s.wait(20))

    t = threading.Thread(target=waiter)
    t.start()
    for _ in range(20):
        s.signal()
        deadline = time.monotonic() + 0.002
        while time.monotonic() < deadline:
            pass
    t.join(30)
    assert not t.is_alive()
    assert got == [True] * 20
    assert s.value == 0


def test_semaphore_idle_waiter_does_not_spin():
    # The wait spins for a few tens of microseconds at most, then sleeps:
    # a 0.3 s wait that times out uses a small part of that on the CPU.
    s = dk.Semaphore(0)
    cpu = []

    def waiter():
        start = time.thread_time()
        assert s.wait(0.3) is False
        cpu.append(time.thread_time() - start)

    t = threading.Thread(target=waiter)
    t.start()
    t.join(10)
    assert cpu and cpu[0] < 0.1
    assert s.value == 0


def test_producer_consumer_consumer_first_does_not_deadlock():
    # The seed's producer/consumer: consumers are submitted before the
    # producer and block in wait(); the pool must grow to run the producer.
    items = dk.Semaphore(0)
    q = dk.Queue.global_queue()
    g = dk.Group()
    consumed = []
    lock = threading.Lock()
    ncons = 6

    def consumer():
        for _ in range(3):
            assert items.wait(30)
            with lock:
                consumed.append(1)

    def producer():
        for _ in range(3 * ncons):
            items.signal()

    for _ in range(ncons):
        g.run_async(q, consumer)
    g.run_async(q, producer)
    assert g.wait(60)
    assert len(consumed) == 3 * ncons


def test_once_runs_exactly_once():
    once = dk.Once()
    calls = []
    for _ in range(3):
        once(lambda: calls.append(1))
    assert calls == [1]
    assert once.done


def test_once_concurrent_callers_wait_for_completion():
    once = dk.Once()
    state = {"ready": False}
    observed = []

    def init():
        time.sleep(0.05)
        state["ready"] = True

    def caller():
        once(init)
        observed.append(state["ready"])

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert observed == [True] * 8


def test_once_exception_propagates_and_consumes():
    once = dk.Once()

    def boom():
        raise ValueError("init failed")

    with pytest.raises(ValueError):
        once(boom)
    calls = []
    once(lambda: calls.append(1))
    assert calls == []


def test_once_recursive_call_raises():
    once = dk.Once()
    errors = []

    def init():
        try:
            once(init)
        except RuntimeError as e:
            errors.append(e)

    once(init)
    assert len(errors) == 1


def test_apply_sample_from_seed():
    results = []
    lock = threading.Lock()

    def process(index):
        with lock:
            results.append(index * index)

    dk.apply(10, process)
    assert sorted(results) == [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]


@pytest.mark.parametrize("n", [0, 1, 3, 1000, 20000])
def test_apply_every_index_once(n):
    seen = [0] * n
    dk.apply(n, lambda i: seen.__setitem__(i, seen[i] + 1))
    assert seen == [1] * n


def test_apply_on_serial_queue_is_sequential():
    q = dk.Queue("s")
    seen = []
    dk.apply(100, seen.append, queue=q)
    assert seen == list(range(100))
    seen.clear()
    dk.apply(100, seen.append, dk.Queue("c", concurrent=True))
    assert sorted(seen) == list(range(100))


def test_apply_reraises_first_exception():
    def f(i):
        if i == 50:
            raise IndexError(i)

    with pytest.raises(IndexError):
        dk.apply(1000, f)


def test_apply_bad_arguments():
    with pytest.raises(OverflowError):
        dk.apply(-1, lambda i: None)
    with pytest.raises(TypeError):
        dk.apply(1.5, lambda i: None)
    with pytest.raises(TypeError):
        dk.apply(3, None)
    with pytest.raises(TypeError):
        dk.apply(3, lambda i: None, queue="q")


def test_time_functions():
    t = dk.time_from_now(1.0)
    assert 0 < t < dk.DISPATCH_TIME_FOREVER
    assert dk.time_from_now(2.0) > t
    w = dk.walltime()
    assert w > 0 and w != dk.DISPATCH_TIME_FOREVER
    assert dk.walltime() != dk.walltime(delta_seconds=1)
    # Wall times are encoded as negated ns, so later means smaller.
    assert dk.walltime(timestamp=time.time() + 3600) < dk.walltime()
    with pytest.raises(ValueError):
        dk.time_from_now(float("inf"))
    with pytest.raises(ValueError):
        dk.walltime(timestamp=float("nan"))


two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                              reason="apply runs on the caller alone")


@two_cpus
@pytest.mark.parametrize("n", [2, 64])
def test_apply_runs_iterations_side_by_side_when_f_releases_the_gil(n):
    # Each pair of iterations meets at a barrier: with the iterations run
    # one after another, the first wait would time out and break it.
    barrier = threading.Barrier(2, timeout=30)
    threads = set()

    def f(i):
        threads.add(threading.get_ident())
        barrier.wait()

    dk.apply(n, f)
    assert not barrier.broken and len(threads) >= 2


@two_cpus
def test_apply_side_by_side_iterations_still_reraise_the_first_error():
    barrier = threading.Barrier(2, timeout=30)

    def f(i):
        barrier.wait()
        if i == 1:
            raise KeyError(i)

    with pytest.raises(KeyError):
        dk.apply(2, f)
    assert not barrier.broken


@two_cpus
def test_apply_frees_the_errors_after_the_first():
    # Iterations that release the GIL fail on several threads at once: one
    # error is raised, the others are freed (one used to overwrite, and
    # leak, the one kept before it).
    class Token:
        pass

    refs = []
    barrier = threading.Barrier(2, timeout=30)

    def f(i):
        token = Token()
        refs.append(weakref.ref(token))
        barrier.wait()
        raise ValueError(token)

    with pytest.raises(ValueError):
        dk.apply(2, f)
    gc.collect()
    assert len(refs) == 2 and all(r() is None for r in refs)


def test_apply_waits_for_every_iteration_before_it_returns():
    done = []

    def f(i):
        time.sleep(0.001)  # releases the GIL: helpers finish beside us
        done.append(i)

    dk.apply(200, f)
    assert sorted(done) == list(range(200))


def test_apply_skips_unstarted_iterations_after_an_error():
    ran = []

    def f(i):
        ran.append(i)
        raise ValueError(i)

    with pytest.raises(ValueError):
        dk.apply(100_000, f)
    # Only iterations already running when the first raised: one per thread.
    assert 1 <= len(ran) <= 64


def test_apply_inside_a_queue_callback():
    q = dk.Queue("outer", concurrent=True)
    out = []
    q.run_sync(lambda: dk.apply(1000, out.append))
    assert sorted(out) == list(range(1000))
    g = dk.Group()
    g.run_async(q, lambda: dk.apply(1000, out.append))  # on a pool worker
    assert g.wait(30)
    assert sorted(out) == sorted(list(range(1000)) * 2)


def test_apply_leaves_gil_holding_iterations_to_the_caller():
    # Helpers join only when the caller stops making progress: with a
    # short f that holds the GIL they would only take it in turns (before,
    # the caller ran a quarter to a half of the iterations).
    me = threading.get_ident()
    mine = [0]

    def f(i):
        if threading.get_ident() == me:
            mine[0] += 1

    dk.apply(1_000_000, f)
    assert mine[0] >= 750_000


@two_cpus
def test_apply_helpers_join_calls_that_release_the_gil_briefly():
    # Each call sleeps far less than a helper's nap: helpers still join,
    # because the calls are slow, not only when one call is stuck (then
    # they ran only the one range each had claimed, 25 of the 400).
    me = threading.get_ident()
    theirs = [0]

    def f(i):
        if threading.get_ident() != me:
            theirs[0] += 1
        time.sleep(0.00005)

    dk.apply(400, f)
    assert theirs[0] >= 80
