#!/usr/bin/env python3
"""numpy-written seeds for the fuzz corpus (fuzz/make_seeds.cpp writes xgrad's own):
   /usr/bin/python3 fuzz/make_seeds.py fuzz/corpus"""
import os
import sys

import numpy as np

root = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus"
rng = np.random.default_rng(0)
np.save(os.path.join(root, "npy", "np_f4.npy"), rng.standard_normal((3, 2)).astype("<f4"))
np.save(os.path.join(root, "npy", "np_i4.npy"), np.arange(5, dtype="<i4"))
np.save(os.path.join(root, "npy", "np_fortran.npy"), np.asfortranarray(np.ones((2, 3))))  # rejected
np.save(os.path.join(root, "npy", "np_bigendian.npy"), np.ones(3, dtype=">f8"))  # rejected
np.savez(os.path.join(root, "npz", "np_savez.npz"), a=np.ones((2, 2), "<f8"), b=np.arange(3, dtype="<i8"))
np.savez_compressed(os.path.join(root, "npz", "np_compressed.npz"), w=rng.standard_normal(8).astype("<f4"))

# Hostile seeds, each under 64 KB: decompression bombs and counts the file cannot hold.
import struct
import zipfile


def npy_header(shape, descr="<f4"):
    d = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    d += " " * ((64 - (10 + len(d) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()


def deflated(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, data in entries:
            z.writestr(name, data)


def zip64_count(data, count):
    """The archive with a ZIP64 end record claiming `count` entries (the 16/32-bit fields
    set to their 'see ZIP64' markers)."""
    end = data.rfind(b"PK\x05\x06")
    cd_size, cd_off = struct.unpack_from("<II", data, end + 12)
    rec = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_off)
    loc = struct.pack("<IIQI", 0x07064B50, 0, end, 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:end] + rec + loc + eocd


zeros4m = b"\0" * (4 << 20)
for sub in ("npz", "checkpoint"):
    d = os.path.join(root, sub)
    # 4 MiB of zeros behind a header declaring 4 floats: refused at the header.
    deflated(os.path.join(d, "bomb_header_small.npz"), [("w.npy", npy_header("(4,)") + zeros4m)])
    # Consistent: the header declares the 4 MiB the zip states.
    deflated(os.path.join(d, "bomb_consistent.npz"), [("w.npy", npy_header("(1048576,)") + zeros4m)])

with zipfile.ZipFile(os.path.join(root, "npz", "two_stored.npz"), "w", zipfile.ZIP_STORED) as z:
    z.writestr("a.npy", npy_header("(2,)") + b"\0" * 8)
    z.writestr("b.npy", npy_header("(1,)", "<i8") + b"\0" * 8)
raw = open(os.path.join(root, "npz", "two_stored.npz"), "rb").read()
open(os.path.join(root, "npz", "count_2m.npz"), "wb").write(zip64_count(raw, 2_000_000))
ck = os.path.join(root, "checkpoint", "stepped.npz")
if os.path.exists(ck):
    open(os.path.join(root, "checkpoint", "count_2m.npz"), "wb").write(zip64_count(open(ck, "rb").read(), 2_000_000))
# A 2^40-element shape in a 200-byte file.
open(os.path.join(root, "npy", "huge_shape.npy"), "wb").write(npy_header("(1099511627776,)") + b"\0" * 16)
