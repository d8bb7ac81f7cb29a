#!/usr/bin/env python3
"""Prints 'N passed, N failed, N skipped' counting test cases across meson test logs
(testlog.json, one JSON object per line) given on the command line: doctest suites report
their own case counts (a skipped case counts as skipped); any other test counts as one
case, and meson's SKIP result (exit code 77) as one skipped. A log that is missing counts
as one failure: the run that should have written it did not finish."""
import json
import re
import sys

passed = failed = skipped = 0
lines = []
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            lines += [l for l in f if l.strip()]
    except OSError:
        print(f"count_tests: no test log {path}", file=sys.stderr)
        failed += 1
for line in lines:
    t = json.loads(line)
    out = t.get("stdout", "") or ""
    m = re.findall(r"\[doctest\] test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed \|\s*(\d+) skipped", out)
    if m:
        _, p, fl, sk = m[-1]
        passed += int(p)
        failed += int(fl)
        skipped += int(sk)
        if t.get("result") != "OK" and int(fl) == 0:
            failed += 1  # crashed or timed out after its counts
    elif t.get("result") in ("OK", "EXPECTEDFAIL"):
        passed += 1
    elif t.get("result") == "SKIP":
        skipped += 1
    else:
        failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
