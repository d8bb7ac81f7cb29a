#!/usr/bin/python3
"""Saves a PyTorch module's state_dict as an .npz that xgrad's Module::load reads.

    /usr/bin/python3 tools/torch_to_npz.py model.pt weights.npz [--strip-prefix module.]
                                           [--dtype float32|float64|keep] [--list]

model.pt is what torch.save wrote: a state_dict (torch.save(model.state_dict(), path)), a
whole module (torch.save(model, path)), or a checkpoint dict holding a state_dict under
"state_dict" or "model". Or, from Python:

    import sys; sys.path.insert(0, "tools")
    from torch_to_npz import save_state_dict
    save_state_dict(model, "weights.npz")          # a module or a state_dict

Names are kept as they are: xgrad's modules use PyTorch's parameter names, shapes and gate
order (nn.Linear, nn.Embedding, nn.LayerNorm, nn.LSTM/GRU/RNN and their cells,
nn.MultiheadAttention, nn.Conv2d, nn.Sequential's "0.", "1.", ...), so no reshuffling is
needed. Each entry is stored as "<name>.npy" in C order, like numpy.savez. Floating tensors
become float32 by default (what xgrad trains in; --dtype float64 for a model you will
gradcheck, keep to leave them); integer tensors become int64; bool tensors become int64 0/1.
"""
import argparse
import sys
import zipfile
import io

import numpy as np
import torch


def to_numpy(name, t, dtype):
    """One tensor as a C-order numpy array in a dtype xgrad reads (<f4, <f8, <i8)."""
    t = t.detach().cpu()
    if t.is_complex() or t.is_quantized or t.is_sparse:
        raise ValueError(f"{name}: {t.dtype} / layout {t.layout} has no xgrad equivalent")
    if t.is_floating_point():
        if dtype == "keep":
            a = t.numpy() if t.dtype in (torch.float32, torch.float64) else t.float().numpy()
        else:
            a = t.to(getattr(torch, dtype)).numpy()
    else:  # integers and bool (e.g. BatchNorm's num_batches_tracked)
        a = t.to(torch.int64).numpy()
    return np.ascontiguousarray(a)


def state_dict_of(obj):
    """A state_dict from a module, a state_dict, or a checkpoint dict holding one."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise TypeError(f"not a module or a state_dict: {type(obj).__name__}")


def save_state_dict(obj, path, dtype="float32", strip_prefix=""):
    """Writes obj's state_dict (obj: a module or a state_dict) to path as .npz; returns the names."""
    sd = state_dict_of(obj)
    names = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, t in sd.items():
            if strip_prefix and name.startswith(strip_prefix):
                name = name[len(strip_prefix):]
            buf = io.BytesIO()
            np.lib.format.write_array(buf, to_numpy(name, t, dtype), allow_pickle=False)
            z.writestr(name + ".npy", buf.getvalue())
            names.append(name)
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("input", help="file written by torch.save (a state_dict, a module, or a checkpoint dict)")
    ap.add_argument("output", help=".npz to write")
    ap.add_argument("--dtype", choices=["float32", "float64", "keep"], default="float32",
                    help="dtype of floating tensors (default float32)")
    ap.add_argument("--strip-prefix", default="", help='remove this prefix from names, e.g. "module." (DataParallel)')
    ap.add_argument("--list", action="store_true", help="print each name, shape and dtype written")
    args = ap.parse_args()
    obj = torch.load(args.input, map_location="cpu")
    names = save_state_dict(obj, args.output, args.dtype, args.strip_prefix)
    if args.list:
        with np.load(args.output) as npz:
            for n in names:
                print(f"{n} {list(npz[n].shape)} {npz[n].dtype}")
    print(f"torch_to_npz: {len(names)} tensors -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
