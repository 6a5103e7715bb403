"""A short tour of dispatchkit.zerobuffer (used by `make demo`)."""
import multiprocessing as mp
import os
import time
import zlib

import dispatchkit.zerobuffer as zb


def _writer(name, n):
    with zb.Writer(name) as w:
        w.set_metadata(b"codec=raw;fps=30")
        for i in range(n):
            view = w.get_frame_buffer(4096)  # fill shared memory in place
            view[:] = (i % 251).to_bytes(1, "little") * 4096
            w.commit_frame()


def tour():
    name = f"tour-{os.getpid()}"
    n = 20_000
    with zb.Reader(name, zb.BufferConfig(1024, 1 << 20)) as reader:
        p = mp.get_context("fork").Process(target=_writer, args=(name, n))
        t0 = time.perf_counter()
        p.start()
        crc = 0
        for _ in range(n):
            with reader.read_frame(timeout=5) as frame:  # zero-copy view
                crc = zlib.crc32(frame.data, crc)
        secs = time.perf_counter() - t0
        p.join(10)
        print(f"  metadata:                     "
              f"{bytes(reader.get_metadata()).decode()}")
        print(f"  {n} frames of 4 KiB across processes in {secs:.2f} s "
              f"(crc {crc:08x}, last seq {frame.sequence})")
        try:
            reader.read_frame(timeout=1)
        except zb.WriterDeadException:
            print("  writer closed: WriterDeadException once all was read")
    try:
        import zerobuffer as peer
        with zb.Reader(name, zb.BufferConfig(64, 4096)) as reader, \
                peer.Writer(name) as w:
            w.write_frame(b"hello from zerobuffer-ipc")
            print(f"  peer Writer -> our Reader:    "
                  f"{bytes(reader.read_frame(timeout=1).data).decode()}")
    except ImportError:
        pass
    server = zb.DuplexChannelFactory.get_instance().create_immutable_server(
        name, zb.BufferConfig(4096, 1 << 20))
    server.start(lambda req, out: out.write_frame(bytes(req.data).upper()))
    try:
        with zb.DuplexChannelFactory.get_instance().create_client(name) as c:
            seq = c.send_request(b"ping")
            with c.receive_response(5000) as resp:
                print(f"  duplex request {seq} -> {resp.to_bytes()!r}")
    finally:
        server.stop()


if __name__ == "__main__":
    tour()
