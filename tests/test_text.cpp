// xgrad/train/text.hpp: reading corpora, the byte vocabulary, splitting and batchify.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "xgrad/xgrad.hpp"

#include "helpers.hpp"
#include "run_in_child.hpp"

using namespace xg;
using namespace xg::training;
namespace fs = std::filesystem;

namespace {

using xgtest::TempDir;

template <class E, class F>
void check_throws_naming(F&& f, const std::string& needle) {
  xgtest::check_throws_msg<E>(std::forward<F>(f), {needle});
}

std::vector<std::int64_t> ids_of(const Tensor& t) { return t.to_vector<std::int64_t>(); }

}  // namespace

// ---- is_text ----------------------------------------------------------------------------

TEST_CASE("is_text: ASCII and valid UTF-8 are text, NUL and malformed UTF-8 are not") {
  std::int64_t bad = 0;
  CHECK(is_text("", &bad));
  CHECK(bad == -1);
  CHECK(is_text("int main() { return 0; }\n\t", &bad));
  CHECK(is_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));  // é € 😀 (2, 3, 4 bytes)
  CHECK(is_text("\xed\x9f\xbf"));                              // U+D7FF: last before the surrogates
  CHECK(is_text("\xf4\x8f\xbf\xbf"));                          // U+10FFFF: the last code point

  CHECK_FALSE(is_text(std::string("ab\0c", 4), &bad));
  CHECK(bad == 2);
  CHECK_FALSE(is_text("a\x80", &bad));  // lone continuation byte
  CHECK(bad == 1);
  CHECK_FALSE(is_text("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(is_text("\xe0\x80\xaf"));      // overlong, 3 bytes
  CHECK_FALSE(is_text("\xed\xa0\x80"));      // UTF-16 surrogate U+D800
  CHECK_FALSE(is_text("\xf4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(is_text("\xf5\x80\x80\x80"));
  CHECK_FALSE(is_text("\xff"));
  CHECK_FALSE(is_text("x\xc3", &bad));  // truncated at the end
  CHECK(bad == 1);
  CHECK_FALSE(is_text("\xe2\x82", &bad));
  CHECK(bad == 0);
  CHECK_FALSE(is_text("\xe2(\xac"));  // bad continuation
}

TEST_CASE("describe_char: printable as is, the rest escaped") {
  CHECK(describe_char('a') == "'a'");
  CHECK(describe_char('\n') == "'\\n'");
  CHECK(describe_char('\t') == "'\\t'");
  CHECK(describe_char('\'') == "'\\''");
  CHECK(describe_char('\\') == "'\\\\'");
  CHECK(describe_char(0) == "'\\x00'");
  CHECK(describe_char(0xc3) == "'\\xc3'");
  CHECK(describe_char(0x7f) == "'\\x7f'");
}

// ---- read_text --------------------------------------------------------------------------

TEST_CASE("read_text: a file is returned byte for byte") {
  TempDir dir("file");
  const std::string body = "line 1\r\nline 2 \xc3\xa9\nno newline at end";
  const std::string p = dir.write("a.txt", body);
  CHECK(read_text(p) == body);  // a single file gets no added newline
  CHECK(read_text(dir.write("empty.txt", "")).empty());
}

TEST_CASE("read_text: a directory gives matching files in sorted path order, each newline-terminated") {
  TempDir dir("tree");
  dir.write("b.cpp", "B\n");
  dir.write("a.hpp", "A");  // no trailing newline: one is added
  dir.write("sub/c.cpp", "C\n");
  dir.write("sub/deeper/d.hpp", "D\n");
  dir.write("notes.md", "skip me\n");
  dir.write("z.cpp", std::string("bin\0ary", 7));  // binary: skipped
  dir.write("y.cpp", "\xff\xfe junk");              // invalid UTF-8: skipped
  dir.write("e.cpp", "");                           // empty: contributes nothing

  // Sorted by full path: a.hpp, b.cpp, (e.cpp), sub/c.cpp, sub/deeper/d.hpp.
  CHECK(read_text(dir.path.string(), {.extensions = {".hpp", ".cpp"}}) == "A\nB\nC\nD\n");
  CHECK(read_text(dir.path.string(), {.extensions = {".md"}}) == "skip me\n");
  // No filter: every text file.
  CHECK(read_text(dir.path.string()) == "A\nB\nskip me\nC\nD\n");
  // Same text whatever the order the files were created in.
  TempDir dir2("tree2");
  dir2.write("sub/deeper/d.hpp", "D\n");
  dir2.write("sub/c.cpp", "C\n");
  dir2.write("b.cpp", "B\n");
  dir2.write("a.hpp", "A");
  CHECK(read_text(dir2.path.string(), {.extensions = {".hpp", ".cpp"}}) == "A\nB\nC\nD\n");
}

TEST_CASE("read_text: symlinked directories are not followed (no loops, no duplicates)") {
  TempDir dir("symlink");
  dir.write("sub/a.txt", "A\n");
  // TempDir is under the system temp directory, which has symlinks on every platform this
  // builds on: failing to make them fails the test rather than passing it unchecked.
  std::error_code ec1, ec2;
  fs::create_directory_symlink(dir.path / "sub", dir.path / "link", ec1);
  fs::create_directory_symlink(dir.path, dir.path / "sub" / "loop", ec2);
  REQUIRE_MESSAGE(!ec1, ec1.message());
  REQUIRE_MESSAGE(!ec2, ec2.message());
  CHECK(read_text(dir.path.string()) == "A\n");
}

TEST_CASE("read_text: bad input is an IOError naming the path") {
  TempDir dir("bad");
  const std::string missing = (dir.path / "missing.txt").string();
  check_throws_naming<IOError>([&] { read_text(missing); }, "missing.txt");

  const std::string bin = dir.write("data.bin", std::string("abc\0def", 7));
  check_throws_naming<IOError>([&] { read_text(bin); }, "data.bin");
  check_throws_naming<IOError>([&] { read_text(bin); }, "offset 3");
  check_throws_naming<IOError>([&] { read_text(dir.write("latin1.txt", "caf\xe9")); }, "latin1.txt");

  // A directory with nothing matching.
  TempDir empty("emptydir");
  check_throws_naming<IOError>([&] { read_text(empty.path.string()); }, empty.path.string());
  empty.write("x.txt", "text\n");
  check_throws_naming<IOError>([&] { read_text(empty.path.string(), {.extensions = {".cpp"}}); }, ".cpp");
  // Only binary files: nothing left.
  TempDir onlybin("onlybin");
  onlybin.write("a.cpp", std::string("\0", 1));
  CHECK_THROWS_AS(read_text(onlybin.path.string()), IOError);
}

TEST_CASE("read_text: max_bytes bounds a file and a directory") {
  TempDir dir("limit");
  const std::string p = dir.write("a.txt", std::string(100, 'x'));
  CHECK(read_text(p, {.max_bytes = 100}).size() == 100);
  check_throws_naming<IOError>([&] { read_text(p, {.max_bytes = 99}); }, "limit");
  dir.write("b.txt", std::string(100, 'y'));
  // Two files: 101 + 101 bytes once each gets its newline.
  CHECK(read_text(dir.path.string(), {.max_bytes = 202}).size() == 202);
  check_throws_naming<IOError>([&] { read_text(dir.path.string(), {.max_bytes = 201}); }, "limit");
  check_throws_naming<Error>([&] { read_text(p, {.max_bytes = -1}); }, "max_bytes");
}

// Permissions do not stop root: these run as uid 65534 (xgtest::run_as_unprivileged), and
// count as skipped where privileges cannot be dropped.
TEST_CASE("read_text: an unreadable file is an IOError, given alone or inside a directory" *
          doctest::skip(!xgtest::can_drop_privileges())) {
  TempDir dir("perm");
  const std::string p = dir.write("secret.txt", "x\n");
  dir.hand_to_unprivileged();
  const std::string failures = xgtest::run_as_unprivileged([&](xgtest::Expect& expect) {
    expect(read_text(p) == "x\n", "the file was not readable before its permissions were taken away");
    fs::permissions(p, fs::perms::none);
    for (const std::string& path : {p, dir.path.string()}) {
      try {
        const std::string text = read_text(path);
        expect(false, "read_text(" + path + ") read an unreadable file: \"" + text + "\"");
      } catch (const IOError& e) {
        expect(xgtest::has(e.what(), "secret.txt"), std::string("the IOError does not name the file: ") + e.what());
      }
    }
    fs::permissions(p, fs::perms::owner_all);
  });
  CHECK_MESSAGE(failures.empty(), failures);
}

TEST_CASE("read_text: unreadable subdirectories are skipped" * doctest::skip(!xgtest::can_drop_privileges())) {
  TempDir dir("permdir");
  dir.write("a.txt", "a\n");
  dir.write("locked/b.txt", "b\n");
  dir.write("only_locked/locked/c.txt", "c\n");
  dir.write("open/d.txt", "d\n");
  dir.write("unlistable/e.txt", "e\n");
  dir.write("unenterable/f.txt", "f\n");
  dir.hand_to_unprivileged();
  const fs::path locked = dir.path / "locked", inner = dir.path / "only_locked" / "locked",
                 unlistable = dir.path / "unlistable", unenterable = dir.path / "unenterable";
  const std::string failures = xgtest::run_as_unprivileged([&](xgtest::Expect& expect) {
    // Sorted path order: a, locked/b, only_locked/locked/c, open/d, unenterable/f, unlistable/e.
    const std::string before = read_text(dir.path.string());
    expect(before == "a\nb\nc\nd\nf\ne\n", "with every directory readable: \"" + before + "\"");
    fs::permissions(locked, fs::perms::none);  // neither listable nor enterable
    fs::permissions(inner, fs::perms::none);
    fs::permissions(unlistable, fs::perms::owner_exec);  // enterable, not listable
    fs::permissions(unenterable, fs::perms::owner_read);  // listable, not enterable
    try {
      const std::string after = read_text(dir.path.string());
      expect(after == "a\nd\n",
             "with locked/, only_locked/locked/, unlistable/ and unenterable/ unreadable: \"" + after + "\"");
    } catch (const std::exception& e) {
      expect(false, std::string("an unreadable subdirectory is an error, not skipped: ") + e.what());
    }
    // Nothing left once the unreadable subdirectory is skipped: the usual "no text" error.
    try {
      const std::string text = read_text((dir.path / "only_locked").string());
      expect(false, "only_locked/ read as \"" + text + "\"");
    } catch (const IOError& e) {
      expect(xgtest::has(e.what(), "no non-empty text file"), std::string("only_locked/: ") + e.what());
    }
    for (const fs::path& d : {locked, inner, unlistable, unenterable}) fs::permissions(d, fs::perms::owner_all);
  });
  CHECK_MESSAGE(failures.empty(), failures);
}

// ---- CharVocab --------------------------------------------------------------------------

TEST_CASE("CharVocab: ids are the sorted distinct bytes; encode / decode round-trip") {
  const std::string text = "hello, world\n";
  CharVocab v(text);
  // Distinct bytes sorted: '\n' ' ' ',' 'd' 'e' 'h' 'l' 'o' 'r' 'w'.
  CHECK(v.size() == 10);
  CHECK(v.chars() == std::string("\n ,dehlorw"));
  CHECK(v.id('\n') == 0);
  CHECK(v.id('h') == 5);
  CHECK(v.chr(9) == 'w');
  CHECK(v.contains('o'));
  CHECK_FALSE(v.contains('z'));

  const Tensor ids = v.encode(text);
  CHECK(ids.dtype() == i64);
  CHECK(ids.shape() == Shape{13});
  CHECK(ids_of(ids) == std::vector<std::int64_t>{5, 4, 6, 6, 7, 2, 1, 9, 7, 8, 6, 3, 0});
  CHECK(v.decode(ids) == text);
  CHECK(v.decode(std::vector<std::int64_t>{5, 4, 6, 6, 7}) == "hello");
  // decode reads any shape row-major.
  CHECK(v.decode(from_vector(std::vector<std::int64_t>{5, 4, 6, 6}, {2, 2})) == "hell");
  CHECK(v.encode("").numel() == 0);
  CHECK(v.decode(std::vector<std::int64_t>{}).empty());
}

TEST_CASE("CharVocab: every byte value works, including NUL and bytes >= 0x80") {
  std::string all;
  for (int b = 255; b >= 0; --b) all.push_back(static_cast<char>(b));
  CharVocab v(all);
  CHECK(v.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(v.id(static_cast<char>(b)) == b);  // ids follow byte order
  CHECK(v.decode(v.encode(all)) == all);
  CHECK(CharVocab::from_string(v.to_string()) == v);
}

TEST_CASE("CharVocab: to_string / from_string round-trip through a checkpoint's Extras") {
  CharVocab v(std::string("int main() {\n  return 0;\n}\n\xc3\xa9"));
  Extras extras;
  extras.set_string("vocab", v.to_string());
  const CharVocab back = CharVocab::from_string(extras.get_string("vocab"));
  CHECK(back == v);
  CHECK(back.size() == v.size());
  CHECK(back.id('{') == v.id('{'));
  CHECK(CharVocab::from_string("").size() == 0);
  CHECK(CharVocab().size() == 0);
  CHECK(CharVocab("") == CharVocab());
}

TEST_CASE("CharVocab: bad input throws and names the culprit") {
  CharVocab v("abc");
  check_throws_naming<IndexError>([&] { v.encode("abxc"); }, "'x'");
  check_throws_naming<IndexError>([&] { v.encode("abxc"); }, "offset 2");
  check_throws_naming<IndexError>([&] { v.encode("a\n"); }, "'\\n'");
  check_throws_naming<IndexError>([&] { v.id('z'); }, "'z'");
  check_throws_naming<IndexError>([&] { v.chr(3); }, "id 3");
  check_throws_naming<IndexError>([&] { v.chr(-1); }, "id -1");
  check_throws_naming<IndexError>([&] { v.decode(std::vector<std::int64_t>{0, 7}); }, "id 7");
  check_throws_naming<IndexError>([&] { v.decode(std::vector<std::int64_t>{-2}); }, "id -2");
  check_throws_naming<DtypeError>([&] { v.decode(zeros({2})); }, "CharVocab::decode");
  CHECK_THROWS_AS(v.decode(Tensor()), StateError);
  // Unsorted, duplicated: not a vocabulary.
  check_throws_naming<Error>([&] { CharVocab::from_string("ba"); }, "position 1");
  check_throws_naming<Error>([&] { CharVocab::from_string("abb"); }, "position 2");
  CHECK_THROWS_AS(CharVocab::from_string("a\xff\x01"), Error);  // bytes compare unsigned
  CHECK_NOTHROW(CharVocab::from_string("\x01" "a\xff"));
  // Empty vocabulary: every encode of a non-empty text fails cleanly.
  CHECK_THROWS_AS(CharVocab().encode("a"), IndexError);
  CHECK_THROWS_AS(CharVocab().chr(0), IndexError);
}

TEST_CASE("CharVocab::from_string and is_text on random bytes: accept and round-trip, or throw Error") {
  Generator gen(42);
  int accepted = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::string bytes(static_cast<std::size_t>(gen.randint(0, 6)), '\0');
    for (char& c : bytes) c = static_cast<char>(gen.randint(0, 256));
    std::int64_t bad = -2;
    const bool text = is_text(bytes, &bad);
    CHECK(text == (bad == -1));
    CHECK(bad < static_cast<std::int64_t>(bytes.size()));
    try {
      const CharVocab v = CharVocab::from_string(bytes);
      ++accepted;
      CHECK(v.to_string() == bytes);
      CHECK(v.decode(v.encode(bytes)) == bytes);
    } catch (const Error&) {
      // rejected: fine, as long as it is an Error
    }
  }
  CHECK(accepted > 0);
}

TEST_CASE("CharVocab: encode with a fallback maps unknown bytes to it") {
  CharVocab v("ab ");
  CHECK(ids_of(v.encode("a?b!", ' ')) == std::vector<std::int64_t>{1, 0, 2, 0});
  CHECK(v.decode(v.encode("a?b!", ' ')) == "a b ");
  check_throws_naming<IndexError>([&] { v.encode("a", '?'); }, "fallback");
}

// ---- splitting --------------------------------------------------------------------------

TEST_CASE("split_point / split_text / split_tokens: the validation part is the last floor(n * f)") {
  CHECK(split_point(100, 0.1) == 90);
  CHECK(split_point(100, 0.0) == 100);
  CHECK(split_point(10, 0.15) == 9);  // floor(1.5) = 1 held out
  CHECK(split_point(5, 0.1) == 5);    // floor(0.5) = 0: nothing held out
  CHECK(split_point(0, 0.5) == 0);

  auto [train, valid] = split_text("0123456789", 0.3);
  CHECK(train == "0123456");
  CHECK(valid == "789");

  std::vector<std::int64_t> v(10);
  for (int i = 0; i < 10; ++i) v[i] = 100 + i;
  auto [a, b] = split_tokens(from_vector(v), 0.2);
  CHECK(ids_of(a) == std::vector<std::int64_t>{100, 101, 102, 103, 104, 105, 106, 107});
  CHECK(ids_of(b) == std::vector<std::int64_t>{108, 109});
  auto [all, none] = split_tokens(from_vector(v), 0.0);
  CHECK(all.numel() == 10);
  CHECK(none.numel() == 0);
  CHECK(none.shape() == Shape{0});
  // Works for float tensors too, and copies.
  Tensor f = from_vector(std::vector<double>{1, 2, 3, 4});
  auto [fa, fb] = split_tokens(f, 0.5);
  f.data<double>()[3] = 9;
  CHECK(fb.to_vector<double>() == std::vector<double>{3, 4});
}

TEST_CASE("split: bad fractions and shapes are errors naming split") {
  for (double f : {-0.1, 1.0, 1.5, std::nan("")}) {
    check_throws_naming<Error>([&] { split_point(10, f); }, "split");
    CHECK_THROWS_AS(split_text("abc", f), Error);
  }
  check_throws_naming<Error>([&] { split_point(-1, 0.1); }, "split");
  check_throws_naming<ShapeError>([&] { split_tokens(zeros({2, 3}, i64), 0.1); }, "split_tokens");
  CHECK_THROWS_AS(split_tokens(Tensor(), 0.1), StateError);
}

// ---- batchify ---------------------------------------------------------------------------

TEST_CASE("batchify: [N] -> [B, N / B], row b the b-th contiguous stretch, tail dropped") {
  std::vector<std::int64_t> v(11);
  for (int i = 0; i < 11; ++i) v[i] = i;
  const Tensor s = batchify(from_vector(v), 3);
  CHECK(s.shape() == Shape{3, 3});
  CHECK(s.dtype() == i64);
  CHECK(ids_of(s) == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8});
  CHECK(ids_of(batchify(from_vector(v), 1)) == v);
  CHECK(batchify(from_vector(v), 11).shape() == Shape{11, 1});
  // Feeds train_tbptt: [B, N] chunks.
  const Tensor s2 = batchify(from_vector(v), 2);  // [[0..4], [5..9]]
  const TBPTTChunk c = tbptt_chunk(s2, 2, 0);
  CHECK(ids_of(c.inputs) == std::vector<std::int64_t>{0, 1, 5, 6});
  CHECK(ids_of(c.targets) == std::vector<std::int64_t>{1, 2, 6, 7});
}

TEST_CASE("batchify: bad input is an error naming batchify") {
  const Tensor t = from_vector(std::vector<std::int64_t>{1, 2, 3});
  check_throws_naming<ShapeError>([&] { batchify(t, 4); }, "batchify");
  check_throws_naming<Error>([&] { batchify(t, 0); }, "batchify");
  check_throws_naming<Error>([&] { batchify(t, -3); }, "batchify");
  check_throws_naming<DtypeError>([&] { batchify(zeros({4}), 2); }, "batchify");
  check_throws_naming<ShapeError>([&] { batchify(zeros({2, 2}, i64), 2); }, "[2,2]");
  CHECK_THROWS_AS(batchify(Tensor::empty({0}, i64), 1), ShapeError);
  CHECK_THROWS_AS(batchify(Tensor(), 1), StateError);
}

// ---- end to end -------------------------------------------------------------------------

TEST_CASE("text pipeline: read a tree, encode, split, batchify, decode back") {
  TempDir dir("pipeline");
  dir.write("a.cpp", "int a = 1;\n");
  dir.write("b.hpp", "int b = 2;\n");
  const std::string text = read_text(dir.path.string(), {.extensions = {".cpp", ".hpp"}});
  CHECK(text == "int a = 1;\nint b = 2;\n");
  const CharVocab vocab(text);
  const Tensor ids = vocab.encode(text);  // [22]
  auto [train, valid] = split_tokens(ids, 0.25);
  CHECK(train.numel() == 17);
  CHECK(vocab.decode(valid) == "= 2;\n");  // floor(22 * 0.25) = 5 chars held out
  const Tensor streams = batchify(train, 4);  // [4, 4]: "int ", "a = ", "1;\ni", "nt b"
  CHECK(streams.shape() == Shape{4, 4});
  CHECK(vocab.decode(select(streams, 0, 1)) == "a = ");
  CHECK(vocab.decode(select(streams, 0, 3)) == "nt b");
}

TEST_CASE("read_text: a FIFO, a device or a socket is an IOError naming what it is; one in a tree is skipped") {
  TempDir dir("special");
  const std::string fifo = (dir.path / "fifo.txt").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  (void)dir.write("a.txt", "hello\n");
  // In a child under an alarm: a regression that opens the FIFO would block forever.
  const std::string failures = xgtest::run_in_child(
      [&](xgtest::Expect& expect) {
        try {
          (void)read_text(fifo);
          expect(false, "a FIFO was read");
        } catch (const IOError& e) {
          const std::string m = e.what();
          expect(m.find(fifo) != std::string::npos && m.find("is a FIFO") != std::string::npos, m);
        }
        // A tree holding the FIFO and a text file: the FIFO is skipped, not opened.
        try {
          expect(read_text(dir.path.string(), {.extensions = {".txt"}}) == "hello\n", "the tree's text");
        } catch (const std::exception& e) {
          expect(false, std::string("the tree: ") + e.what());
        }
      },
      10);
  CHECK_MESSAGE(failures.empty(), failures);
  xgtest::check_throws_msg<IOError>([&] { (void)read_text("/dev/null"); }, {"/dev/null", "is a character device"});

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string sock = (dir.path / "s.txt").string();
  REQUIRE(sock.size() < sizeof addr.sun_path);
  std::memcpy(addr.sun_path, sock.c_str(), sock.size() + 1);
  const int sfd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(sfd >= 0);
  REQUIRE(::bind(sfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  xgtest::check_throws_msg<IOError>([&] { (void)read_text(sock); }, {sock, "is a socket"});
  ::close(sfd);
}
