"""Soak: 1 million zerobuffer frames from a Writer process to a Reader
process, mixed sizes, copied in with write_frame, filled in place with
get_frame_buffer/commit_frame, or copied in as batches of eight with
write_frames; the reader alternates read_frame and read_frames /
release_frames. Every frame is checked cheaply
(sequence, length, first and last bytes). Resident memory of BOTH
processes is sampled every 100,000 frames; the run fails if either keeps
growing after warm-up.

DK_SOAK_FRAMES overrides the total (default 1,000,000)."""
import multiprocessing as mp
import os
import struct
import sys
import time

import dispatchkit.zerobuffer as zb

TOTAL = int(os.environ.get("DK_SOAK_FRAMES", "1000000"))
STEP = 100_000 if TOTAL >= 200_000 else max(TOTAL // 10, 1)
SIZES = (16, 100, 1000, 4000, 17, 64 * 1024, 333, 8)
RING = 1 << 20
LIMIT_KIB = 8 * 1024


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def mark(i):
    """The frame's first and last byte."""
    return (i * 7 + 1) & 0xFF, (i * 13 + 5) & 0xFF


def writer_main(name, conn):
    w = zb.Writer(name)
    w.write_timeout = 60.0
    blobs = {n: bytearray(n) for n in SIZES}
    samples = []
    batch = []
    for i in range(TOTAL):
        n = SIZES[i % len(SIZES)]
        first, last = mark(i)
        if (i // len(SIZES)) % 4 == 3:
            # A batch of eight: eight sizes, so eight different blobs.
            b = blobs[n]
            b[0], b[-1] = first, last
            if n >= 12:
                struct.pack_into("<QI", b, 0, i, n)
                b[0] = first
            batch.append(b)
            if len(batch) == len(SIZES) or i == TOTAL - 1:
                w.write_frames(batch)
                batch = []
        elif i % 2:
            b = blobs[n]
            b[0], b[-1] = first, last
            if n >= 12:
                struct.pack_into("<QI", b, 0, i, n)
                b[0] = first  # the low byte of i is replaced by the mark
            w.write_frame(b)
        else:
            v = w.get_frame_buffer(n)
            if n >= 12:
                struct.pack_into("<QI", v, 0, i, n)
            v[0] = first
            v[n - 1] = last
            w.commit_frame()
        if (i + 1) % STEP == 0:
            samples.append(rss_kib())
    conn.send(samples)
    conn.recv()  # the reader has read everything
    w.close()


def main():
    name = f"dk-soak-zb-{os.getpid()}"
    r = zb.Reader(name, zb.BufferConfig(64, RING))
    parent, child = mp.Pipe()
    p = mp.get_context("spawn").Process(target=writer_main,
                                        args=(name, child))
    t0 = time.perf_counter()
    p.start()
    samples = []
    bad = 0
    nbytes = 0
    i = 0
    while i < TOTAL:
        if (i // 1000) % 2:
            frames = r.read_frames(min(13, TOTAL - i), timeout=60)
        else:
            f = r.read_frame(timeout=60)
            frames = [] if f is None else [f]
        if not frames:
            print(f"soak: FAILED: no frame {i} within 60 s", file=sys.stderr)
            p.kill()
            return 1
        for f in frames:
            d = f.data
            n = SIZES[i % len(SIZES)]
            first, last = mark(i)
            ok = len(d) == n and d[0] == first and d[n - 1] == last
            if ok and n >= 12:
                seq, size = struct.unpack_from("<QI", d, 0)
                ok = (seq >> 8, size) == (i >> 8, n)
            ok = ok and f.sequence == i + 1
            nbytes += n
            del d
            if not ok:
                bad += 1
            i += 1
            if i % STEP == 0:
                samples.append(rss_kib())
                print(f"soak: {i:>9,} frames  reader rss "
                      f"{samples[-1]:>7,} KiB", flush=True)
        r.release_frames(frames)
        del frames, f
    el = time.perf_counter() - t0
    wsamples = parent.recv()
    parent.send(None)
    p.join(60)
    r.close()
    for i, (rs, ws) in enumerate(zip(samples, wsamples)):
        print(f"soak: {(i + 1) * STEP:>9,} frames  reader {rs:>7,} KiB  "
              f"writer {ws:>7,} KiB")
    w = min(2, len(samples) - 1)
    grow_r = max(samples[w:]) - samples[w]
    grow_w = max(wsamples[w:]) - wsamples[w]
    print(f"soak: {TOTAL:,} frames ({nbytes / 1e9:.2f} GB) in {el:.1f} s "
          f"({TOTAL / el:,.0f} frames/s); growth after warm-up: reader "
          f"{grow_r:,} KiB, writer {grow_w:,} KiB; bad frames {bad}")
    if bad:
        print(f"soak: FAILED: {bad} frames did not check", file=sys.stderr)
        return 1
    if p.exitcode != 0:
        print(f"soak: FAILED: writer exit {p.exitcode}", file=sys.stderr)
        return 1
    # Flat: no more than 8 MiB above the warm-up level, either side.
    if grow_r > LIMIT_KIB or grow_w > LIMIT_KIB:
        print("soak: FAILED: resident memory kept growing", file=sys.stderr)
        return 1
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
