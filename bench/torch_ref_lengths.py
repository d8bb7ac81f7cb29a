#!/usr/bin/python3
"""PyTorch reference for `xgrad_bench charlstm --lengths uniform`: the charlstm model of
../shared/bench/torch_ref.py (Embedding(96,64) -> 2-layer LSTM(256) -> Linear(256,96), B=32,
T=64, Adam(2e-3), clip 5, state carried detached) on batches whose rows have lengths uniform in
[T/2, T], the loss on the real tokens only (ignore_index past each length).

    /usr/bin/python3 bench/torch_ref_lengths.py [--variant packed|padded|all] [--steps 20]
                                                [--warmup 3] [--threads 1] [--json]

packed: nn.LSTM over pack_padded_sequence(enforce_sorted=False), pad_packed_sequence after;
padded: nn.LSTM over the whole padded batch (same masked loss), what packing is measured against.
One JSON line per variant, each run in this process one after the other.
"""
import argparse
import json
import os
import statistics
import sys
import time

SEED = 1234
V, E, H, LAYERS, B, T = 96, 64, 256, 2, 32, 64


def run(torch, variant, steps, warmup):
    nn, F = torch.nn, torch.nn.functional
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(SEED)
    emb, rnn, fc = nn.Embedding(V, E), nn.LSTM(E, H, num_layers=LAYERS), nn.Linear(H, V)
    params = list(emb.parameters()) + list(rnn.parameters()) + list(fc.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    g = torch.Generator().manual_seed(SEED + 1)
    n = warmup + steps
    batches, real = [], 0
    for _ in range(n):
        x = torch.randint(0, V, (T, B), generator=g)
        y = torch.randint(0, V, (T, B), generator=g)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        real += int(lengths.sum())
        y[torch.arange(T).unsqueeze(1) >= lengths.unsqueeze(0)] = -100
        batches.append((x, y, lengths))
    state = (torch.zeros(LAYERS, B, H), torch.zeros(LAYERS, B, H))
    tot = []
    for i, (x, y, lengths) in enumerate(batches):
        t0 = time.perf_counter()
        if variant == "packed":
            packed = pack_padded_sequence(emb(x), lengths, enforce_sorted=False)
            out, st = rnn(packed, state)
            out, _ = pad_packed_sequence(out, total_length=T)
        else:
            out, st = rnn(emb(x), state)
        loss = F.cross_entropy(fc(out).reshape(-1, V), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        state = (st[0].detach(), st[1].detach())
        if i >= warmup:
            tot.append((time.perf_counter() - t0) * 1e3)
    return {"workload": "charlstm", "variant": "torch_" + variant, "threads": torch.get_num_threads(),
            "median_ms": statistics.median(tot), "min_ms": min(tot), "max_ms": max(tot), "steps": steps,
            "T": T, "real_token_fraction": real / (n * B * T), "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="all", choices=["packed", "padded", "all"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    for v in (["padded", "packed"] if args.variant == "all" else [args.variant]):
        r = run(torch, v, args.steps, args.warmup)
        print(json.dumps(r) if args.json else "  ".join(f"{k}={v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
