"""Timer and dispatch sources: every row of the seed's tables, real
signals, pipes, sockets and child processes, and bad input."""
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import dispatchkit as dk


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


# ---- Timer -------------------------------------------------------------

def test_repeating_timer_fires_until_cancelled():
    fired = dk.Semaphore(0)
    t = dk.Timer(0.01, fired.signal)
    assert t.is_cancelled is False
    t.start()
    for _ in range(3):
        assert fired.wait(5)
    t.cancel()
    assert t.is_cancelled is True
    time.sleep(0.05)
    while fired.wait(0):
        pass  # drain what fired before the cancel took effect
    time.sleep(0.05)
    assert fired.wait(0) is False


def test_one_shot_timer_fires_once_after_interval():
    times = []
    start = time.monotonic()
    t = dk.Timer(0.05, lambda: times.append(time.monotonic() - start),
                 repeating=False)
    t.start()
    assert wait_for(lambda: len(times) == 1)
    time.sleep(0.15)
    assert len(times) == 1
    assert times[0] >= 0.05
    assert t.is_cancelled is False  # one-shot timers are not auto-cancelled
    t.cancel()


def test_one_shot_start_delay_wins_over_interval():
    # cygcd arms a one-shot timer at start_delay and ignores its interval;
    # without a start_delay, the README's one-shot fires after interval.
    # Three one-shot timers due at 0.05 s, 0.5 s and 1 s fire in that order.
    order = []
    lock = threading.Lock()
    both = dk.Semaphore(0)

    def mark(name):
        def fire():
            with lock:
                order.append(name)
            both.signal()
        return fire

    early = dk.Timer(30.0, mark("start_delay=0.05"), start_delay=0.05,
                     repeating=False)
    middle = dk.Timer(30.0, mark("start_delay=0.5"), start_delay=0.5,
                      repeating=False)
    late = dk.Timer(1.0, mark("interval=1.0"), repeating=False)
    for t in (late, middle, early):
        t.start()
    for _ in range(3):
        assert both.wait(10)
    for t in (late, middle, early):
        t.cancel()
    assert order == ["start_delay=0.05", "start_delay=0.5", "interval=1.0"]


def test_set_timer_one_shot_start_delay_wins_over_interval():
    fired = dk.Semaphore(0)
    t = dk.Timer(60.0, fired.signal)
    t.start()
    t.set_timer(60.0, start_delay=0.01, repeating=False)
    assert fired.wait(10)  # not after 60 s
    t.set_timer(60.0, start_delay=None, repeating=False)
    assert fired.wait(0.3) is False  # None: fires after the interval
    t.cancel()


def test_start_delay_rejects_bad_values():
    with pytest.raises(ValueError):
        dk.Timer(1.0, lambda: None, start_delay=-1, repeating=False)
    with pytest.raises(TypeError):
        dk.Timer(1.0, lambda: None, start_delay="soon")


def test_start_delay_and_leeway():
    times = []
    start = time.monotonic()
    t = dk.Timer(1.0, lambda: times.append(time.monotonic() - start),
                 start_delay=0.05, leeway=0.01)
    t.start()
    assert wait_for(lambda: len(times) >= 1)
    t.cancel()
    assert times[0] >= 0.05


def test_start_is_idempotent_and_start_after_cancel_raises():
    t = dk.Timer(10, lambda: None)
    t.start()
    t.start()
    t.cancel()
    t.cancel()
    with pytest.raises(RuntimeError, match="Cannot start a cancelled timer"):
        t.start()


def test_set_timer_reconfigures_running_timer():
    fired = dk.Semaphore(0)
    t = dk.Timer(60, fired.signal, start_delay=60)
    t.start()
    assert fired.wait(0.05) is False
    t.set_timer(0.01)
    assert fired.wait(5)
    t.set_timer(interval=60, start_delay=60, leeway=0, repeating=True)
    while fired.wait(0.05):
        pass
    assert fired.wait(0.1) is False
    t.cancel()


def test_timer_on_custom_queue_never_overlaps_itself():
    q = dk.Queue("c", concurrent=True)
    state = {"inside": 0, "overlap": 0, "calls": 0}

    def slow():
        state["inside"] += 1
        if state["inside"] > 1:
            state["overlap"] += 1
        time.sleep(0.02)
        state["calls"] += 1
        state["inside"] -= 1

    t = dk.Timer(0.001, slow, queue=q)
    t.start()
    assert wait_for(lambda: state["calls"] >= 4)
    t.cancel()
    assert state["overlap"] == 0


def test_started_timer_survives_losing_its_reference():
    fired = dk.Semaphore(0)
    holder = {}

    def start():
        t = dk.Timer(0.01, fired.signal)
        t.start()
        holder["cancel"] = t.cancel

    start()
    gc.collect()
    assert fired.wait(5) and fired.wait(5)
    holder.pop("cancel")()


def test_unstarted_timer_can_be_dropped():
    t = dk.Timer(0.01, lambda: None)
    del t
    gc.collect()


