"""``async for frame in reader`` and dkio.read_frame: across processes,
with our writer and zerobuffer-ipc's, under asyncio and uvloop."""
import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import zlib

import pytest

from dispatchkit import asyncio as dkio
from dispatchkit import zerobuffer as zb
from zb_helpers import name  # noqa: F401 (a fixture: cleans up after)

uvloop = pytest.importorskip("uvloop")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    lp = (asyncio.new_event_loop() if request.param == "asyncio"
          else uvloop.new_event_loop())
    yield lp.run_until_complete
    lp.close()


WRITER = """
import sys, time, zlib
mod = sys.argv[3]
if mod == "peer":
    import zerobuffer as zb
else:
    from dispatchkit import zerobuffer as zb
w = zb.Writer(sys.argv[1])
n = int(sys.argv[2])
crc = 0
time.sleep(0.1)  # the reader is awaiting by now
for i in range(n):
    data = (i.to_bytes(4, "little") * 256)[: 64 + i % 960]
    w.write_frame(data)
    crc = zlib.crc32(data, crc)
print(crc, flush=True)
if len(sys.argv) > 4:
    time.sleep(120)  # killed by the test
w.close()
"""


def writer(name, n, mod="ours", hang=False):
    args = [sys.executable, "-c", textwrap.dedent(WRITER), name, str(n), mod]
    if hang:
        args.append("hang")
    return subprocess.Popen(args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("mod", ["ours", "peer"])
def test_async_for_across_processes(run, name, mod):
    if mod == "peer":
        pytest.importorskip("zerobuffer")
    n = 3000
    with zb.Reader(name, zb.BufferConfig(1024, 64 * 1024)) as r:
        p = writer(name, n, mod)

        async def main():
            crc = count = 0
            async for f in r:
                with f:
                    data = bytes(f.data)
                assert int.from_bytes(data[:4], "little") == count
                crc = zlib.crc32(data, crc)
                count += 1
            return count, crc

        try:
            count, crc = run(main())
        finally:
            out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert count == n and crc == int(out.split()[0])


def test_writer_killed_while_awaited(run, name):
    with zb.Reader(name, zb.BufferConfig(1024, 64 * 1024)) as r:
        p = writer(name, 10, hang=True)

        async def main():
            got = 0
            async for f in r:
                f.dispose()
                got += 1
                if got == 10:
                    p.send_signal(signal.SIGKILL)
            return got

        try:
            assert run(main()) == 10
        finally:
            p.kill()
            p.communicate(timeout=60)
        with pytest.raises(zb.WriterDeadException):
            r.read_frame(timeout=0.05)


def test_read_frame_timeout_and_cancel(run, name):
    with zb.Reader(name, zb.BufferConfig(1024, 64 * 1024)) as r:
        w = zb.Writer(name)

        async def main():
            assert await dkio.read_frame(r, timeout=0.05) is None
            t = asyncio.ensure_future(dkio.read_frame(r))
            await asyncio.sleep(0.02)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            # The cancelled waiter took nothing and left nothing counted:
            # the next frame goes to the next read.
            w.write_frame(b"one")
            f = await dkio.read_frame(r, timeout=10)
            assert bytes(f.data) == b"one"
            f.dispose()
            threading.Timer(0.02, w.write_frame, (b"two",)).start()
            f = await dkio.read_frame(r, timeout=10)
            assert bytes(f.data) == b"two"
            f.dispose()

        run(main())
        w.close()


def test_reader_closed_while_awaited(run, name):
    r = zb.Reader(name, zb.BufferConfig(1024, 64 * 1024))

    async def main():
        t = asyncio.ensure_future(dkio.read_frame(r))
        await asyncio.sleep(0.02)
        r.close()
        with pytest.raises(zb.ZeroBufferException, match="closed"):
            await asyncio.wait_for(t, 10)
        with pytest.raises(ValueError, match="closed"):
            await dkio.wait(r)
        got = [f async for f in r]  # a closed reader: an empty stream
        assert got == []

    run(main())


def test_no_running_loop(name):
    with zb.Reader(name, zb.BufferConfig(1024, 64 * 1024)) as r:
        coro = dkio.read_frame(r)
        with pytest.raises(RuntimeError, match="running event loop"):
            coro.send(None)
        coro.close()


# ---- awaitable writes and duplex requests ----------------------------------


def test_write_frame_waits_for_room(run, name):
    with zb.Reader(name, zb.BufferConfig(1024, 4096)) as r:
        w = zb.Writer(name)
        # Fill the ring: 3 frames of 1 KiB + header fit in 4 KiB.
        for i in range(3):
            w.write_frame(bytes([i]) * 1024)

        async def main():
            t = asyncio.ensure_future(dkio.write_frame(w, b"\x09" * 1024,
                                                       timeout=10))
            await asyncio.sleep(0.05)
            assert not t.done()  # no room, and the loop is not blocked
            f = r.read_frame(timeout=1)
            f.dispose()  # releases room: the awaiting write completes
            await t
            got = []
            for _ in range(3):
                f = r.read_frame(timeout=1)
                got.append(bytes(f.data)[0])
                f.dispose()
            return got

        assert run(main()) == [1, 2, 9]
        w.close()


def test_write_frame_timeout_cancel_and_errors(run, name):
    with zb.Reader(name, zb.BufferConfig(1024, 4096)) as r:
        w = zb.Writer(name)
        for i in range(3):
            w.write_frame(bytes([i]) * 1024)

        async def main():
            with pytest.raises(zb.BufferFullException):
                await dkio.write_frame(w, b"x" * 1024, timeout=0.05)
            t = asyncio.ensure_future(dkio.write_frame(w, b"y" * 1024))
            await asyncio.sleep(0.02)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            with pytest.raises(zb.FrameTooLargeException):
                await dkio.write_frame(w, b"z" * 8192)
            with pytest.raises(zb.InvalidFrameSizeException):
                await dkio.write_frame(w, b"")
            # The cancelled write wrote nothing.
            for i in range(3):
                f = r.read_frame(timeout=1)
                assert bytes(f.data)[0] == i
                f.dispose()
            assert r.read_frame(timeout=0) is None
            assert await dkio.write_frame(w, b"ok") is not None
            f = r.read_frame(timeout=1)
            assert bytes(f.data) == b"ok"
            f.dispose()

        run(main())
        w.close()
        with pytest.raises(ValueError, match="closed"):
            run(dkio.write_frame(w, b"late"))


def test_write_frame_reader_killed_while_awaited(run, name):
    code = textwrap.dedent("""
        import sys, time
        from dispatchkit import zerobuffer as zb
        r = zb.Reader(sys.argv[1], zb.BufferConfig(1024, 4096))
        print("ready", flush=True)
        time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code, name],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        w = zb.Writer(name)
        for i in range(3):
            w.write_frame(b"x" * 1024)

        async def main():
            t = asyncio.ensure_future(dkio.write_frame(w, b"y" * 1024))
            await asyncio.sleep(0.05)
            p.send_signal(signal.SIGKILL)
            await asyncio.wait_for(t, 30)

        with pytest.raises(zb.ReaderDeadException):
            run(main())
        w.close()
    finally:
        p.kill()
        p.wait(30)


def test_duplex_request(run, name):
    from dispatchkit.zerobuffer.duplex import DuplexChannelFactory
    factory = DuplexChannelFactory()
    server = factory.create_immutable_server(name,
                                             zb.BufferConfig(1024, 1 << 16))

    def echo(frame, writer):
        writer.write_frame(bytes(frame.data)[::-1])

    server.start(echo)
    try:
        client = factory.create_client(name)

        async def main():
            out = []
            for i in range(50):
                resp = await dkio.request(client, b"abc%d" % i, timeout=10)
                with resp:
                    assert resp.is_valid
                    out.append(resp.to_bytes())
            return out

        out = run(main())
        assert out == [(b"abc%d" % i)[::-1] for i in range(50)]
        client.close()
        with pytest.raises(zb.ZeroBufferException, match="closed"):
            run(dkio.request(client, b"x"))
    finally:
        server.stop()
