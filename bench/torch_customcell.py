#!/usr/bin/python3
"""PyTorch reference for xgrad_bench customcell: the same user-written cells (LSTM from ops
in a loop and with the input projection hoisted, a peephole LSTM, a GRU from ops) and
nn.LSTM / nn.GRU, one layer, I = H, T = 64, forward + backward of mean(output).

    /usr/bin/python3 bench/torch_customcell.py --size small|medium|large [--threads N]
                                               [--steps S] [--warmup W] [--blas-core NAME]

One JSON line per cell and mode: mode "eager" (the Python loop) and "script"
(torch.jit.script of the same cell loop). Sizes as bench_customcell.cpp: small H 64 B 8,
medium H 128 B 16, large H 256 B 32. Run with Debian's /usr/bin/python3 (python3-torch).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

SIZES = {"small": (64, 8), "medium": (128, 16), "large": (256, 32)}
T = 64


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="medium")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--blas-core", default=None)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


args = parse(sys.argv[1:])
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[k] = str(args.threads)
if args.blas_core:
    os.environ["OPENBLAS_CORETYPE"] = args.blas_core
import torch  # noqa: E402  (after the thread variables)

torch.set_num_threads(args.threads)
torch.manual_seed(1234)


def lstm_loop(xs, w_ih, w_hh, b):
    h = torch.zeros(xs.size(1), w_hh.size(0))
    c = torch.zeros_like(h)
    outs = []
    for t in range(xs.size(0)):
        g = (xs[t] @ w_ih + h @ w_hh + b).chunk(4, 1)
        c = torch.sigmoid(g[1]) * c + torch.sigmoid(g[0]) * torch.tanh(g[2])
        h = torch.sigmoid(g[3]) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 0)


def lstm_hoisted(xs, w_ih, w_hh, b):
    h = torch.zeros(xs.size(1), w_hh.size(0))
    c = torch.zeros_like(h)
    xp = xs @ w_ih + b
    outs = []
    for t in range(xs.size(0)):
        g = (xp[t] + h @ w_hh).chunk(4, 1)
        c = torch.sigmoid(g[1]) * c + torch.sigmoid(g[0]) * torch.tanh(g[2])
        h = torch.sigmoid(g[3]) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 0)


def peephole(xs, w_ih, w_hh, b, p_i, p_f, p_o):
    h = torch.zeros(xs.size(1), w_hh.size(0))
    c = torch.zeros_like(h)
    outs = []
    for t in range(xs.size(0)):
        g = (xs[t] @ w_ih + h @ w_hh + b).chunk(4, 1)
        i = torch.sigmoid(g[0] + c * p_i)
        f = torch.sigmoid(g[1] + c * p_f)
        c = f * c + i * torch.tanh(g[2])
        h = torch.sigmoid(g[3] + c * p_o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 0)


def gru_loop(xs, w_ih, w_hh, b_ih, b_hh):
    h = torch.zeros(xs.size(1), w_hh.size(0))
    outs = []
    for t in range(xs.size(0)):
        gi = (xs[t] @ w_ih + b_ih).chunk(3, 1)
        gh = (h @ w_hh + b_hh).chunk(3, 1)
        r = torch.sigmoid(gi[0] + gh[0])
        z = torch.sigmoid(gi[1] + gh[1])
        n = torch.tanh(gi[2] + r * gh[2])
        h = n + z * (h - n)
        outs.append(h)
    return torch.stack(outs, 0)


def param(*shape, k):
    return (torch.rand(*shape) * 2 * k - k).requires_grad_()


def timed(fn, params, xs):
    ms = []
    for i in range(args.warmup + args.steps):
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        loss = fn(xs).mean()
        loss.backward()
        t1 = time.perf_counter()
        if i >= args.warmup:
            ms.append((t1 - t0) * 1e3)
    return ms


def main():
    H, B = SIZES[args.size]
    k = 1.0 / H ** 0.5
    xs = torch.randn(T, B, H)
    lstm_p = [param(H, 4 * H, k=k), param(H, 4 * H, k=k), param(4 * H, k=k)]
    peep_p = lstm_p + [param(H, k=k), param(H, k=k), param(H, k=k)]
    gru_p = [param(H, 3 * H, k=k), param(H, 3 * H, k=k), param(3 * H, k=k), param(3 * H, k=k)]
    nn_lstm = torch.nn.LSTM(H, H)
    nn_gru = torch.nn.GRU(H, H)
    cells = {
        "lstm_loop": (lstm_loop, lstm_p),
        "lstm_hoisted": (lstm_hoisted, lstm_p),
        "peephole": (peephole, peep_p),
        "gru_loop": (gru_loop, gru_p),
    }
    rows = [("nn_lstm", "module", timed(lambda x: nn_lstm(x)[0], list(nn_lstm.parameters()), xs)),
            ("nn_gru", "module", timed(lambda x: nn_gru(x)[0], list(nn_gru.parameters()), xs))]
    for name, (f, ps) in cells.items():
        rows.append((name, "eager", timed(lambda x, f=f, ps=ps: f(x, *ps), ps, xs)))
        sf = torch.jit.script(f)
        rows.append((name, "script", timed(lambda x, sf=sf, ps=ps: sf(x, *ps), ps, xs)))
    for name, mode, ms in rows:
        print(json.dumps({"workload": "customcell", "variant": name, "mode": mode, "size": args.size,
                          "H": H, "B": B, "T": T, "threads": args.threads,
                          "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
