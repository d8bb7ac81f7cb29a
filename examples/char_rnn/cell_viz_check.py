#!/usr/bin/env python3
"""Smoke test: cell_viz on a freshly trained tiny char_rnn checkpoint writes the page.

    cell_viz_check.py CHAR_RNN CELL_VIZ WORKDIR

Checks that cell_viz exits 0 and that cells.html parses, has one <section> per feature
with its heading and correlation, every character of the excerpt in coloured spans, and
balanced tags.
"""
import html.parser
import os
import shutil
import subprocess
import sys

FEATURES = {
    "string": "inside a string or char literal",
    "comment": "inside a comment",
    "parens": "depth of ( ) and [ ] nesting",
    "braces": "depth of { } nesting",
    "column": "position in the line",
    "indent": "indentation of the line",
}


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.stack, self.spans, self.pre_text = [], [], 0, 0
        self.h2 = {}
        self.current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
            self.current = attrs.get("id")
        if tag == "span":
            self.spans += 1
        if tag not in ("meta", "br", "link", "img", "hr"):  # void elements have no end tag
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            raise ValueError("unbalanced </%s> (open: %s)" % (tag, self.stack[-3:]))
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "h2" and self.current:
            self.h2[self.current] = self.h2.get(self.current, "") + data
        if "pre" in self.stack:
            self.pre_text += len(data)


def main() -> int:
    char_rnn, cell_viz, work = sys.argv[1], sys.argv[2], sys.argv[3]
    shutil.rmtree(work, ignore_errors=True)
    model_dir, viz_dir = os.path.join(work, "model"), os.path.join(work, "viz")
    # 200 steps: after 100, a change of rounding alone (another GEMM kernel) left every chosen
    # cell saturated, one colour over the whole excerpt (8 spans); 200 gives 1,300+. Without
    # dropout (the demo's default has it), as this was measured.
    subprocess.run([char_rnn, "--hidden", "32", "--layers", "2", "--embed", "16", "--batch", "16",
                    "--seq-len", "32", "--steps", "200", "--time-budget", "0", "--lr", "1e-2",
                    "--valid-chars", "2000", "--eval-every", "0", "--checkpoint-every", "0", "--sample", "0",
                    "--threads", "1", "--dropout", "0", "--out", model_dir], check=True)
    subprocess.run([cell_viz, "--load", os.path.join(model_dir, "checkpoint.npz"), "--chars", "4000",
                    "--show", "600", "--threads", "1", "--out", viz_dir], check=True)
    path = os.path.join(viz_dir, "cells.html")
    with open(path, encoding="utf-8") as f:  # must be valid UTF-8
        text = f.read()
    page = Page()
    page.feed(text)
    page.close()
    problems = []
    if page.stack:
        problems.append("unclosed tags: %s" % page.stack)
    if page.sections != list(FEATURES):
        problems.append("sections %s, expected %s" % (page.sections, list(FEATURES)))
    for key, label in FEATURES.items():
        if label not in page.h2.get(key, "") or "cell" not in page.h2.get(key, ""):
            problems.append("section %s: heading %r lacks %r" % (key, page.h2.get(key), label))
    if text.count("correlation of tanh(c) with the feature: r = ") != len(FEATURES):
        problems.append("not one correlation line per section")
    if page.pre_text < 6 * 400 or page.spans < 6 * 10:
        problems.append("excerpts too short: %d chars in %d spans" % (page.pre_text, page.spans))
    for p in problems:
        print("cell_viz_check:", p)
    if problems:
        return 1
    print("cell_viz_check: %s: %d sections, %d chars in %d coloured spans, %d KB"
          % (path, len(page.sections), page.pre_text, page.spans, len(text) // 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
