"""zerobuffer with its writer and reader processes pinned to one CPU, as a
busy machine's scheduler may place them: a side with nothing to do hands
the CPU to the other (docs/zerobuffer.md, "Waiting"). Every frame
arrives whole and in order, through a ring that wraps every few frames or
every few thousand; a reader whose writer is idle still times out, asleep
rather than handing the CPU back and forth, and sees the writer leave."""
import os
import subprocess

import pytest

from zb_helpers import child, finish, name, wait_line  # noqa: F401

# Pinned before dispatchkit is imported: the library sees one CPU.
PIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"

PAYLOAD = """
def payload(seq, size):
    return (seq.to_bytes(8, "little") * (size // 8 + 1))[:size]

def size_of(seq, max_size):
    return 1 + seq * 7919 % max_size
"""

READER = PAYLOAD + """
import resource
import dispatchkit.zerobuffer as zb
name, psize, n, max_size = sys.argv[2], *map(int, sys.argv[3:6])

def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime

with zb.Reader(name, zb.BufferConfig(64, psize)) as r:
    print("ready", flush=True)
    for seq in range(1, n + 1):
        f = r.read_frame(timeout=30)
        assert f is not None, seq
        assert f.sequence == seq, (f.sequence, seq)
        assert bytes(f.data) == payload(seq, size_of(seq, max_size)), seq
        f.dispose()
    before = cpu_seconds()
    for _ in range(3):
        assert r.read_frame(timeout=0.3) is None
    print("idle cpu", cpu_seconds() - before, flush=True)
    try:
        f = r.read_frame(timeout=30)
    except zb.WriterDeadException:
        print("writer gone", flush=True)
    else:
        print("unexpected", f, flush=True)
"""

WRITER = PAYLOAD + """
import time
import dispatchkit.zerobuffer as zb
name, n, max_size = sys.argv[2], *map(int, sys.argv[3:5])
w = zb.Writer(name)
for seq in range(1, n + 1):
    w.write_frame(payload(seq, size_of(seq, max_size)))
print("written", flush=True)
sys.stdin.readline()  # idle, connected, until told to leave
w.close()
"""


@pytest.mark.parametrize("psize, frames, max_size", [
    (4096, 20000, 1000),     # wraps every few frames
    (1 << 20, 30000, 1024),  # wraps every ~2000 frames
])
def test_stream_with_both_sides_on_one_cpu(name, psize, frames, max_size):
    cpu = min(os.sched_getaffinity(0))
    reader = child(READER, cpu, name, psize, frames, max_size, prelude=PIN)
    wait_line(reader, "ready", timeout=30)
    writer = child(WRITER, cpu, name, frames, max_size, prelude=PIN,
                   stdin=subprocess.PIPE)
    try:
        wait_line(writer, "written", timeout=120)
        line = reader.stdout.readline().decode().split()
        assert line[:2] == ["idle", "cpu"], line
        # Three idle waits of 0.3 s: asleep, not yielding back and forth
        # (a loop of yields would take the CPU for all 0.9 s).
        assert float(line[2]) < 0.3, line
        writer.stdin.write(b"go\n")
        writer.stdin.flush()
        assert finish(reader).split() == ["writer", "gone"]
    finally:
        finish(writer)  # closes its stdin first: it leaves either way
