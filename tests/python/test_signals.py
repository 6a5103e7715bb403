"""A signal whose handler raises interrupts every blocking call, even when
the kernel delivers it to a thread other than the waiting main thread (or
while the waiter spins), so the futex syscall the waiter sleeps in is never
interrupted. Each call waits forever in a child process (so only the
handler's exception can end it); a helper thread sends SIGUSR1 to itself
after 0.3 s."""
import subprocess
import sys
import textwrap

import pytest

WAITS = {
    "sync.Mutex": """
        import dispatchkit.sync as sync
        m = sync.Mutex(bytearray(64), shared=False)
        t = threading.Thread(target=m.acquire)
        t.start(); t.join()
        ok = m.acquire()
    """,
    "sync.Semaphore": """
        import dispatchkit.sync as sync
        ok = sync.Semaphore(bytearray(64), initial=0).wait()
    """,
    "sync.Event": """
        import dispatchkit.sync as sync
        ok = sync.Event(bytearray(64)).wait()
    """,
    "sync.FutexWord": """
        import dispatchkit.sync as sync
        ok = sync.FutexWord(bytearray(64)).wait(0)
    """,
    "Semaphore": """
        import dispatchkit as dk
        ok = dk.Semaphore(0).wait()
    """,
    "Group": """
        import dispatchkit as dk
        g = dk.Group(); g.enter()
        ok = g.wait()
    """,
    "run_sync": """
        import dispatchkit as dk
        q = dk.Queue("blocked")
        gate = dk.Semaphore(0)
        q.run_async(lambda: gate.wait())
        # Let the blocked item finish before exiting (a worker still in
        # Python at exit is ended with pthread_exit).
        cleanup = lambda: (gate.signal(), q.run_sync(lambda: None))
        ok = q.run_sync(lambda: None)
    """,
    "drain_main_queue": """
        import dispatchkit as dk
        ok = dk.drain_main_queue(timeout=None)
    """,
    "main": """
        import dispatchkit as dk
        ok = dk.main()
    """,
    "zerobuffer.Reader": """
        import dispatchkit.zerobuffer as zb
        with zb.Reader(f"dksig{os.getpid()}", zb.BufferConfig(64, 1024)) as r:
            ok = r.read_frame(timeout=1e10)
    """,
}


@pytest.mark.parametrize("what", sorted(WAITS))
def test_a_signal_on_another_thread_interrupts_the_main_threads_wait(what):
    code = textwrap.dedent("""
        import os, signal, threading, time

        class Stop(Exception):
            pass

        def handler(signum, frame):
            raise Stop()

        signal.signal(signal.SIGUSR1, handler)

        def kick():
            time.sleep(0.3)
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

        threading.Thread(target=kick, daemon=True).start()
        cleanup = lambda: None
        try:
    """) + textwrap.indent(textwrap.dedent(WAITS[what]), "    ") + \
        textwrap.dedent("""
            print("returned", ok)
        except Stop:
            print("interrupted")
        cleanup()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "interrupted", r.stdout


def test_after_fork_from_another_thread_the_forking_thread_is_interrupted():
    # CPython makes the thread that forked the child's main thread: its
    # waits are the ones that must sleep in slices there.
    code = textwrap.dedent("""
        import os, signal, sys, threading, time
        import dispatchkit as dk

        class Stop(Exception):
            pass

        def handler(signum, frame):
            raise Stop()

        def child():
            signal.signal(signal.SIGUSR1, handler)

            def kick():
                time.sleep(0.3)
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

            threading.Thread(target=kick, daemon=True).start()
            try:
                dk.Semaphore(0).wait()
                code = 1
            except Stop:
                code = 0
            os._exit(code)

        def forker():
            pid = os.fork()
            if pid == 0:
                child()
            _, status = os.waitpid(pid, 0)
            print("child exit", os.waitstatus_to_exitcode(status))

        t = threading.Thread(target=forker)
        t.start(); t.join()
    """)
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "child exit 0", r.stdout + r.stderr
