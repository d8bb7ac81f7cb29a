#!/usr/bin/env python3
"""Smoke test: a run that overfits ends on its best model, not its last.

    best_check.py CHAR_RNN DATA WORKDIR

Trains a small LSTM on one small file (DATA) until it overfits (the validation bpc
rises again), then checks from the outside what char_rnn prints and writes:
  - the validation it reports at the end is the lowest of the metrics log's validation
    column (every evaluation of the run), and lower than the last evaluation's;
  - best.npz loads (--load) and says the step of that lowest evaluation;
  - resumed from its step-280 checkpoint (after the best step), a second run ends on the
    same best model, carried in the checkpoint: the same final line, sample and best.npz.
char_rnn's own --check also requires the final score to equal the best one, to the bit.
"""
import csv
import os
import re
import shutil
import subprocess
import sys

OVERFIT = ["--hidden", "128", "--layers", "1", "--embed", "16", "--batch", "8", "--seq-len", "32",
           "--steps", "300", "--time-budget", "0", "--lr", "1e-2", "--valid-fraction", "0.1",
           "--eval-every", "20", "--sample", "100", "--threads", "1", "--checkpoint-every", "140",
           "--check", "--check-bpc", "6.0"]


def final_line(out):
    m = re.search(r"^validation: .*$", out, re.M)
    return m.group(0) if m else None


def loaded_step(exe, path):
    run = subprocess.run([exe, "--load", path, "--sample", "20"], stdout=subprocess.PIPE, text=True)
    m = re.search(r"^loaded .* \(step (\d+)\)", run.stdout, re.M)
    return int(m.group(1)) if run.returncode == 0 and m else None


def main() -> int:
    exe, data, top = sys.argv[1], sys.argv[2], sys.argv[3]
    shutil.rmtree(top, ignore_errors=True)
    work, resumed = os.path.join(top, "a"), os.path.join(top, "b")
    run = subprocess.run([exe, "--data", data, "--out", work] + OVERFIT, stdout=subprocess.PIPE, text=True)
    print(run.stdout)
    if run.returncode != 0:
        print("best_check: char_rnn exited with %d" % run.returncode)
        return 1
    with open(os.path.join(work, "metrics.csv"), newline="") as f:
        evals = [(int(r["step"]), float(r["valid_bpc"])) for r in csv.DictReader(f) if r["valid_bpc"]]
    best_step, best_bpc = min(evals, key=lambda e: (e[1], e[0]))
    last_step, last_bpc = evals[-1]
    m = re.search(r"^validation: ([0-9.]+) bits per character", run.stdout, re.M)
    if not m:
        print("best_check: no 'validation:' line in the output")
        return 1
    final = float(m.group(1))
    bad = 0
    if abs(final - round(best_bpc, 3)) > 1e-9:
        print("best_check: reported %.3f, but the lowest validation logged is %.6f (step %d)" % (final, best_bpc, best_step))
        bad += 1
    if not last_bpc > best_bpc:
        print("best_check: the run did not overfit (last %.4f at step %d, best %.4f at step %d): "
              "nothing to restore, the test tests nothing" % (last_bpc, last_step, best_bpc, best_step))
        bad += 1
    if loaded_step(exe, os.path.join(work, "best.npz")) != best_step:
        print("best_check: --load best.npz does not load the model of step %d" % best_step)
        bad += 1
    # Resumed after the best step: the best model comes from the checkpoint alone (another --out).
    resume_from = os.path.join(work, "checkpoint_step280.npz")
    if best_step >= 280:
        print("best_check: the best step %d is not before the resume point 280" % best_step)
        bad += 1
    run_b = subprocess.run([exe, "--data", data, "--out", resumed, "--resume", resume_from] + OVERFIT,
                           stdout=subprocess.PIPE, text=True)
    if run_b.returncode != 0 or final_line(run_b.stdout) != final_line(run.stdout):
        print("best_check: resumed from step 280: exit %d, final line %r, uninterrupted %r"
              % (run_b.returncode, final_line(run_b.stdout), final_line(run.stdout)))
        bad += 1
    with open(os.path.join(work, "sample.txt"), "rb") as fa, open(os.path.join(resumed, "sample.txt"), "rb") as fb:
        if fa.read() != fb.read():
            print("best_check: the resumed run's sample differs")
            bad += 1
    if loaded_step(exe, os.path.join(resumed, "best.npz")) != best_step:
        print("best_check: the resumed run's best.npz is not the model of step %d" % best_step)
        bad += 1
    if bad:
        return 1
    print("best_check: reported %.3f = the best of %d evaluations (step %d); the last (step %d) had %.3f; "
          "resumed from step 280, the same" % (final, len(evals), best_step, last_step, last_bpc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
