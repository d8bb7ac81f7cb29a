#!/usr/bin/env python3
"""Prints 'N passed, N failed' counting test cases across meson's test log: doctest
suites report their own case counts; any other test counts as one case."""
import json
import re
import sys

passed = failed = 0
with open(sys.argv[1]) as f:
    for line in f:
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
