"""fork() while the binding's own C-level locks and condition variables
are in use: the child must not inherit a lock held by a thread it does
not have, nor a condition variable that counts such a thread as a waiter
(glibc 2.36's broadcast, once it finds a new waiter, first waits for the
waiters it signalled before to leave, and a waiter copied from the parent
never does)."""
import os
import signal
import tempfile
import time

import dispatchkit as dk
from children import reap_or_kill

CHUNK = 4096        # the channel's high-water mark: one read per chunk
SPARE_AHEAD = 4     # io.c: chunks handed out before the reader waits
FORKS = 20
CHILD_CHUNKS = 32
CHILD_ALARM_S = 10  # the child's own bound (SIGALRM's default: it dies)
REAP_S = 30         # the parent's bound on top: a loaded 2-core machine


def _child_reads_a_channel():
    """In the child: read a file through a new IOChannel whose reader,
    too, gets ahead of its handler. Each chunk handed to the handler
    goes back (spare_returned: spare_lock, then a broadcast on
    spare_back), and the child's reader waits for them meanwhile. With
    the parent's waiter still counted in spare_back, the first broadcast
    moves it into glibc's group of signalled waiters, and the next one
    that finds the child's reader waiting waits for that phantom to
    leave: for ever. Exit 0 if the read delivered everything. Never
    returns."""
    code = 1
    try:
        # A hang holds the GIL (the handler's worker holds it across
        # spare_returned), so the bound is a signal's default action,
        # not Python code.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(CHILD_ALARM_S)
        size = CHILD_CHUNKS * CHUNK
        with tempfile.TemporaryFile() as f:
            f.truncate(size)
            q, release = _held_queue("fork-safety-child")
            handler, got, finished = _recording_handler()
            ch = dk.IOChannel(f.fileno())
            ch.set_high_water(CHUNK)
            ch.read(size, handler, queue=q)
            # The reader gets SPARE_AHEAD chunks ahead and waits; let the
            # handlers run on the queue's worker, not inline.
            time.sleep(0.02)
            release.signal()
            ok = finished.wait(CHILD_ALARM_S)
            ch.close()
        code = 0 if ok and sum(got) == size else 2
    finally:
        os._exit(code)


def _recording_handler():
    """A channel read handler that records each chunk's length, the list
    it records into, and the semaphore it signals when the read is done."""
    lengths = []
    finished = dk.Semaphore(0)

    def handler(done, data, error):
        lengths.append(len(data))
        if done:
            finished.signal()

    return handler, lengths, finished


def _held_queue(label):
    """A serial queue kept busy by a block until the semaphore returned
    is signalled: handlers for it queue up behind the block, and none can
    run inline on a reading thread."""
    q = dk.Queue(label)
    release = dk.Semaphore(0)
    blocked = dk.Semaphore(0)

    def block():
        blocked.signal()
        release.wait(120)

    q.run_async(block)
    assert blocked.wait(30)
    return q, release


def _describe(status):
    if status is None:
        return "hung (killed by the parent)"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ("hung (its alarm fired)" if sig == signal.SIGALRM
                else f"died of signal {sig}")
    return f"exited {os.WEXITSTATUS(status)}"


def test_fork_while_a_channel_reader_waits_for_a_spare_chunk():
    """A channel's reader that is more than SPARE_AHEAD chunks ahead of
    its handler waits for a chunk to come back (io.c spare_take: a timed
    wait on spare_back, 2 ms at a time). Keep it there: the handler's
    queue is serial and busy with a long block, so no handler runs and
    none can run inline on the reading thread; the file is long. Then
    fork, again and again, and have each child read through a channel of
    its own, which broadcasts spare_back once per chunk. (Without the
    fork handlers, gdb on a stuck child shows the handler's worker in
    pthread_cond_broadcast, waiting in __condvar_quiesce_and_switch_g1,
    with the GIL; the parent's reader was in pthread_cond_timedwait.)"""
    busy, release = _held_queue("fork-safety-busy")
    handler, calls, finished = _recording_handler()
    with tempfile.TemporaryFile() as f:
        # Sparse: reads cost next to nothing, the reader's time goes to
        # waiting for spares. 4096 chunks take 8 s or more to read at
        # one per 2 ms wait; the forks take far less.
        f.truncate(4096 * CHUNK)
        fd = f.fileno()
        ch = dk.IOChannel(fd)
        ch.set_high_water(CHUNK)
        try:
            ch.read(4096 * CHUNK, handler, queue=busy)
            # The reader is more than SPARE_AHEAD chunks ahead (the file
            # position) while no handler has run: from here on it waits
            # in spare_take before every chunk it reads.
            deadline = time.monotonic() + 30
            while os.lseek(fd, 0, os.SEEK_CUR) <= 2 * SPARE_AHEAD * CHUNK:
                assert time.monotonic() < deadline, "the reader never started"
                time.sleep(0.001)
            assert calls == []
            outcomes = []
            for _ in range(FORKS):
                time.sleep(0.003)  # mid-wait, whatever the last fork did
                position = os.lseek(fd, 0, os.SEEK_CUR)
                assert position < 4096 * CHUNK, "the reader ran out of file"
                pid = os.fork()
                if pid == 0:
                    _child_reads_a_channel()
                outcomes.append(reap_or_kill(pid, REAP_S))
                if outcomes[-1] != 0:
                    break
            assert calls == [], "a handler ran: the reader was not held"
            bad = [(i, _describe(s)) for i, s in enumerate(outcomes)
                   if s != 0]
            assert not bad, (f"fork {bad[0][0] + 1} of {FORKS}: the child "
                             f"{bad[0][1]}")
        finally:
            ch.close(stop=True)
            release.signal()
            assert finished.wait(60)
