#!/usr/bin/env python3
"""Turns the ```cpp blocks of one Markdown page into one C++ program, so the docs compile.

    doc_blocks.py PAGE.md -o OUT.cpp [--prelude FILE] [--root DIR]
    doc_blocks.py --check-listed DOCS_DIR LISTED.md...

Every ```cpp block of the page becomes part of ONE translation unit (one compiler call per
page), each block in its own namespace `doc_block_<line>` with `using namespace xg;`:

  - a block that defines `int main(` is a whole program: it goes in at namespace scope and
    the generated main calls its main() (which must return 0);
  - any other block is a fragment: the statements of a function body, which the generated
    main runs in page order (a thrown exception fails the page, naming the block's line).

An HTML comment right before the fence (blank lines allowed) changes that. Its first line
holds flags, the lines after it hidden C++ put before the block's code (declarations the
reader does not need to see, like rustdoc's `# ` lines):

    <!-- doc: compile-only -->        compiled, never run (needs MPI, a terminal, a file)
    <!-- doc: toplevel -->            declarations at namespace scope (structs, functions)
    <!-- doc: no-compile -->          neither (pseudo-code; avoid)
    <!-- doc: dist compile-only -->   uses xg::dist: compiled only with --dist (MPI found)
    <!-- doc:
    nn::LSTM model(4, 8);
    -->                               hidden setup code, then the block

Names a block declares at namespace scope are visible to the later blocks of the page.
`#include` lines are hoisted to the top of the file; `<xgrad/xgrad.hpp>` is always
included. Each block carries `#line` directives, so a compile error names the Markdown
file and line. The program runs in a fresh temporary directory, so blocks may write files.

Flags combine: `<!-- doc: dist compile-only -->`.
--prelude FILE is pasted after the includes (e.g. a local shim while an API is renamed).
--check-listed fails when a .md under DOCS_DIR that has ```cpp blocks is not LISTED, or when
a relative link of a LISTED page names a missing file or a heading that is not there.
"""
import argparse
import os
import re
import sys

FENCE = re.compile(r"^(\s*)```+\s*([A-Za-z0-9_+-]*)\s*$")
MAIN = re.compile(r"\bint\s+main\s*\(")
INCLUDE = re.compile(r"^\s*#\s*include\s*[<\"].*[>\"]\s*$")
FLAGS = {"compile-only", "toplevel", "no-compile", "dist"}


class Block:
    def __init__(self, line, code, flags, setup, setup_line):
        self.line = line  # 1-based line of the first code line
        self.code = code
        self.flags = flags
        self.setup = setup
        self.setup_line = setup_line


