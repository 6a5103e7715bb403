"""Command line: stream bytes through a ZeroBuffer.

    python -m dispatchkit.zerobuffer recv NAME > out     # creates NAME
    python -m dispatchkit.zerobuffer send NAME < in      # connects to it

``recv`` creates the buffer, copies every frame to stdout and exits when
the sender has closed and everything was read. ``send`` waits for the
buffer to appear (--connect-timeout), copies stdin to it in frames of at
most --chunk bytes, and closes. Either side works with the other's
zerobuffer-ipc counterpart too.
"""
import argparse
import sys
import time
from typing import List, Optional

from . import (BufferConfig, Reader, Writer, WriterDeadException,
               ZeroBufferException)


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
        buf = bytearray(chunk)
        view = memoryview(buf)
        src = sys.stdin.buffer
        while True:
            n = src.readinto(view)  # type: ignore[union-attr]
            if not n:
                break
            writer.write_frame(view[:n])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dispatchkit.zerobuffer",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv", help="create NAME and copy frames to stdout")
    r.add_argument("name")
    r.add_argument("--payload-size", type=int, default=4 * 1024 * 1024)
    r.add_argument("--metadata-size", type=int, default=1024)
    r.add_argument("--timeout", type=float, default=None,
                   help="give up after this many idle seconds")
    s = sub.add_parser("send", help="copy stdin to the buffer NAME")
    s.add_argument("name")
    s.add_argument("--chunk", type=int, default=1024 * 1024)
    s.add_argument("--connect-timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    try:
        return _recv(args) if args.cmd == "recv" else _send(args)
    except KeyboardInterrupt:
        return 130
    except ZeroBufferException as e:
        print(f"zerobuffer: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
