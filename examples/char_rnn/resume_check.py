#!/usr/bin/env python3
"""Smoke test: a run resumed from a checkpoint continues exactly like the uninterrupted run.

    resume_check.py CHAR_RNN WORKDIR

Runs 60 steps with a checkpoint every 30 (run A), then resumes A's step-30 checkpoint into
another directory and runs to step 60 (run B). Steps 31..60 of both metrics logs must have
the same training loss, gradient norm and validation bpc, digit for digit (the CSV writes
the shortest text that reads back as the same double, so equal text is equal doubles).
"""
import csv
import os
import shutil
import subprocess
import sys

TINY = ["--hidden", "32", "--layers", "2", "--embed", "8", "--batch", "8", "--seq-len", "16",
        "--time-budget", "0", "--lr", "1e-2", "--valid-chars", "2000", "--eval-every", "20",
        "--sample", "50", "--threads", "1"]


def rows(path):
    with open(path, newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def main() -> int:
    exe, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    a, b = os.path.join(work, "a"), os.path.join(work, "b")
    subprocess.run([exe] + TINY + ["--steps", "60", "--checkpoint-every", "30", "--out", a], check=True)
    subprocess.run([exe] + TINY + ["--steps", "60", "--resume", os.path.join(a, "checkpoint_step30.npz"),
                                   "--out", b], check=True)
    ra, rb = rows(os.path.join(a, "metrics.csv")), rows(os.path.join(b, "metrics.csv"))
    if sorted(rb) != list(range(31, 61)):
        print("resume_check: the resumed log has steps %s, expected 31..60" % sorted(rb))
        return 1
    bad = 0
    for step in range(31, 61):
        for col in ("epoch", "train_bpc", "grad_norm", "valid_bpc"):
            if ra[step][col] != rb[step][col]:
                print("resume_check: step %d %s: uninterrupted %s, resumed %s" % (step, col, ra[step][col], rb[step][col]))
                bad += 1
    with open(os.path.join(a, "sample.txt"), "rb") as fa, open(os.path.join(b, "sample.txt"), "rb") as fb:
        if fa.read() != fb.read():
            print("resume_check: the samples differ")
            bad += 1
    if bad:
        return 1
    print("resume_check: steps 31..60 identical after resuming from step 30 (last train bpc %s, valid bpc %s)"
          % (rb[60]["train_bpc"], rb[60]["valid_bpc"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
