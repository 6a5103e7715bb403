"""Command line: stream bytes through a ZeroBuffer.

    python -m dispatchkit.zerobuffer recv NAME > out     # creates NAME
    python -m dispatchkit.zerobuffer send NAME < in      # connects to it

``recv`` creates the buffer, copies every frame to stdout and exits when
the sender has closed and everything was read. ``send`` waits for the
buffer to appear (--connect-timeout), then copies stdin to it as it comes:
each read from stdin becomes one frame at once (at most --chunk bytes), so
a line typed into ``send`` reaches ``recv``'s stdout without waiting for
more. ``recv`` flushes stdout whenever no further frame is waiting.

SIGINT, SIGTERM and SIGHUP end either side cleanly: ``recv`` removes the
shared memory, both semaphores and the lock file, ``send`` tells the
reader it has gone. The exit status is then 128 + the signal number. A
signal ignored when the program starts (SIGHUP under nohup) stays ignored.
Either side works with the other's zerobuffer-ipc counterpart too.
"""
import argparse
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import BinaryIO, List, Optional

from . import (BufferConfig, Reader, Writer, WriterDeadException,
               ZeroBufferException)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stopped(BaseException):
    """Raised by the signal handler, so every ``with`` block unwinds and
    closes its Reader or Writer (which removes the buffer's names)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: Optional[FrameType]) -> None:
    # Only the first signal unwinds: a second one during the clean-up
    # must not interrupt the close() that removes the names.
    for s in _STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise _Stopped(signum)


def _read_some(src: BinaryIO, view: memoryview) -> int:
    """Read what stdin has now (at least one byte, at most len(view)),
    waiting only while it has nothing: one read system call, not a loop
    that fills the buffer."""
    read = getattr(src, "readinto1", None)
    if read is None:
        read = getattr(src, "readinto")  # a raw stream reads once anyway
    n: Optional[int] = read(view)
    return n or 0


def _recv(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    config = BufferConfig(args.metadata_size, args.payload_size)
    with Reader(args.name, config) as reader:
        print(f"zerobuffer: receiving on {args.name!r}", file=sys.stderr,
              flush=True)
        idle_deadline = (None if args.timeout is None
                         else time.monotonic() + args.timeout)
        while True:
            try:
                frame = reader.read_frame(timeout=0)
                if frame is None:
                    # Nothing more right now: let what we wrote go out
                    # before sleeping.
                    out.flush()
                    frame = reader.read_frame(timeout=0.5)
            except WriterDeadException:
                break
            if frame is None:
                if (idle_deadline is not None
                        and time.monotonic() >= idle_deadline):
                    print("zerobuffer: timed out", file=sys.stderr)
                    return 1
                continue
            with frame:
                out.write(frame.data)
            if idle_deadline is not None:
                idle_deadline = time.monotonic() + args.timeout
        out.flush()
    return 0


def _send(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.connect_timeout
    while True:
        try:
            writer = Writer(args.name)
            break
        except ZeroBufferException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
    with writer:
        chunk = max(1, min(args.chunk, writer.max_frame_size))
        view = memoryview(bytearray(chunk))
        src = sys.stdin.buffer
        while True:
            n = _read_some(src, view)
            if not n:
                break
            writer.write_frame(view[:n])
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (every option has its help text)."""
    from dispatchkit import __version__

    p = argparse.ArgumentParser(
        prog="python -m dispatchkit.zerobuffer",
        description="Stream bytes through a ZeroBuffer (shared memory, "
                    "wire-compatible with zerobuffer-ipc).",
        epilog="SIGINT, SIGTERM and SIGHUP end either side cleanly "
               "(exit status 128 + the signal number).")
    p.add_argument("--version", action="version",
                   version=f"dispatchkit {__version__} "
                           "(ZeroBuffer protocol 1.0.0)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    r = sub.add_parser(
        "recv", help="create the buffer NAME and copy its frames to stdout",
        description="Create the buffer NAME, copy every frame to stdout "
                    "and exit 0 once the writer has gone and everything "
                    "was read.")
    r.add_argument("name", metavar="NAME",
                   help="buffer name (/dev/shm/NAME, semaphores "
                        "sem-w-NAME and sem-r-NAME, lock file "
                        "/tmp/zerobuffer/NAME.lock)")
    r.add_argument("--payload-size", type=_positive_int,
                   default=4 * 1024 * 1024, metavar="BYTES",
                   help="size of the frame ring, rounded up to 64 "
                        "(default: %(default)s); the largest frame is 16 "
                        "bytes less")
    r.add_argument("--metadata-size", type=_non_negative_int,
                   default=1024, metavar="BYTES",
                   help="size of the metadata block, 0 for none "
                        "(default: %(default)s)")
    r.add_argument("--timeout", type=_positive_float, default=None,
                   metavar="SECONDS",
                   help="exit 1 after this many seconds without a frame "
                        "(default: wait for ever)")
    s = sub.add_parser(
        "send", help="copy stdin into the buffer NAME as it comes",
        description="Connect to the buffer NAME (created by recv or any "
                    "ZeroBuffer reader) and write what stdin gives, each "
                    "read as one frame, at once; close at end of input.")
    s.add_argument("name", metavar="NAME",
                   help="buffer name, as given to recv")
    s.add_argument("--chunk", type=_positive_int, default=1024 * 1024,
                   metavar="BYTES",
                   help="largest frame to write (default: %(default)s; "
                        "capped to what the buffer can hold)")
    s.add_argument("--connect-timeout", type=float, default=10.0,
                   metavar="SECONDS",
                   help="how long to wait for the buffer to be created "
                        "(default: %(default)s)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in _STOP_SIGNALS:
            # A signal ignored on purpose stays ignored (SIGHUP under
            # nohup, SIGINT in a background job of a non-interactive
            # shell).
            if signal.getsignal(s) is not signal.SIG_IGN:
                previous[s] = signal.signal(s, _on_signal)
    try:
        return _recv(args) if args.cmd == "recv" else _send(args)
    except _Stopped as e:
        return 128 + e.signum
    except BrokenPipeError:
        # stdout's reader left (``recv NAME | head``): no traceback, and
        # none from the interpreter's own flush of stdout at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except (ZeroBufferException, ValueError, OSError) as e:
        # Bad sizes, names, permissions: one line, no traceback.
        print(f"zerobuffer: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
