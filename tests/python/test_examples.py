"""Each of the seed's samples, as an example program, runs and prints
what the seed says it prints."""
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"

EXPECTED = {
    "serial_queue.py": "[0, 1, 2, 3, 4, 'sync']",
    "concurrent_queue.py": "Read: 0\nRead: 0\nWrite: 1\nRead: 1",
    "semaphore.py": "max concurrent: 2",
    "dispatch_once.py": "Initialized!\ninitialized=True",
    "gcd_groups.py": "Completed: [0, 1, 2, 3, 4]\nAll done!",
    "parallel_apply.py": "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
    "producer_consumer.py": "consumed: [0, 1, 2, 3, 4]",
    "delayed_execution.py": "order: [1, 2], elapsed >= 0.2s: True",
    "inactive_queue.py": "True\nFalse\nWaiting to run...",
    "main_queue.py": "ran on the main thread\nvia asyncio",
    "timer.py": "Tick 1\nTick 2\nTick 3\nDone!",
    "signal_source.py": "Received SIGUSR1!",
    "fd_source.py": "Received: b'Hello!'",
    "process_source.py": "Child process exited!",
    "async_io.py": "Read 17 bytes: b'Hello from a file'\nWrite complete\n"
                   "b'Hello!'",
    "io_channel.py": "4 chunks, 200000 bytes, largest 65536\n"
                     "All I/O complete",
    "dispatch_data.py": "13\nb'Hello, World!'\nb'Hello, World!' 2\n"
                        "b'quick'\nb'World!' 7\n0 b'Hello, '\n7 b'World!'",
    "workloop.py": "Async task\nSync task\nRunning!",
}

UNORDERED = {"inactive_queue.py"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name):
    r = subprocess.run([sys.executable, str(EXAMPLES / name)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if name in UNORDERED:
        # The task prints from a worker while the main thread prints:
        # anywhere in the output, even between another print's text and
        # its newline (print writes them separately).
        task = "Waiting to run..."
        assert r.stdout.count(task) == 1, r.stdout
        assert r.stdout.replace(task, "").split() == \
            EXPECTED[name].replace(task, "").split()
    else:
        assert r.stdout.strip() == EXPECTED[name]
    assert r.stderr == ""


def test_demo_tour_runs():
    r = subprocess.run([sys.executable, str(EXAMPLES / "demo.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "== dispatchkit (GCD dispatch) ==" in r.stdout
    assert "peer/ours" in r.stdout  # the side-by-side table
    assert "Traceback" not in r.stderr
