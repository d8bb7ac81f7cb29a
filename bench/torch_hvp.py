#!/usr/bin/python3
"""PyTorch reference for `xgrad_bench hvp`: the charlstm model of ../shared/bench/torch_ref.py
(Embedding(96,64) -> 2-layer LSTM(256) -> Linear(256,96) -> cross-entropy, B=32, T=64, float32,
state from zeros, no optimizer) differentiated twice per step: one gradient (forward +
torch.autograd.grad) and one Hessian-vector product H v = d/dθ <dL/dθ, v> (forward +
torch.autograd.grad(create_graph=True) + torch.autograd.grad of <g, v>), on the same batch one
after the other. v is a fixed N(0, 1) direction per parameter.

    /usr/bin/python3 bench/torch_hvp.py [--variant fused|loop|all] [--steps 10] [--warmup 3]
                                        [--threads 1] [--json]

fused: nn.LSTM; loop: the LSTM from ops of torch_ref.py's LoopLSTM (per step and layer two
matmuls, bias, chunk, sigmoid/tanh, products). Each variant runs in a fresh process (clean peak
RSS). One JSON line per variant: median_ms is the H v's, grad_ms beside it, and the CPU time of
each (time.process_time: the machine is shared).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SEED = 1234
V, E, H, LAYERS, B, T = 96, 64, 256, 2, 32, 64


def build(torch, variant):
    nn = torch.nn

    class LoopLSTM(nn.Module):
        """torch_ref.py's LoopLSTM (weights [in, 4H], one bias per layer)."""

        def __init__(self, input_size, hidden, layers):
            super().__init__()
            self.hidden, self.layers = hidden, layers
            k = 1.0 / hidden ** 0.5
            self.w_ih, self.w_hh, self.bias = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
            for l in range(layers):
                isz = input_size if l == 0 else hidden
                self.w_ih.append(nn.Parameter(torch.empty(isz, 4 * hidden).uniform_(-k, k)))
                self.w_hh.append(nn.Parameter(torch.empty(hidden, 4 * hidden).uniform_(-k, k)))
                self.bias.append(nn.Parameter(torch.empty(4 * hidden).uniform_(-k, k)))

        def forward(self, xs, state):
            h = list(state[0].unbind(0))
            c = list(state[1].unbind(0))
            outs = []
            for t in range(xs.shape[0]):
                inp = xs[t]
                for l in range(self.layers):
                    gates = inp @ self.w_ih[l] + h[l] @ self.w_hh[l] + self.bias[l]
                    i, f, g, o = gates.chunk(4, dim=1)
                    c[l] = torch.sigmoid(f) * c[l] + torch.sigmoid(i) * torch.tanh(g)
                    h[l] = torch.sigmoid(o) * torch.tanh(c[l])
                    inp = h[l]
                outs.append(inp)
            return torch.stack(outs), (torch.stack(h), torch.stack(c))

    emb = nn.Embedding(V, E)
    rnn = nn.LSTM(E, H, num_layers=LAYERS) if variant == "fused" else LoopLSTM(E, H, LAYERS)
    fc = nn.Linear(H, V)
    return emb, rnn, fc


def openblas_core():
    """OpenBLAS's kernel (compare.py shows it beside xgrad's), or None."""
    try:
        import ctypes
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return None


def run(torch, variant, steps, warmup):
    F = torch.nn.functional
    torch.manual_seed(SEED)
    emb, rnn, fc = build(torch, variant)
    params = list(emb.parameters()) + list(rnn.parameters()) + list(fc.parameters())
    g = torch.Generator().manual_seed(SEED + 4)
    v = [torch.randn(p.shape, generator=g) for p in params]
    g = torch.Generator().manual_seed(SEED + 1)
    n = warmup + steps
    batches = [(torch.randint(0, V, (T, B), generator=g), torch.randint(0, V, (T * B,), generator=g))
               for _ in range(n)]
    zeros = torch.zeros(LAYERS, B, H)

    def loss_of(x, y):
        out, _ = rnn(emb(x), (zeros, zeros))
        return F.cross_entropy(fc(out).reshape(-1, V), y)

    grad_ms, hvp_ms, grad_cpu, hvp_cpu = [], [], [], []
    loss_first = vhv_first = None
    for i, (x, y) in enumerate(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.autograd.grad(loss_of(x, y), params)
        t1, c1 = time.perf_counter(), time.process_time()
        loss = loss_of(x, y)
        gs = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(gs, v))
        hv = torch.autograd.grad(dot, params)
        t2, c2 = time.perf_counter(), time.process_time()
        if i == 0:
            loss_first = loss.item()
            vhv_first = sum((vi * hi).sum() for vi, hi in zip(v, hv)).item()
        if i >= warmup:
            grad_ms.append((t1 - t0) * 1e3)
            hvp_ms.append((t2 - t1) * 1e3)
            grad_cpu.append((c1 - c0) * 1e3)
            hvp_cpu.append((c2 - c1) * 1e3)
    med = statistics.median
    return {"workload": "hvp", "variant": variant, "threads": torch.get_num_threads(),
            "median_ms": med(hvp_ms), "min_ms": min(hvp_ms), "max_ms": max(hvp_ms),
            "tokens_per_s": B * T / (med(hvp_ms) / 1e3), "steps": steps, "warmup": warmup, "T": T,
            "grad_ms": med(grad_ms), "hvp_ms": med(hvp_ms), "hvp_over_grad": med(hvp_ms) / med(grad_ms),
            "grad_cpu_ms": med(grad_cpu), "hvp_cpu_ms": med(hvp_cpu),
            "hvp_over_grad_cpu": med(hvp_cpu) / med(grad_cpu),
            "loss_first": loss_first, "vhv_first": vhv_first,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "openblas_core": openblas_core(), "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="all", choices=["fused", "loop", "all"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.variant == "all":
        for v in ("fused", "loop"):
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", v, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads)] + (["--json"] if args.json else [])
            subprocess.run(cmd, check=True)
        return 0
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    r = run(torch, args.variant, args.steps, args.warmup)
    if args.json:
        print(json.dumps(r), flush=True)
    else:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
