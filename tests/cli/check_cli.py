#!/usr/bin/env python3
"""Runs every row of bad_flags.txt: each example is given a bad command line and must refuse
it at once, before any work, with one line on stderr that names the flag, and the exit code
the row expects (CLI11's code for a bad flag, 1 for a run that failed). Never 0, never a
signal (an abort is 134, a segfault 139), never longer than a few seconds (a slower refusal
means the flag is checked after the work has started).

The examples are found in meson's introspection of this build (every executable defined
under examples/), so a new example without a row fails this test, as does a row for an
example that no longer exists.

usage: check_cli.py TABLE BUILD_ROOT SOURCE_ROOT
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROW_SECONDS = float(os.environ.get("XGRAD_CLI_ROW_SECONDS", "5"))  # a refusal takes milliseconds
TIMEOUT = 60  # a row that hangs is killed here


def examples_built(build_root, source_root):
    """name -> path of every executable target defined under SOURCE_ROOT/examples."""
    with open(os.path.join(build_root, "meson-info", "intro-targets.json")) as f:
        targets = json.load(f)
    examples_dir = os.path.join(os.path.realpath(source_root), "examples") + os.sep
    found = {}
    for t in targets:
        if t["type"] == "executable" and os.path.realpath(t["defined_in"]).startswith(examples_dir):
            found[t["name"]] = t["filename"][0]
    return found


def read_table(path):
    """Rows (line number, example, expected code or None, stderr substring, argument list)."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            words = shlex.split(line)
            if len(words) < 3:
                sys.exit(f"{path}:{n}: want: example code substring [arguments...]")
            example, code, needle, args = words[0], words[1], words[2], words[3:]
            rows.append((n, example, None if code == "-" else int(code), needle, args))
    return rows


def main():
    table, build_root, source_root = sys.argv[1:4]
    examples = examples_built(build_root, source_root)
    rows = read_table(table)
    failures = []
    listed = {r[1] for r in rows}
    for name in sorted(set(examples) - listed):
        failures.append(f"{name}: an example without a row in {os.path.basename(table)}: add its bad flags there")
    for name in sorted(listed - set(examples)):
        failures.append(f"{name}: a row for an example this build does not have")

    with tempfile.TemporaryDirectory(prefix="xgrad_cli_") as tmp:
        places = {
            "file": os.path.join(tmp, "not_a_checkpoint.txt"),  # exists, short, not a .npz
            "dir": os.path.join(tmp, "a_directory"),
            "missing": os.path.join(tmp, "no_such_file.npz"),
        }
        with open(places["file"], "w") as f:
            f.write("hello\n")
        os.mkdir(places["dir"])
        ran = 0
        for n, name, code, needle, args in rows:
            if code is None or name not in examples:
                continue  # "-": the example takes no command line (the table says why)
            args = [a.format(**places) for a in args]
            needle = needle.format(**places)
            what = f"row {n}: {name} {shlex.join(args)}"
            work = tempfile.mkdtemp(dir=tmp)  # the example's default out/ goes here, if anywhere
            t0 = time.monotonic()
            try:
                run = subprocess.run([examples[name]] + args, cwd=work, stdin=subprocess.DEVNULL,
                                     capture_output=True, text=True, errors="replace", timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                failures.append(f"{what}: still running after {TIMEOUT} s")
                continue
            seconds = time.monotonic() - t0
            ran += 1
            lines = [l for l in run.stderr.splitlines() if l.strip()]
            problems = []
            if run.returncode < 0 or run.returncode in (134, 139):
                problems.append(f"killed by a signal (exit {run.returncode})")
            elif run.returncode == 0:
                problems.append("exit 0: the bad input was accepted")
            elif run.returncode != code:
                problems.append(f"exit {run.returncode}, want {code}")
            if needle not in run.stderr:
                problems.append(f"stderr does not name {needle!r}")
            if len(lines) != 1:
                problems.append(f"{len(lines)} lines on stderr, want one")
            if seconds > ROW_SECONDS:
                problems.append(f"took {seconds:.1f} s (> {ROW_SECONDS:g} s): the flag is checked after work started")
            if problems:
                failures.append(f"{what}: " + "; ".join(problems) + "\n    stderr: " + run.stderr.strip()[-600:])
            else:
                print(f"ok {what}: exit {run.returncode} in {seconds * 1000:.0f} ms: {lines[0]}")

    for f in failures:
        print("FAIL " + f)
    print(f"check_cli: {ran} rows run over {len(examples)} examples, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
