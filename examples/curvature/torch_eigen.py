#!/usr/bin/env python3
"""The largest Hessian eigenvalue of the curvature example's char-LSTM loss, in PyTorch.

usage: torch_eigen.py curvature_<when>.npz

The .npz (written by ./curvature) holds the model's weights under xgrad's names (which are
PyTorch's: embedding.weight, lstm.weight_ih_l0, ..., head.bias), the start vector v0.<name>,
the batch (inputs, targets: int64 [B, T]) and the number of power iterations xgrad ran. The
same model is built from torch.nn modules in float64 and the same iteration is run from the
same vector, each Hessian-vector product by double backward:
    g = torch.autograd.grad(loss, params, create_graph=True);  Hv = torch.autograd.grad(g, params, v)
The last line printed is "eigenvalue <v'Hv>", which ./curvature reads.
"""
import sys

import numpy as np
import torch


class CharLSTM(torch.nn.Module):
    def __init__(self, vocab, embed, hidden):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, embed)
        self.lstm = torch.nn.LSTM(embed, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def loss(self, inputs, targets):
        out, _ = self.lstm(self.embedding(inputs))
        logits = self.head(out.reshape(-1, out.shape[-1]))
        return torch.nn.functional.cross_entropy(logits, targets.reshape(-1))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    data = np.load(sys.argv[1])
    vocab, embed = data["embedding.weight"].shape
    hidden = data["lstm.weight_hh_l0"].shape[1]
    model = CharLSTM(vocab, embed, hidden).double()
    state = {k: torch.from_numpy(data[k]) for k in model.state_dict()}
    model.load_state_dict(state, strict=True)
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    inputs = torch.from_numpy(data["inputs"])
    targets = torch.from_numpy(data["targets"])
    iterations = int(data["iterations"][0])

    v = [torch.from_numpy(data["v0." + n]) for n in names]
    norm = torch.sqrt(sum((t * t).sum() for t in v))
    v = [t / norm for t in v]
    eigenvalue = None
    for it in range(iterations):
        loss = model.loss(inputs, targets)
        g = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(g, params, grad_outputs=v)
        eigenvalue = float(sum((a * b).sum() for a, b in zip(v, hv)))
        hv_norm = torch.sqrt(sum((t * t).sum() for t in hv))
        if it + 1 < iterations:
            v = [t / hv_norm for t in hv]
    print(f"loss {float(model.loss(inputs, targets)):.10f}; xgrad's eigenvalue {float(data['xgrad_eigenvalue'][0]):.17g}")
    print(f"eigenvalue {eigenvalue:.17g}")


if __name__ == "__main__":
    main()
