#!/usr/bin/env python3
"""Tests of tools/doc_blocks.py's conventions (what each marker does to a block), without a
compiler: the docs suite compiles the real pages."""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import doc_blocks  # noqa: E402

PAGE = """# A page

```cpp
Tensor a = ones({2});
```

<!-- doc: toplevel -->
```cpp
#include <cmath>
int twice(int x) { return 2 * x; }
```

```cpp
#include <xgrad/xgrad.hpp>
int main() { return twice(0); }
```

<!-- doc: compile-only -->
```cpp
wait_for_a_terminal();
```

<!-- doc: no-compile -->
```cpp
for (...) { pseudo code }
```

<!-- doc: dist compile-only -->
```cpp
dist::init();
```

<!-- doc:
Tensor hidden_setup = zeros({3});
-->
```cpp
Tensor shown = hidden_setup;
```

```sh
echo not C++
```
"""


def generate(text, dist=False, prelude=None):
    with tempfile.TemporaryDirectory() as d:
        page = os.path.join(d, "page.md")
        with open(page, "w", encoding="utf-8") as f:
            f.write(text)
        return doc_blocks.generate(page, "page.md", doc_blocks.parse(page), prelude, dist)


class Markers(unittest.TestCase):
    def setUp(self):
        self.src = generate(PAGE)

    def test_fragment_is_a_function_body_that_runs(self):
        self.assertIn("namespace doc_block_4 {", self.src)
        self.assertIn('void doc_run() {\n#line 4 "page.md"\nTensor a = ones({2});', self.src)
        self.assertIn("doc_block_4::doc_run();", self.src)

    def test_toplevel_is_declared_not_run(self):
        self.assertIn('#line 9 "page.md"\n\nint twice(int x)', self.src)
        self.assertNotIn("doc_block_9::", self.src)

    def test_program_main_is_called_and_sees_earlier_blocks(self):
        self.assertIn("using namespace doc_block_9;", self.src)
        self.assertIn("const int rc = doc_block_14::main();", self.src)

    def test_includes_are_hoisted_once(self):
        self.assertEqual(self.src.count("#include <xgrad/xgrad.hpp>"), 1)
        self.assertLess(self.src.index("#include <cmath>"), self.src.index("namespace doc_block_4"))

    def test_compile_only_is_compiled_not_run(self):
        self.assertIn("wait_for_a_terminal();", self.src)
        self.assertNotIn("doc_block_20::doc_run();", self.src)

    def test_no_compile_and_shell_blocks_are_left_out(self):
        self.assertNotIn("pseudo code", self.src)
        self.assertNotIn("not C++", self.src)

    def test_dist_blocks_only_with_dist(self):
        self.assertNotIn("dist::init();", self.src)
        self.assertIn("dist::init();", generate(PAGE, dist=True))

    def test_hidden_setup_comes_first_with_its_own_line(self):
        setup = self.src.index("Tensor hidden_setup = zeros({3});")
        self.assertLess(setup, self.src.index("Tensor shown = hidden_setup;"))
        self.assertIn('#line 34 "page.md"\nTensor hidden_setup', self.src)

    def test_prelude_is_pasted_before_the_blocks(self):
        with tempfile.NamedTemporaryFile("w", suffix=".hpp", delete=False) as f:
            f.write("namespace shim {}\n")
        try:
            src = generate(PAGE, prelude=f.name)
        finally:
            os.unlink(f.name)
        self.assertLess(src.index("namespace shim {}"), src.index("namespace doc_block_4"))


class Errors(unittest.TestCase):
    def test_unknown_flag(self):
        with self.assertRaises(SystemExit):
            generate("<!-- doc: compile-ony -->\n```cpp\nint x;\n```\n")

    def test_unclosed_block(self):
        with self.assertRaises(SystemExit):
            generate("```cpp\nint x;\n")

    def test_setup_on_a_program(self):
        with self.assertRaises(SystemExit):
            generate("<!-- doc:\nint y;\n-->\n```cpp\nint main() { return 0; }\n```\n")


class Links(unittest.TestCase):
    def test_missing_file_and_heading(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "b.md"), "w", encoding="utf-8") as f:
                f.write("# B\n\n## The `record` op (custom)\n")
            a = os.path.join(d, "a.md")
            with open(a, "w", encoding="utf-8") as f:
                f.write("[ok](b.md#the-record-op-custom) [gone](c.md) [bad](b.md#nope) `x[](i)`\n"
                        "```cpp\nv[](y);\n```\n")
            bad = doc_blocks.broken_links(a)
        self.assertEqual(len(bad), 2, bad)
        self.assertIn("c.md", bad[0])
        self.assertIn("b.md#nope", bad[1])


if __name__ == "__main__":
    unittest.main()
