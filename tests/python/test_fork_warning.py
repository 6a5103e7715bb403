"""What docs/dispatch.md says about fork(): CPython 3.12+ warns that a
process whose pool threads run is multi-threaded when it forks (3.11 and
earlier do not), importing dispatchkit alone starts no thread, and the
recommended forkserver and spawn start methods give children that use
dispatchkit without the warning. Real interpreters and processes."""
import subprocess
import sys
import textwrap

import pytest

WARNING = "is multi-threaded, use of fork() may lead to deadlocks"
WARNS = sys.version_info >= (3, 12)


def run(tmp_path, code, *flags):
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(code))
    r = subprocess.run([sys.executable, *flags, str(script)],
                       capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return r


DIRECT_FORK = """
    import os
    import dispatchkit as dk
    if {start_pool}:
        dk.apply(4, lambda i: None)      # the pool's threads now run
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("forked")
"""


def test_fork_after_work_warns_from_312(tmp_path):
    r = run(tmp_path, DIRECT_FORK.format(start_pool=True))
    assert r.stdout == "forked\n"
    assert (WARNING in r.stderr) == WARNS, r.stderr
    if WARNS:
        assert "DeprecationWarning" in r.stderr


def test_fork_before_any_work_does_not_warn(tmp_path):
    r = run(tmp_path, DIRECT_FORK.format(start_pool=False))
    assert r.stdout == "forked\n" and r.stderr == ""


MULTIPROCESSING = """
    import multiprocessing as mp
    import dispatchkit as dk

    def child(q):
        g = dk.Group()
        out = []
        for i in range(4):
            g.run_async(dk.Queue.global_queue(), lambda i=i: out.append(i))
        q.put(g.wait(10) and sorted(out))

    if __name__ == "__main__":
        dk.apply(4, lambda i: None)      # the parent's pool threads run
        ctx = mp.get_context({method!r})
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        print(q.get(timeout=60))
        p.join(60)
        assert p.exitcode == 0
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_recommended_start_methods_do_not_warn(tmp_path, method):
    r = run(tmp_path, MULTIPROCESSING.format(method=method), "-W", "always")
    assert r.stdout == "[0, 1, 2, 3]\n"
    assert WARNING not in r.stderr, r.stderr


def test_multiprocessing_fork_warns_only_with_warnings_enabled(tmp_path):
    code = MULTIPROCESSING.format(method="fork")
    quiet = run(tmp_path, code)
    assert quiet.stdout == "[0, 1, 2, 3]\n"
    assert WARNING not in quiet.stderr
    loud = run(tmp_path, code, "-W", "default")
    assert loud.stdout == "[0, 1, 2, 3]\n"
    assert (WARNING in loud.stderr) == WARNS, loud.stderr
