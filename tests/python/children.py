"""Reaping forked children without hanging the suite."""
import os
import signal
import time


def reap_or_kill(pid, timeout):
    """The child's wait status once it exits (a zombie still counts as
    alive to kill(pid, 0), so liveness checks need it reaped); a child
    still there after `timeout` seconds is killed, reaped and reported as
    None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None
