"""The main queue, asyncio integration, interpreter exit, fork, Ctrl-C."""
import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import dispatchkit as dk


def run_python(code, timeout=60):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)


def test_main_queue_runs_only_when_drained():
    m = dk.Queue.main_queue()
    out = []
    m.run_async(lambda: out.append(threading.get_ident()))
    m.run_async(lambda: out.append("second"))
    assert out == []
    assert dk.drain_main_queue() == 2
    assert out == [threading.get_ident(), "second"]
    assert dk.drain_main_queue() == 0
    assert dk.drain_main_queue(timeout=0.01) == 0


def test_main_queue_from_worker_thread_and_drain_with_timeout():
    m = dk.Queue.main_queue()
    out = []
    dk.Queue.global_queue().after(0.02, lambda: m.run_async(
        lambda: out.append("from worker")))
    n = dk.drain_main_queue(timeout=5)
    assert n == 1 and out == ["from worker"]


def test_run_sync_on_main_queue_from_main_thread_and_worker():
    m = dk.Queue.main_queue()
    out = []
    m.run_sync(lambda: out.append("inline"))
    assert out == ["inline"]
    # A worker blocked in run_sync(main) completes when main drains.
    done = dk.Semaphore(0)
    dk.Queue.global_queue().run_async(
        lambda: (m.run_sync(lambda: out.append("from worker")),
                 done.signal()))
    while not done.wait(0):
        dk.drain_main_queue(timeout=0.05)
    assert out == ["inline", "from worker"]


def test_main_queue_fd_with_asyncio():
    m = dk.Queue.main_queue()
    out = []

    async def scenario():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(dk.main_queue_fd(), dk.drain_main_queue)
        try:
            dk.Queue.global_queue().run_async(
                lambda: m.run_async(lambda: (out.append("on loop thread"),
                                             fut.set_result(True))))
            await asyncio.wait_for(fut, 5)
        finally:
            loop.remove_reader(dk.main_queue_fd())

    asyncio.run(scenario())
    assert out == ["on loop thread"]


def test_main_forever_interrupted_by_signal():
    r = run_python("""
        import os, signal, threading
        import dispatchkit as dk
        m = dk.Queue.main_queue()
        m.run_async(lambda: print("tick", flush=True))
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            dk.main()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tick", "interrupted"]


@pytest.mark.skipif(
    os.environ.get("DK_SANITIZER_RUN") == "1",
    reason="CPython ends a thread that wakes up in Python during "
           "finalization with pthread_exit; ASan misreports that unwinding "
           "as stack-buffer-underflow (any such thread, not only ours)")
def test_exit_with_pending_work_neither_crashes_nor_hangs():
    r = run_python("""
        import time
        import dispatchkit as dk
        q = dk.Queue("busy")
        c = dk.Queue("c", concurrent=True)
        for i in range(2000):
            q.run_async(lambda: time.sleep(0.001))
            c.run_async(lambda: sum(range(100)))
        q.after(0.05, lambda: print("late"))
        dk.Queue.global_queue().after(10, lambda: print("never"))
        s = dk.Queue("suspended"); s.suspend(); s.run_async(lambda: None)
        print("exiting", flush=True)
    """, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "exiting" in r.stdout
    assert "never" not in r.stdout
    assert "Fatal" not in r.stderr and "Segmentation" not in r.stderr


def test_forked_child_gets_working_runtime():
    q = dk.Queue("pre-fork")
    g = dk.Group()
    for _ in range(50):
        g.run_async(dk.Queue.global_queue(), lambda: None)
    assert g.wait(5)
    q.run_sync(lambda: None)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out = []
            g2 = dk.Group()
            for i in range(100):
                g2.run_async(q, lambda i=i: out.append(i))
                g2.run_async(dk.Queue.global_queue(), lambda: None)
            ok = g2.wait(20) and out == list(range(100))
            dk.apply(100, lambda i: None)
            q.run_sync(lambda: None)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("what", ["semaphore", "group", "run_sync"])
def test_ctrl_c_interrupts_blocking_calls(what):
    r = run_python(f"""
        import os, signal, threading
        import dispatchkit as dk
        what = {what!r}
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            if what == "semaphore":
                dk.Semaphore(0).wait()
            elif what == "group":
                g = dk.Group(); g.enter(); g.wait()
            else:
                q = dk.Queue("blocked")
                gate = dk.Semaphore(0)
                q.run_async(lambda: gate.wait(30))
                q.run_sync(lambda: None)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "interrupted"


def test_subinterpreter_is_refused():
    # The private module was renamed in 3.13, and its run_string now
    # returns the failure instead of raising it.
    r = run_python("""
        try:
            import _interpreters as interpreters
        except ImportError:
            import _xxsubinterpreters as interpreters
        interp = interpreters.create()
        try:
            failed = interpreters.run_string(interp, "import dispatchkit")
        except Exception as e:
            print("refused", type(e).__name__, e)
        else:
            if failed is not None:
                print("refused", failed.formatted)
    """)
    assert "refused" in r.stdout, r.stdout + r.stderr
    assert "ImportError" in r.stdout, r.stdout