def test_timer_handler_exception_reported(unraisable):
    def boom():
        raise ValueError("in timer")

    t = dk.Timer(0.01, boom, repeating=False)
    t.start()
    assert wait_for(lambda: len(unraisable) >= 1)
    t.cancel()
    assert isinstance(unraisable[0].exc_value, ValueError)


@pytest.mark.parametrize("kwargs", [
    dict(interval=0), dict(interval=-1), dict(interval=float("nan")),
    dict(interval=1, start_delay=-1), dict(interval=1, leeway=float("inf")),
])
def test_timer_bad_values(kwargs):
    interval = kwargs.pop("interval")
    with pytest.raises(ValueError):
        dk.Timer(interval, lambda: None, **kwargs)


def test_timer_bad_types():
    with pytest.raises(TypeError, match="callable"):
        dk.Timer(1, None)
    with pytest.raises(TypeError, match="Queue"):
        dk.Timer(1, lambda: None, queue="q")
    with pytest.raises(TypeError):
        dk.Timer("1", lambda: None)


# ---- SignalSource ------------------------------------------------------

def test_signal_source_sample_with_sig_ign():
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        got = dk.Semaphore(0)
        counts = []
        src = dk.SignalSource(signal.SIGUSR1,
                              lambda: (counts.append(src.count),
                                       got.signal()))
        assert src.signal == signal.SIGUSR1
        src.start()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert got.wait(5)
        assert counts[0] >= 1
        src.cancel()
        assert src.is_cancelled
        # The previous disposition is back.
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_signal_source_coexists_with_python_handler_and_other_sources():
    py_calls = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: py_calls.append(s))
    try:
        a_got, b_got = dk.Semaphore(0), dk.Semaphore(0)
        a = dk.SignalSource(signal.SIGUSR2, a_got.signal)
        b = dk.SignalSource(signal.SIGUSR2, b_got.signal,
                            queue=dk.Queue("sig"))
        a.start()
        b.start()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert a_got.wait(5) and b_got.wait(5)
        assert wait_for(lambda: py_calls == [signal.SIGUSR2])
        a.cancel()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert b_got.wait(5)
        b.cancel()
        assert wait_for(lambda: len(py_calls) == 2)
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_signal_count_coalesces():
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        gate = threading.Event()
        total = []
        q = dk.Queue("slow")
        src = dk.SignalSource(signal.SIGUSR1,
                              lambda: (gate.wait(5), total.append(src.count)),
                              queue=q)
        src.start()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # first handler is now blocked on the gate
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
        gate.set()
        assert wait_for(lambda: sum(total) == 4)
        src.cancel()
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP, 0, -1,
                                    1000, signal.SIGSEGV, signal.SIGBUS,
                                    signal.SIGFPE, signal.SIGILL])
def test_signal_source_rejects_uncatchable_or_invalid(signum):
    with pytest.raises(ValueError):
        dk.SignalSource(signum, lambda: None)


# ---- ReadSource / WriteSource ------------------------------------------

def test_read_source_on_pipe_is_level_triggered():
    r, w = os.pipe()
    try:
        seen = []
        got = dk.Semaphore(0)
        src = dk.ReadSource(r, lambda: (seen.append(src.bytes_available),
                                        got.signal()))
        assert src.fd == r
        src.start()
        assert got.wait(0.05) is False
        os.write(w, b"hello")
        assert got.wait(5)
        assert seen[0] == 5
        assert got.wait(5)  # not read yet: fires again
        os.read(r, 5)
        src.cancel()
    finally:
        os.close(r)
        os.close(w)


def test_write_source_on_pipe_and_socket():
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        for fd in (w, a.fileno()):
            got = dk.Semaphore(0)
            space = []
            holder = {}

            def handler(space=space, got=got, holder=holder):
                space.append(holder["src"].buffer_space)
                got.signal()

            holder["src"] = src = dk.WriteSource(fd, handler)
            src.start()
            assert got.wait(5)
            src.cancel()
            assert space[0] > 0
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_read_source_on_socket_and_eventfd():
    a, b = socket.socketpair()
    efd = os.eventfd(0) if hasattr(os, "eventfd") else None
    try:
        got = dk.Semaphore(0)
        src = dk.ReadSource(a, lambda: (a.recv(100), got.signal()))
        src.start()
        b.send(b"x")
        assert got.wait(5)
        src.cancel()
        if efd is not None:
            got2 = dk.Semaphore(0)
            src2 = dk.ReadSource(efd, lambda: (os.eventfd_read(efd),
                                               got2.signal()))
            src2.start()
            os.eventfd_write(efd, 1)
            assert got2.wait(5)
            src2.cancel()
    finally:
        a.close()
        b.close()
        if efd is not None:
            os.close(efd)


def test_read_and_write_source_on_same_fd():
    a, b = socket.socketpair()
    try:
        rgot, wgot = dk.Semaphore(0), dk.Semaphore(0)
        rs = dk.ReadSource(a, lambda: (a.recv(100), rgot.signal()))
        ws = dk.WriteSource(a, wgot.signal)
        rs.start()
        ws.start()
        assert wgot.wait(5)
        ws.cancel()
        b.send(b"ping")
        assert rgot.wait(5)
        rs.cancel()
    finally:
        a.close()
        b.close()