def parse(path):
    """The ```cpp blocks of a page, with the flags and setup of the comment before each."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang = m.group(2)
        start = i
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```+\s*$", lines[j]):
            j += 1
        if j == len(lines):
            raise SystemExit(f"{path}:{start + 1}: code block is not closed")
        if lang == "cpp":
            flags, setup, setup_line = directive(path, lines, start)
            indent = len(m.group(1))
            code = [ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[start + 1:j]]
            blocks.append(Block(start + 2, code, flags, setup, setup_line))
        i = j + 1
    return blocks


def directive(path, lines, fence):
    """Flags and hidden setup lines of a `<!-- doc: ... -->` comment ending before `fence`."""
    k = fence - 1
    while k >= 0 and lines[k].strip() == "":
        k -= 1
    if k < 0 or not lines[k].rstrip().endswith("-->"):
        return set(), [], 0
    end = k
    while k >= 0 and "<!--" not in lines[k]:
        k -= 1
    if k < 0:
        return set(), [], 0
    text = lines[k:end + 1]
    head = text[0].split("<!--", 1)[1].strip()
    if not head.startswith("doc:"):
        return set(), [], 0
    if len(text) == 1:
        head = head[: -len("-->")]
        body = []
    else:
        body = text[1:]
        body[-1] = body[-1].rstrip()[: -len("-->")]
        if body[-1].strip() == "":
            body = body[:-1]
    flags = set(head[len("doc:"):].split())
    unknown = flags - FLAGS
    if unknown:
        raise SystemExit(f"{path}:{k + 1}: unknown doc flag(s) {sorted(unknown)}; known: {sorted(FLAGS)}")
    return flags, body, k + 2


def c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate(path, shown, blocks, prelude, dist):
    includes = ["#include <xgrad/xgrad.hpp>"]
    out_blocks = []
    runs = []  # (kind, namespace, line)
    for b in blocks:
        if "no-compile" in b.flags or ("dist" in b.flags and not dist):
            continue
        ns = f"doc_block_{b.line}"
        code = []
        for ln in b.code:
            if INCLUDE.match(ln):
                inc = ln.strip()
                if inc not in includes:
                    includes.append(inc)
                code.append("")  # keep the line numbers
            else:
                code.append(ln)
        text = [f"namespace {ns} {{", "using namespace xg;"]
        text += [f"using namespace {prev};" for prev in out_blocks_names(out_blocks)]
        is_program = any(MAIN.search(ln) for ln in code)
        setup = []
        if b.setup:
            setup = [f"#line {b.setup_line} {c_string(shown)}"] + b.setup
        body = [f"#line {b.line} {c_string(shown)}"] + code
        if is_program or "toplevel" in b.flags:
            if b.setup:
                raise SystemExit(f"{path}:{b.line}: hidden setup code needs a fragment block, not a program or toplevel")
            text += body
            if is_program and "compile-only" not in b.flags:
                runs.append(("main", ns, b.line))
        else:
            text += ["void doc_run() {"] + setup + body + ["}"]
            if "compile-only" not in b.flags:
                runs.append(("fragment", ns, b.line))
        text.append(f"}}  // namespace {ns}")
        out_blocks.append((ns, text))

    src = [f"// Generated by tools/doc_blocks.py from {shown}: do not edit."]
    src += includes
    src += ["#include <cstdio>", "#include <cstdlib>", "#include <exception>", "#include <filesystem>",
            "#include <string>", "#include <unistd.h>"]
    if prelude:
        with open(prelude, encoding="utf-8") as f:
            src += [f"// prelude: {prelude}", f.read()]
    src.append("#line 1 " + c_string(shown))
    for _, text in out_blocks:
        src += text
    src.append("#line 100000 " + c_string(os.path.basename(__file__)))
    src.append("int main() {")
    src.append("  namespace fs = std::filesystem;")
    src.append("  std::string tmpl = (fs::temp_directory_path() / \"xgrad_docs.XXXXXX\").string();")
    src.append("  if (!mkdtemp(tmpl.data())) { std::perror(\"mkdtemp\"); return 1; }")
    src.append("  const fs::path dir = tmpl;")
    src.append("  fs::current_path(dir);")
    src.append("  int failed = 0, ran = 0;")
    for kind, ns, line in runs:
        where = c_string(f"{shown}:{line}")
        src.append("  try {")
        src.append("    ++ran;")
        if kind == "main":
            src.append(f"    const int rc = {ns}::main();")
            src.append(f"    if (rc != 0) {{ std::fprintf(stderr, \"%s: main() returned %d\\n\", {where}, rc); ++failed; }}")
        else:
            src.append(f"    {ns}::doc_run();")
        src.append("  } catch (const std::exception& e) {")
        src.append(f"    std::fprintf(stderr, \"%s: the block threw: %s\\n\", {where}, e.what());")
        src.append("    ++failed;")
        src.append("  }")
    src.append("  fs::current_path(dir.parent_path());")
    src.append("  std::error_code ec;")
    src.append("  fs::remove_all(dir, ec);")
    src.append(f"  std::printf(\"%s: %d block(s) run, %d failed\\n\", {c_string(shown)}, ran, failed);")
    src.append("  return failed == 0 ? 0 : 1;")
    src.append("}")
    return "\n".join(src) + "\n"


def out_blocks_names(out_blocks):
    return [ns for ns, _ in out_blocks]


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path):
    out = set()
    in_code = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.lstrip().startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                out.add(slug(line.lstrip("#")))
    return out


def broken_links(page):
    """Relative links of `page` to a missing file or a missing heading."""
    bad = []
    in_code = False
    with open(page, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            if in_code:
                continue
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
                if not os.path.exists(path):
                    bad.append(f"{page}:{n}: link to a missing file: {target}")
                elif anchor and path.endswith(".md") and anchor not in anchors(path):
                    bad.append(f"{page}:{n}: link to a missing heading: {target}")
    return bad


def check_listed(docs_dir, listed):
    names = {os.path.realpath(p) for p in listed}
    missing = []
    for name in sorted(os.listdir(docs_dir)):
        p = os.path.join(docs_dir, name)
        if name.endswith(".md") and os.path.realpath(p) not in names and parse(p):
            missing.append(p)
    bad = [b for p in listed for b in broken_links(p)]
    for b in bad:
        print("doc_blocks.py: " + b, file=sys.stderr)
    if missing:
        print("doc_blocks.py: pages with ```cpp blocks that no test compiles (add them to docs/meson.build): "
              + ", ".join(missing), file=sys.stderr)
        return 1
    if bad:
        return 1
    print(f"doc_blocks.py: every page of {docs_dir} with C++ blocks is compiled")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("page", nargs="?")
    ap.add_argument("-o", "--output")
    ap.add_argument("--prelude", help="C++ pasted after the includes")
    ap.add_argument("--dist", action="store_true", help="compile the blocks flagged dist (xgrad-dist is linked)")
    ap.add_argument("--root", help="paths in messages are relative to this directory")
    ap.add_argument("--check-listed", nargs="+", metavar=("DOCS_DIR", "LISTED"))
    args = ap.parse_args()
    if args.check_listed:
        return check_listed(args.check_listed[0], args.check_listed[1:])
    if not args.page or not args.output:
        ap.error("PAGE and -o OUT are required")
    shown = os.path.relpath(args.page, args.root) if args.root else args.page
    src = generate(args.page, shown, parse(args.page), args.prelude, args.dist)
    # Write only when changed, so ninja does not rebuild an unchanged page.
    old = None
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            old = f.read()
    if old != src:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
