#!/usr/bin/python3
"""End-to-end check of tools/torch_to_npz.py, the path docs/pytorch.md describes: a PyTorch
model (Embedding, 2-layer LSTM, Linear; Sequential and MultiheadAttention names too) is saved
with torch.save, converted by the script's command line, loaded by the C++ program `load`
(Module::load, strict) and run; its outputs must equal PyTorch's to float32 rounding.

    check.py <load program>        exits 77 (skipped) when torch or numpy is missing
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"torch_to_npz check skipped: {e}")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "tools", "torch_to_npz.py")


class CharModel(torch.nn.Module):
    def __init__(self, vocab=20, emb=8, hidden=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, emb)
        self.lstm = torch.nn.LSTM(emb, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                                        torch.nn.Linear(hidden, vocab))
        self.attn = torch.nn.MultiheadAttention(hidden, 2, batch_first=True)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        ctx, _ = self.attn(out, out, out, need_weights=False)
        return self.head(out + ctx)


def main():
    load = sys.argv[1]
    torch.manual_seed(0)
    model = CharModel().eval()
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": model.state_dict(), "epoch": 3}, os.path.join(d, "ckpt.pt"))
        subprocess.run([sys.executable, SCRIPT, os.path.join(d, "ckpt.pt"), os.path.join(d, "model.npz"), "--list"],
                       check=True)
        with torch.no_grad():
            np.save(os.path.join(d, "expected.npy"), model(ids).numpy())
        np.save(os.path.join(d, "ids.npy"), ids.numpy())
        r = subprocess.run([load, d])
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
