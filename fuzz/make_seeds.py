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
