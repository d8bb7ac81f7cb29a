#!/usr/bin/env python3
"""Prints 'N passed, N failed' counting test cases across one or more meson test logs
(testlog.json, one JSON object per line): doctest suites report their own case counts;
any other test counts as one case. A missing log counts as one failure."""
import json
import re
import sys

passed = failed = 0
lines = []
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            lines += [l for l in f if l.strip()]
    except OSError:
        failed += 1
for line in lines:
    t = json.loads(line)
    out = t.get("stdout", "") or ""
    m = re.findall(r"\[doctest\] test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed", out)
    if m:
        _, p, fl = m[-1]
        passed += int(p)
        failed += int(fl)
        if t.get("result") != "OK" and int(fl) == 0:
            failed += 1  # crashed or timed out after its counts
    elif t.get("result") in ("OK", "EXPECTEDFAIL"):
        passed += 1
    elif t.get("result") == "SKIP":
        pass
    else:
        failed += 1
print(f"{passed} passed, {failed} failed")
