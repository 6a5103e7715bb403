"""Write the seed corpora of the libFuzzer targets in tests/fuzz/.

Each seed is a small, valid program for its target (the input layouts are
described at the top of each fuzz_*.c): well-formed zerobuffer segments
with frames, metadata, wrap markers and a writer that wraps the ring;
data programs that touch every operation; sync objects at aligned and
misaligned offsets; atomics at every width. The fuzzer mutates from
there. Inputs that once crashed a target are kept beside these as
regress-* files and are not touched here.

    python3 tests/fuzz/make_corpus.py      # rewrites the seed-* files
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def save(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(bytes(data))


# ---- zerobuffer -----------------------------------------------------------

FLAG_WRITER_IS_US, FLAG_READER_IS_US, FLAG_KEEP_SIZES = 1, 2, 4
(TRY_READ, READ, POST, RELEASE, FORGED, METADATA, POKE, POKE_OIEB, WRITER,
 WRITER_PARTS, QUERIES, CLOSE) = range(12)


def oieb(msize, psize, **f):
    fields = dict(metadata_size=msize, metadata_free_bytes=msize,
                  metadata_written_bytes=0, payload_size=psize,
                  payload_free_bytes=psize, payload_write_pos=0,
                  payload_read_pos=0, payload_written_count=0,
                  payload_read_count=0, writer_pid=0, reader_pid=0)
    fields.update(f)
    head = struct.pack("<IBBBB", 128, 1, 0, 0, 0)
    order = ["metadata_size", "metadata_free_bytes", "metadata_written_bytes",
             "payload_size", "payload_free_bytes", "payload_write_pos",
             "payload_read_pos", "payload_written_count",
             "payload_read_count", "writer_pid", "reader_pid"]
    body = struct.pack("<11Q", *(fields[k] for k in order))
    return head + body + bytes(32)


def ring_with_frames(psize, sizes, start=0, seq=1):
    """Frames as a writer lays them out from `start`: a marker where the
    next frame does not fit, an implicit wrap where < 16 bytes are left."""
    ring = bytearray(psize)
    pos, used, count = start, 0, 0
    for n in sizes:
        total = 16 + n
        if psize - pos < total:
            if psize - pos >= 16:
                ring[pos:pos + 16] = bytes(16)
                count += 1
            used += psize - pos
            pos = 0
        ring[pos:pos + 16] = struct.pack("<QQ", n, seq)
        ring[pos + 16:pos + total] = bytes((seq * 7 + i) & 0xFF
                                           for i in range(n))
        pos += total
        used += total
        count += 1
        seq += 1
        if pos == psize:
            pos = 0
    assert used <= psize, "seed frames overflow the ring"
    return ring, pos, used, count


def zb_seed(mcode, pcode, flags, tokens, image, script):
    return bytes([mcode, pcode, flags, tokens]) + bytes(image) + bytes(script)


def zerobuffer():
    # Metadata and five frames, read, the metadata asked for, released.
    msize, psize = 64, 64 * 16
    meta = struct.pack("<Q", 5) + b"hello"
    sizes = [1, 40, 100, 7, 200]
    ring, wpos, used, count = ring_with_frames(psize, sizes)
    img = (oieb(msize, psize, metadata_written_bytes=len(meta),
                metadata_free_bytes=msize - len(meta),
                payload_free_bytes=psize - used, payload_write_pos=wpos,
                payload_written_count=count)
           + meta.ljust(msize, b"\0") + ring)
    script = ([TRY_READ] * 5 + [METADATA, QUERIES]
              + [RELEASE, 4, RELEASE, 0, RELEASE, 2, RELEASE, 1, RELEASE, 3]
              + [RELEASE, 0, FORGED, 0, 99, TRY_READ, READ])
    save("zerobuffer", "frames", zb_seed(1, 15, 0, 5, img, script))

    # The checker's view: frames from a read position near the ring's end
    # that wrap behind a marker, and through a tail of under 16 bytes.
    psize = 64 * 4
    for name, start, sizes in (("marker", 160, [30, 60, 20]),
                               ("short-tail", 200, [30, 20, 40])):
        ring, wpos, used, count = ring_with_frames(psize, sizes, start=start)
        img = oieb(0, psize, payload_read_pos=start, payload_write_pos=wpos,
                   payload_free_bytes=psize - used,
                   payload_written_count=count) + ring
        save("zerobuffer", "wrapped-image-" + name,
             zb_seed(0, 3, 0, 3, img, [TRY_READ] * 3))

    # Our writer connects to a clean segment and wraps the ring many
    # times while the reader reads and releases.
    for pcode, sizes in ((3, [20, 50, 33, 0x70, 1, 90]),
                         (7, [200, 150, 17, 255, 64, 3])):
        psize = 64 * (1 + pcode)
        img = oieb(64, psize) + bytes(64) + bytes(psize)
        script = [WRITER, QUERIES, WRITER_PARTS, 3, 20]
        for i in range(24):
            n = sizes[i % len(sizes)]
            script += [WRITER, n & 0xFF, n >> 8, TRY_READ, RELEASE, i % 3]
            if i % 5 == 4:
                script += [WRITER_PARTS, 1, 9, 0, TRY_READ, RELEASE, 0]
        script += [METADATA, CLOSE, 1, QUERIES, CLOSE, 0, TRY_READ]
        save("zerobuffer", "writer-wraps-%d" % psize,
             zb_seed(1, pcode, FLAG_READER_IS_US | FLAG_KEEP_SIZES, 0, img,
                     script))

    # More frames held at once than the reader's first pending queue
    # (64 entries): it must grow and keep the ring order.
    psize = 64 * 32
    img = oieb(0, psize) + bytes(psize)
    script = [WRITER] + [WRITER, 1, 0] * 80 + [TRY_READ] * 80
    script += [RELEASE, 70, RELEASE, 0, RELEASE, 1, WRITER, 40, 0, READ]
    save("zerobuffer", "many-held",
         zb_seed(0, 31, FLAG_READER_IS_US | FLAG_KEEP_SIZES, 0, img, script))

    # Hostile frames: size past the ring, wrong sequence, a bare marker
    # at offset 0, a size-0 frame with a sequence; each read twice.
    psize = 64 * 8
    for name, hdr in (("past-ring", (5000, 1)), ("bad-seq", (4, 7)),
                      ("marker-at-0", (0, 0)), ("size0", (0, 1)),
                      ("huge", (2**64 - 8, 1))):
        ring = bytearray(psize)
        ring[0:16] = struct.pack("<QQ", *hdr)
        img = oieb(0, psize, payload_write_pos=20,
                   payload_written_count=1, payload_free_bytes=psize - 20)
        save("zerobuffer", "hostile-" + name,
             zb_seed(0, 7, FLAG_WRITER_IS_US, 2, img + ring,
                     [TRY_READ, READ, POKE_OIEB, 4, 0, 0, 0, 0, 0, 0, 0, 0,
                      TRY_READ, QUERIES]))

    # A corrupted OIEB: sizes, version, positions out of range.
    psize = 64 * 2
    ring, wpos, used, count = ring_with_frames(psize, [10, 10])
    for name, kw in (("oieb-psize", dict(payload_size=1 << 50)),
                     ("oieb-wpos", dict(payload_write_pos=1 << 40)),
                     ("oieb-free", dict(payload_free_bytes=1 << 63)),
                     ("oieb-meta", dict(metadata_written_bytes=1 << 40))):
        base = dict(payload_write_pos=wpos, payload_written_count=count,
                    payload_free_bytes=psize - used)
        base.update(kw)
        save("zerobuffer", name,
             zb_seed(1, 1, 0, 2, oieb(64, psize, **base) + bytes(64) + ring,
                     [TRY_READ, METADATA, READ, WRITER]))


# ---- data -----------------------------------------------------------------

(D_CREATE, D_NOCOPY, D_CONCAT, D_SUBRANGE, D_COPY_REGION, D_APPLY, D_MAP,
 D_CLEAR, D_RETAIN, D_SELF) = range(10)


def regs(dst, src):
    return dst + 8 * src


def data():
    p = []
    p += [D_CREATE, regs(0, 0), 10, 0] + list(b"0123456789")
    p += [D_NOCOPY, regs(1, 0), 5, 0] + list(b"abcde")
    p += [D_CREATE, regs(2, 0), 0, 0]
    p += [D_CONCAT, regs(3, 0), 1]          # 3 = 0 + 1
    p += [D_SELF, regs(4, 3)]               # 4 = 3 + 3
    p += [D_CONCAT, regs(4, 4), 2]          # with the empty object
    p += [D_SUBRANGE, regs(5, 4), 0, 3, 0, 12]      # small offset, length
    p += [D_SUBRANGE, regs(6, 4), 1, 0xFE, 2, 0]    # near the end, huge
    p += [D_COPY_REGION, regs(7, 4), 0, 12]
    p += [D_COPY_REGION, regs(7, 4), 1, 0]          # exactly at the end
    p += [D_APPLY, regs(0, 4), 2, D_APPLY, regs(0, 4), 0]
    p += [D_MAP, regs(6, 4), D_MAP, regs(5, 1)]
    p += [D_RETAIN, regs(0, 4), D_CLEAR, regs(4, 0)]
    save("data", "every-op", p)
    # Deep concatenation trees, then subranges across region borders.
    p = [D_CREATE, regs(0, 0), 3, 0] + list(b"xyz")
    for i in range(1, 8):
        p += [D_SELF, regs(i, i - 1)]
    for off in range(0, 40, 5):
        p += [D_SUBRANGE, regs(1, 7), 0, off, 3, off + 7]
        p += [D_COPY_REGION, regs(2, 1), 0, off % 7, D_MAP, regs(3, 1)]
    save("data", "deep-concat", p)


# ---- sync -----------------------------------------------------------------


def sync():
    # kind, offset, 256 arena bytes, then ops per object kind.
    zero = bytes(256)
    m_lock, m_unlock, m_poke, m_init = 0, 1, 2, 3
    for off in (0, 4, 2, 60, 192):
        ops = [m_lock, 0, 1, m_lock, 1, 3, m_unlock, 0, m_lock, 1, 0,
               m_unlock, 1, m_poke, 8, 2, m_lock, 1, 1, m_init, m_unlock, 1]
        save("sync", "mutex-at-%d" % off, bytes([0, off]) + zero + bytes(ops))
    held = bytearray(256)
    struct.pack_into("<IIII", held, 0, 0x4D555458, 0, 2, 0x7FFFFFF0)
    save("sync", "mutex-dead-owner",
         bytes([0, 0]) + held + bytes([m_lock, 1, 1, m_unlock, 0]))
    s_wait, s_post = 0, 1
    for off in (0, 4, 1):
        ops = [s_post, 0, 3, 0, s_wait, 0, 0, s_wait, 1, 3, s_post, 1, 0xFF,
               0xFF, 0xFF, 0xFF, 0, s_post, 0, 1, 0, s_wait, 1, 1, 3, 1, 5,
               0, 0, 0]
        save("sync", "semaphore-at-%d" % off,
             bytes([0x82, off]) + zero + struct.pack("<I", 2) + bytes(ops))
    ops = [0, 1, 2, 0, 3, 1, 2, 1, 4, 2, 3, 0, 1, 2, 3, 4, 5, 0]
    for off in (0, 8, 3):
        save("sync", "event-at-%d" % off, bytes([2, off]) + zero + bytes(ops))


# ---- atomics --------------------------------------------------------------


def atomic():
    init = bytes(range(64))
    # raw ops: code < 160 (code % 5 picks load/store/fetch/cmpxchg/bit),
    # then width index, offset, order + 1, order2 + 1, two values.
    widths = {1: 1, 2: 2, 4: 4, 8: 8, 16: 12}
    p = bytearray(init)
    for w, wi in widths.items():
        for kind in range(5):
            # seq_cst twice; v = one byte; e = a lone high bit.
            p += bytes([kind, wi, w, 6, 6, 0, 0x5A, 2])
            if kind == 2:
                p += bytes([2, 1])     # add, argument present
            elif kind == 3:
                p += bytes([0, 1])     # strong, matching expected
            elif kind == 4:
                p += bytes([3, 1, 3])  # set bit 3
    # The width-generic calls (160..239) and the order predicates (240+).
    for code in (160, 161, 162, 163):
        p += bytes([code, 3, 1]) + bytes(8) + bytes([5, 1, 1])
    p += bytes([240, 2, 5, 241, 3, 4])
    save("atomic", "every-width", p)


if __name__ == "__main__":
    zerobuffer()
    data()
    sync()
    atomic()