def test_read_source_on_regular_file_is_always_ready(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    with open(p, "rb") as f:
        got = dk.Semaphore(0)
        sizes = []
        src = dk.ReadSource(f.fileno(), lambda: (sizes.append(
            src.bytes_available), got.signal()))
        src.start()
        assert got.wait(5)
        src.cancel()
        assert sizes[0] == 10


def test_fd_sources_reject_bad_fds():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        dk.ReadSource(r, lambda: None)
    with pytest.raises(OSError):
        dk.WriteSource(w, lambda: None)
    with pytest.raises((OSError, ValueError)):
        dk.ReadSource(-1, lambda: None)
    with pytest.raises(TypeError):
        dk.ReadSource("fd", lambda: None)
    with pytest.raises(TypeError, match="callable"):
        dk.ReadSource(0, 42)


# ---- ProcessSource -----------------------------------------------------

def test_process_source_sees_exit():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time; time.sleep(0.1)"])
    got = dk.Semaphore(0)
    events = []
    src = dk.ProcessSource(proc.pid, lambda: (events.append(
        src.events_pending), got.signal()), events=dk.PROC_EXIT)
    assert src.pid == proc.pid
    src.start()
    proc.wait()
    assert got.wait(5)
    assert events == [dk.PROC_EXIT]
    src.cancel()
    assert src.is_cancelled


def test_process_source_accepts_other_events_and_queue():
    proc = subprocess.Popen(["sleep", "0.05"])
    got = dk.Semaphore(0)
    src = dk.ProcessSource(proc.pid, got.signal,
                           events=dk.PROC_EXIT | dk.PROC_FORK |
                           dk.PROC_EXEC | dk.PROC_SIGNAL,
                           queue=dk.Queue("p"))
    src.start()
    proc.wait()
    assert got.wait(5)
    src.cancel()


def test_process_source_bad_input():
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(ValueError):
        dk.ProcessSource(0, lambda: None)
    with pytest.raises(ValueError):
        dk.ProcessSource(-5, lambda: None)
    with pytest.raises(ValueError):
        dk.ProcessSource(os.getpid(), lambda: None, events=0x1)
    with pytest.raises(ProcessLookupError):
        dk.ProcessSource(2**22 + 12345, lambda: None)


def test_source_cancel_before_start_and_repr():
    src = dk.SignalSource(signal.SIGUSR1, lambda: None)
    assert "not started" in repr(src)
    src.cancel()
    with pytest.raises(RuntimeError, match="cancelled signal source"):
        src.start()


def test_long_read_handler_does_not_stall_a_timer() -> None:
    # The read handler runs on the event thread that saw the fd ready, and
    # blocks until a Timer's handler has run: the other event thread must
    # keep watching the timerfd meanwhile (and hand the Timer to a worker).
    r, w = os.pipe()
    timer_ran = threading.Event()
    saw_timer = []
    done = threading.Event()

    def on_read() -> None:
        os.read(r, 1)
        saw_timer.append(timer_ran.wait(10))
        done.set()

    src = dk.ReadSource(r, on_read)
    src.start()
    t = dk.Timer(0.03, timer_ran.set, repeating=False)
    try:
        os.write(w, b"x")
        t.start()
        assert done.wait(20)
        assert saw_timer == [True]
    finally:
        t.cancel()
        src.cancel()
        os.close(r)
        os.close(w)


def test_read_handlers_on_a_serial_queue_with_items_never_overlap() -> None:
    q = dk.Queue("fd-serial")
    r, w = os.pipe()
    inside = [0]
    overlaps = []
    got = dk.Semaphore(0)

    def body() -> None:
        inside[0] += 1
        if inside[0] != 1:
            overlaps.append(inside[0])
        time.sleep(0)
        inside[0] -= 1

    def on_read() -> None:
        os.read(r, 1)
        body()
        got.signal()

    src = dk.ReadSource(r, on_read, queue=q)
    src.start()
    try:
        for i in range(200):
            os.write(w, b"x")
            for _ in range(3):
                q.run_async(body)
            assert got.wait(10)
        q.run_sync(lambda: None)
        assert overlaps == []
    finally:
        src.cancel()
        os.close(r)
        os.close(w)


def test_refusals_name_the_fd_or_pid_they_refused():
    """A source, a channel or an async read on a closed fd, or a process
    source for a reaped child, says which fd or pid it could not use."""
    r = 4093  # not open: the runtime's own fds come from the low numbers
    with pytest.raises(OSError):
        os.fstat(r)
    for make in (lambda: dk.ReadSource(r, lambda: None),
                 lambda: dk.IOChannel(r),
                 lambda: dk.read_async(r, 1, lambda data, err: None)):
        with pytest.raises(OSError, match=rf"fd {r} is not open"):
            make()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError,
                       match=rf"no process with pid {child.pid}"):
        dk.ProcessSource(child.pid, lambda: None, dk.PROC_EXIT)
