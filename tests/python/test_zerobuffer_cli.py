"""``python -m dispatchkit.zerobuffer send/recv`` as a user runs it, in
real processes: it streams (a line reaches the receiver while the sender
still runs), it removes every name of the buffer whatever signal ends it,
and it explains itself (help for every option, --version)."""
import argparse
import os
import signal
import subprocess
import sys
import threading

import pytest

import dispatchkit
from zb_helpers import name, names_of  # noqa: F401

CLI = [sys.executable, "-m", "dispatchkit.zerobuffer"]


class LineReader:
    """Reads a process's stdout lines in a thread, so that a test can wait
    for one with a bound and see whether it has come."""

    def __init__(self, stream):
        self.lines = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,),
                                        daemon=True)
        self._thread.start()

    def _run(self, stream):
        for line in iter(stream.readline, b""):
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, count, timeout=20):
        with self._cond:
            self._cond.wait_for(lambda: len(self.lines) >= count, timeout)
            return list(self.lines)


def start_recv(name, *extra):
    """A receiver, once it has created the buffer."""
    recv = subprocess.Popen([*CLI, "recv", name, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = recv.stderr.readline().decode()
    assert "receiving on" in line, line + recv.stderr.read().decode()
    return recv


def stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def test_a_line_arrives_while_the_sender_still_runs(name):
    recv = start_recv(name)
    send = subprocess.Popen([*CLI, "send", name], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out = LineReader(recv.stdout)
        send.stdin.write(b"first line\n")
        send.stdin.flush()
        assert out.wait_for(1) == [b"first line\n"]
        assert send.poll() is None  # stdin still open: it still runs
        send.stdin.write(b"second line\n")
        send.stdin.flush()
        assert out.wait_for(2) == [b"first line\n", b"second line\n"]
        assert send.poll() is None
        send.stdin.close()
        assert send.wait(20) == 0, send.stderr.read()
        assert recv.wait(20) == 0, recv.stderr.read()
        assert out.wait_for(3, timeout=1) == [b"first line\n",
                                              b"second line\n"]
    finally:
        stop(send, recv)
    for path in names_of(name):
        assert not os.path.exists(path), path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP,
                                 signal.SIGINT])
def test_a_signal_to_recv_removes_the_buffer(name, sig):
    recv = start_recv(name)
    send = subprocess.Popen([*CLI, "send", name], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out = LineReader(recv.stdout)
        send.stdin.write(b"connected\n")
        send.stdin.flush()
        assert out.wait_for(1) == [b"connected\n"]
        for path in names_of(name):
            assert os.path.exists(path), path
        recv.send_signal(sig)
        assert recv.wait(20) == 128 + sig, recv.stderr.read()
        for path in names_of(name):
            assert not os.path.exists(path), path
        # The sender learns that its reader has gone at its next write.
        send.stdin.write(b"anyone there?\n")
        send.stdin.close()
        assert send.wait(20) == 1
        assert b"ReaderDeadException" in send.stderr.read()
    finally:
        stop(send, recv)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_recv_waiting_for_a_sender(name, sig):
    recv = start_recv(name)
    try:
        recv.send_signal(sig)
        assert recv.wait(20) == 128 + sig, recv.stderr.read()
        assert recv.stderr.read() == b""  # no traceback
    finally:
        stop(recv)
    for path in names_of(name):
        assert not os.path.exists(path), path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_send_closes_its_writer(name, sig):
    recv = start_recv(name)
    send = subprocess.Popen([*CLI, "send", name], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out = LineReader(recv.stdout)
        send.stdin.write(b"one line\n")
        send.stdin.flush()
        assert out.wait_for(1) == [b"one line\n"]
        send.send_signal(sig)  # blocked reading its stdin
        assert send.wait(20) == 128 + sig, send.stderr.read()
        assert send.stderr.read() == b""
        # A clean close: the receiver sees the end of the stream at once
        # and removes the buffer.
        assert recv.wait(20) == 0, recv.stderr.read()
    finally:
        stop(send, recv)
    for path in names_of(name):
        assert not os.path.exists(path), path


def test_every_option_has_help():
    from dispatchkit.zerobuffer.__main__ import build_parser
    parser = build_parser()
    subparsers = [a for a in parser._actions
                  if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers) == 1
    commands = subparsers[0].choices
    assert sorted(commands) == ["recv", "send"]
    for prog in [parser, *commands.values()]:
        for action in prog._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, (prog.prog, action.dest)
    for cmd in commands:
        r = subprocess.run([*CLI, cmd, "--help"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and "NAME" in r.stdout


def test_version():
    r = subprocess.run([*CLI, "--version"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0
    assert r.stdout.strip() == (f"dispatchkit {dispatchkit.__version__} "
                                "(ZeroBuffer protocol 1.0.0)")


@pytest.mark.parametrize("args", [["recv", "x", "--payload-size", "0"],
                                  ["recv", "x", "--metadata-size", "-1"],
                                  ["recv", "x", "--timeout", "0"],
                                  ["send", "x", "--chunk", "0"]])
def test_bad_numbers_are_usage_errors(args):
    r = subprocess.run([*CLI, *args], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "must" in r.stderr


def test_recv_into_a_closed_pipe_exits_quietly(name):
    recv = start_recv(name)
    recv.stdout.close()  # like `recv NAME | head -c 0`
    send = subprocess.Popen([*CLI, "send", name], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        send.stdin.write(b"nobody reads this\n")
        send.stdin.flush()
        assert recv.wait(20) == 1
        assert b"Traceback" not in recv.stderr.read()
    finally:
        send.stdin.close()
        stop(send, recv)
    for path in names_of(name):
        assert not os.path.exists(path), path


def test_an_ignored_signal_stays_ignored(name):
    # As under nohup: SIGHUP ignored before the program starts.
    recv = subprocess.Popen(
        [*CLI, "recv", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        line = recv.stderr.readline().decode()
        assert "receiving on" in line, line
        recv.send_signal(signal.SIGHUP)
        # Still serving after it: a line sent afterwards comes through.
        send = subprocess.run([*CLI, "send", name], input=b"after HUP\n",
                              capture_output=True, timeout=60)
        assert send.returncode == 0, send.stderr
        assert recv.wait(20) == 0, recv.stderr.read()
        assert recv.stdout.read() == b"after HUP\n"
    finally:
        stop(recv)
    for path in names_of(name):
        assert not os.path.exists(path), path


@pytest.mark.parametrize("args,message", [
    (["recv", "a/b"], "InvalidBufferNameException"),
    (["recv", "dkcli-too-big", "--payload-size", str(1 << 50)],
     "ValueError: need 0 <= metadata_size"),
    (["send", "dkcli-nobody-there", "--connect-timeout", "0"],
     "ZeroBufferException"),
])
def test_errors_are_one_line_without_traceback(args, message):
    r = subprocess.run([*CLI, *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("zerobuffer: ") and message in r.stderr
    assert "Traceback" not in r.stderr
