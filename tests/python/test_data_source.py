"""DataSource: GCD's user data sources (DATA_ADD, DATA_OR, DATA_REPLACE),
merged from real threads, with coalescing, a handler that never overlaps
itself, the source lifecycle and bad input."""
import random
import threading
import time

import pytest

import dispatchkit as dk


def merge_from_threads(src, per_thread):
    """Each list in per_thread is merged by its own thread, all at once."""
    start = threading.Barrier(len(per_thread))

    def run(values):
        start.wait()
        for v in values:
            src.merge(v)

    threads = [threading.Thread(target=run, args=(vs,)) for vs in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class Recorder:
    """A handler that records src.data per call and notices overlaps."""

    def __init__(self):
        self.src = None
        self.seen = []
        self.inside = False
        self.overlaps = 0
        self.changed = threading.Condition()

    def __call__(self):
        if self.inside:
            self.overlaps += 1
        self.inside = True
        data = self.src.data
        time.sleep(0.0005)  # releases the GIL: other workers may try to enter
        self.inside = False
        with self.changed:
            self.seen.append(data)
            self.changed.notify_all()

    def wait_until(self, pred, timeout=20.0):
        with self.changed:
            return self.changed.wait_for(lambda: pred(self.seen), timeout)


def test_data_add_sum_of_handler_data_equals_sum_merged():
    rec = Recorder()
    q = dk.Queue("add", concurrent=True)  # only the source serializes it
    src = rec.src = dk.DataSource(dk.DATA_ADD, rec, queue=q)
    rng = random.Random(7)
    per_thread = [[rng.randint(1, 1000) for _ in range(3000)]
                  for _ in range(4)]
    total = sum(map(sum, per_thread))
    src.start()
    merge_from_threads(src, per_thread)
    assert rec.wait_until(lambda seen: sum(seen) >= total)
    src.cancel()
    assert sum(rec.seen) == total
    assert rec.overlaps == 0
    assert all(d > 0 for d in rec.seen)  # a call always has data
    assert len(rec.seen) <= 4 * 3000


def test_data_or_combines_bits_merged_by_threads():
    rec = Recorder()
    src = rec.src = dk.DataSource(dk.DATA_OR, rec,
                                  queue=dk.Queue("or", concurrent=True))
    src.start()
    merge_from_threads(src, [[1 << (i * 8 + j) for j in range(8)] * 50
                             for i in range(4)])
    everything = (1 << 32) - 1
    assert rec.wait_until(
        lambda seen: _or(seen) == everything)
    src.cancel()
    assert rec.overlaps == 0


def _or(values):
    out = 0
    for v in values:
        out |= v
    return out


def test_merges_during_a_running_handler_coalesce_into_one_call():
    release = threading.Event()
    seen = []
    done = dk.Semaphore(0)

    def handler():
        seen.append(src.data)
        if len(seen) == 1:
            release.wait(10)  # merges pile up while this call runs
        done.signal()

    src = dk.DataSource(dk.DATA_ADD, handler, queue=dk.Queue("serial"))
    src.start()
    src.merge(1)
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.001)
    assert seen == [1]  # the first call is running (and waiting)
    for _ in range(100):
        src.merge(2)
    release.set()
    assert done.wait(10) and done.wait(10)
    assert done.wait(0.2) is False  # exactly two calls
    assert seen == [1, 200]
    src.cancel()


def test_data_replace_delivers_the_last_value_and_zero_is_no_event():
    seen = []
    got = dk.Semaphore(0)
    src = dk.DataSource(dk.DATA_REPLACE,
                        lambda: (seen.append(src.data), got.signal()))
    assert src.kind == dk.DATA_REPLACE
    for v in (5, 9, 4):
        src.merge(v)  # before start(): held until then
    src.start()
    assert got.wait(5)
    assert seen == [4]
    # 0 replaces what is pending, so nothing is delivered for it: the
    # next call sees only the value merged after it.
    q = dk.Queue("gate")
    q.suspend()
    src2 = dk.DataSource(dk.DATA_REPLACE,
                         lambda: (seen.append(src2.data), got.signal()),
                         queue=q)
    src2.start()
    src2.merge(3)
    src2.merge(0)
    q.resume()
    src2.merge(7)
    assert got.wait(5)
    assert seen == [4, 7]
    src.cancel()
    src2.cancel()


def test_zero_is_no_event_for_add_and_or():
    got = dk.Semaphore(0)
    for kind in (dk.DATA_ADD, dk.DATA_OR):
        src = dk.DataSource(kind, got.signal)
        src.start()
        src.merge(0)
        assert got.wait(0.1) is False
        src.merge(1)
        assert got.wait(5)
        src.cancel()


def test_merge_after_cancel_is_dropped_and_restart_raises():
    got = dk.Semaphore(0)
    src = dk.DataSource(dk.DATA_ADD, got.signal)
    src.start()
    src.cancel()
    assert src.is_cancelled is True
    src.merge(5)  # dropped, as in GCD
    assert got.wait(0.1) is False
    with pytest.raises(RuntimeError,
                       match="Cannot start a cancelled data source"):
        src.start()


def test_handler_exception_is_reported(unraisable):
    got = dk.Semaphore(0)

    def boom():
        got.signal()
        raise ValueError("from the handler")

    src = dk.DataSource(dk.DATA_ADD, boom)
    src.start()
    src.merge(1)
    assert got.wait(5)
    deadline = time.monotonic() + 5
    while not unraisable and time.monotonic() < deadline:
        time.sleep(0.01)
    src.cancel()
    assert any(isinstance(u.exc_value, ValueError) for u in unraisable)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="DATA_ADD, DATA_OR or DATA_REPLACE"):
        dk.DataSource(99, lambda: None)
    with pytest.raises(ValueError):
        dk.DataSource(dk.PROC_EXIT, lambda: None)
    with pytest.raises(TypeError):
        dk.DataSource(dk.DATA_ADD, "not callable")
    with pytest.raises(TypeError):
        dk.DataSource(dk.DATA_ADD, lambda: None, queue="main")
    src = dk.DataSource(dk.DATA_ADD, lambda: None)
    with pytest.raises(OverflowError):
        src.merge(-1)
    with pytest.raises(OverflowError):
        src.merge(2**64)
    with pytest.raises(TypeError):
        src.merge(1.5)
    with pytest.raises(TypeError):
        src.merge("1")
    src.merge(2**64 - 1)  # the largest value is accepted
    src.cancel()


def test_data_source_repr_shows_its_pending_data():
    src = dk.DataSource(dk.DATA_ADD, lambda: None)
    assert "data=0" in repr(src)
    src.cancel()
