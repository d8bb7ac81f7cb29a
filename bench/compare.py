#!/usr/bin/python3
"""Runs xgrad's benchmark and the PyTorch reference on the same workloads in the same
environment, alternating them over several repetitions, and prints per workload the
median of each and the ratio xgrad / PyTorch (below 1 means xgrad is faster).

    /usr/bin/python3 bench/compare.py [--build build] [--reps 3] [--threads 1]
                                      [--blas-core SkylakeX] [--workloads opoverhead,...]

Both sides get the same OMP/OPENBLAS thread counts and OPENBLAS_CORETYPE. PyTorch
and numpy come from Debian (apt-get install -y python3-torch python3-numpy).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# workload -> (xgrad variant label, torch_ref variant, the key compared)
WORKLOADS = {
    "opoverhead": ("chain", "chain", "ns_per_op"),
}


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    lines = [l for l in out.splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--torch-ref", default=os.path.join(ROOT, "..", "shared", "bench", "torch_ref.py"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blas-core", default=None)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    args = p.parse_args()

    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(args.threads)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if args.blas_core:
        env["OPENBLAS_CORETYPE"] = args.blas_core
    xgrad_bench = os.path.join(args.build, "bench", "xgrad_bench")
    rows = []
    for w in args.workloads.split(","):
        variant, torch_variant, key = WORKLOADS[w]
        xs, ts, meta = [], [], {}
        for _ in range(args.reps):
            x = run_json([xgrad_bench, w, "--threads", str(args.threads)], env)
            t = run_json([sys.executable, args.torch_ref, w, "--threads", str(args.threads), "--json",
                          "--variant", torch_variant], env)
            xs.append(x[key])
            ts.append(t[key])
            meta = {"blas": x.get("blas"), "blas_core": x.get("blas_core"),
                    "torch_core": t.get("openblas_core")}
        mx, mt = statistics.median(xs), statistics.median(ts)
        rows.append((w, key, mx, mt, mx / mt, meta))
        print(json.dumps({"workload": w, "key": key, "xgrad": mx, "torch": mt, "ratio": mx / mt,
                          "xgrad_runs": xs, "torch_runs": ts, "threads": args.threads, **meta}))
    print(f"\n{'workload':14} {'metric':12} {'xgrad':>12} {'pytorch':>12} {'ratio':>7}")
    for w, key, mx, mt, r, _ in rows:
        print(f"{w:14} {key:12} {mx:12.4g} {mt:12.4g} {r:7.3f}")


if __name__ == "__main__":
    main()
