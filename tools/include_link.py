#!/usr/bin/env python3
"""Makes LINK a symlink to TARGET (replacing an older link), creating LINK's parent.

    include_link.py TARGET LINK

meson.build runs it at configure time: <build>/xgrad -> the source root, so that
programs built against a build tree include <xgrad/...> exactly as they would from an
installed xgrad.
"""
import os
import sys


def main() -> int:
    target, link = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link):
        if os.readlink(link) == target:
            return 0
        os.remove(link)
    elif os.path.exists(link):
        print(f"include_link.py: {link} exists and is not a symlink", file=sys.stderr)
        return 1
    os.symlink(target, link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
