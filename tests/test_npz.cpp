#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "helpers.hpp"
#include "run_in_child.hpp"

#ifndef XGRAD_FIXTURES_DIR
#define XGRAD_FIXTURES_DIR "tests/fixtures"
#endif

using namespace xg;
namespace fs = std::filesystem;

namespace {

using Entries = std::vector<std::pair<std::string, Tensor>>;

using xgtest::TempDir;

using xgtest::read_file;

// Overwrites in place and then cuts to size: truncating to zero first (O_TRUNC) would make
// ext4 flush the file on close, and the corruption tests write thousands of variants.
void write_file(const std::string& p, const std::string& bytes) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  CHECK(::pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
  CHECK(::ftruncate(fd, static_cast<off_t>(bytes.size())) == 0);
  ::close(fd);
}

std::string fixture(const std::string& name) { return std::string(XGRAD_FIXTURES_DIR) + "/npz/" + name; }

std::vector<std::string> names_of(const Entries& e) {
  std::vector<std::string> out;
  for (const auto& [n, _] : e) out.push_back(n);
  return out;
}

// Same names in the same order, same dtypes, shapes and bit-identical values.
void check_same_entries(const Entries& got, const Entries& want) {
  REQUIRE(names_of(got) == names_of(want));
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("entry " << want[i].first);
    const Tensor& a = got[i].second;
    const Tensor& b = want[i].second;
    REQUIRE(a.dtype() == b.dtype());
    REQUIRE(a.shape() == b.shape());
    const auto n = static_cast<std::size_t>(a.numel()) * dtype_size(a.dtype());
    CHECK(std::memcmp(a.data_ptr(), b.data_ptr(), n) == 0);
  }
}

// Runs load_npz and expects an IOError whose message names the path and `needle`.
void check_load_error(const std::string& p, const std::string& needle) {
  try {
    (void)load_npz(p);
    FAIL("no IOError; expected one mentioning: " << needle);
  } catch (const IOError& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.find("load_npz") != std::string::npos);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find(needle) != std::string::npos);
  }
}

// Little-endian field access in a zip byte image.
std::uint32_t get_u32(const std::string& b, std::size_t at) {
  std::uint32_t v = 0;
  for (int k = 3; k >= 0; --k) v = (v << 8) | static_cast<unsigned char>(b.at(at + static_cast<std::size_t>(k)));
  return v;
}
void put_u32(std::string& b, std::size_t at, std::uint32_t v) {
  for (int k = 0; k < 4; ++k) b.at(at + static_cast<std::size_t>(k)) = static_cast<char>((v >> (8 * k)) & 0xff);
}
// Offsets of every record with the given 4-byte signature ("PK\3\4" local header,
// "PK\1\2" central directory header, "PK\5\6" end of central directory).
std::vector<std::size_t> find_all(const std::string& b, const std::string& sig) {
  std::vector<std::size_t> out;
  for (std::size_t at = b.find(sig); at != std::string::npos; at = b.find(sig, at + 1)) out.push_back(at);
  return out;
}
const std::string kLocal("PK\x03\x04", 4);
const std::string kCentral("PK\x01\x02", 4);
const std::string kEnd("PK\x05\x06", 4);

// A small archive of two stored entries, used by the corruption tests.
Entries small_entries() {
  return {{"w", from_vector(std::vector<float>{1.f, -2.f, 3.5f, 0.25f}, {2, 2})},
          {"b", from_vector(std::vector<std::int64_t>{7, -9})}};
}

}  // namespace

TEST_CASE("npz: round trip keeps names, order, dtypes, shapes and bit-exact values") {
  TempDir dir;
  const std::string p = dir.file("model.npz");
  const double inf = std::numeric_limits<double>::infinity();
  const Entries in{
      {"encoder.weight_ih_l0", xgtest::rnd({4, 3}, -2, 2).to(f32)},
      {"z_last_alphabetically", from_vector(std::vector<double>{std::nan(""), inf, -inf, -0.0, 5e-324})},
      {"a.b.c", from_vector(std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), 0,
                                                      std::numeric_limits<std::int64_t>::max()},
                            {3, 1})},
      {"scalar", scalar(-3.25, f64)},
      {"empty", zeros({0, 5}, f32)},
      {"poids.é", ones({1, 1, 2}, f64)},  // a UTF-8 name comes back byte for byte
      {"big", xgtest::rnd({300, 1000}, -1, 1)},
  };
  save_npz(p, in);
  const Entries out = load_npz(p);
  check_same_entries(out, in);
  CHECK(out[3].second.ndim() == 0);
  CHECK(out[3].second.item() == -3.25);
  CHECK(out[4].second.numel() == 0);
  CHECK(out[4].second.shape() == Shape{0, 5});
  // Loaded tensors own their values: not aliases of what was saved, plain leaves.
  CHECK_FALSE(out[0].second.is_same(in[0].second));
  CHECK(out[0].second.data_ptr() != in[0].second.data_ptr());
  CHECK_FALSE(out[0].second.requires_grad());
  // Only the target is left in the directory.
  CHECK(dir.listing() == std::vector<std::string>{"model.npz"});
}

TEST_CASE("npz: entries are stored uncompressed, as '<name>.npy', holding exactly npy_bytes") {
  TempDir dir;
  const std::string p = dir.file("s.npz");
  const Entries in = small_entries();
  save_npz(p, in);
  const std::string bytes = read_file(p);
  const auto locals = find_all(bytes, kLocal);
  REQUIRE(locals.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    const std::size_t at = locals[i];
    const std::string want_name = in[i].first + ".npy";
    const std::string want_data = npy_bytes(in[i].second);
    const unsigned method = static_cast<unsigned char>(bytes[at + 8]) | (static_cast<unsigned char>(bytes[at + 9]) << 8);
    CHECK(method == 0);  // stored
    const std::size_t name_len = static_cast<unsigned char>(bytes[at + 26]) | (static_cast<unsigned char>(bytes[at + 27]) << 8);
    const std::size_t extra_len = static_cast<unsigned char>(bytes[at + 28]) | (static_cast<unsigned char>(bytes[at + 29]) << 8);
    CHECK(bytes.substr(at + 30, name_len) == want_name);
    CHECK(bytes.substr(at + 30 + name_len + extra_len, want_data.size()) == want_data);
  }
}

TEST_CASE("npz: an empty entry list round-trips as an empty archive") {
  TempDir dir;
  const std::string p = dir.file("none.npz");
  save_npz(p, {});
  CHECK(load_npz(p).empty());
  CHECK(dir.listing() == std::vector<std::string>{"none.npz"});
  // numpy writes the same thing for np.savez(path) with no arrays.
  CHECK(load_npz(fixture("savez_no_arrays.npz")).empty());
  CHECK(read_file(p) == read_file(fixture("savez_no_arrays.npz")));
}

TEST_CASE("npz: saving replaces an existing file") {
  TempDir dir;
  const std::string p = dir.file("w.npz");
  save_npz(p, {{"old", ones({3}, f32)}});
  save_npz(p, {{"new", full({2, 2}, 7.0, f64)}, {"more", zeros({1}, f32)}});
  const Entries out = load_npz(p);
  CHECK(names_of(out) == std::vector<std::string>{"new", "more"});
  xgtest::check_values(out[0].second, {7, 7, 7, 7});
  CHECK(dir.listing() == std::vector<std::string>{"w.npz"});
}

TEST_CASE("npz: invalid or duplicate names are an Error before anything is written") {
  TempDir dir;
  const std::string p = dir.file("keep.npz");
  const Entries old = small_entries();
  save_npz(p, old);
  const std::string before = read_file(p);

  auto check_rejected = [&](const Entries& bad, const std::string& needle) {
    try {
      save_npz(p, bad);
      FAIL("no Error; expected one mentioning: " << needle);
    } catch (const IOError&) {
      FAIL("an IOError, but a bad name is a usage Error");
    } catch (const Error& e) {
      const std::string msg = e.what();
      INFO("message: " << msg);
      CHECK(msg.find("save_npz") != std::string::npos);
      CHECK(msg.find(p) != std::string::npos);
      CHECK(msg.find(needle) != std::string::npos);
    }
    // The old file is intact and no temp file is left behind.
    CHECK(read_file(p) == before);
    CHECK(dir.listing() == std::vector<std::string>{"keep.npz"});
  };
  const Tensor t = ones({2}, f32);
  check_rejected({{"ok", t}, {"", t}}, "invalid entry name ''");
  check_rejected({{"ok", t}, {"dir/w", t}}, "invalid entry name 'dir/w'");
  check_rejected({{std::string("a\0b", 3), t}}, "invalid entry name");
  check_rejected({{"w", t}, {"b", t}, {"w", t}}, "duplicate entry name 'w'");
  // An undefined tensor is a StateError naming the entry, also before writing.
  CHECK_THROWS_WITH_AS(save_npz(p, {{"ok", t}, {"hole", Tensor()}}), doctest::Contains("'hole'"), StateError);
  CHECK(read_file(p) == before);
  CHECK(dir.listing() == std::vector<std::string>{"keep.npz"});
  check_same_entries(load_npz(p), old);
}

TEST_CASE("npz: a failed save is an IOError naming the path; the old file survives, no temp files") {
  TempDir dir;
  const Entries old = small_entries();

  SUBCASE("the directory does not exist") {
    const std::string p = dir.file("no/such/dir/x.npz");
    try {
      save_npz(p, old);
      FAIL("expected IOError");
    } catch (const IOError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("save_npz") != std::string::npos);
      CHECK(msg.find(p) != std::string::npos);
    }
    CHECK(dir.listing().empty());
  }
  SUBCASE("the target is a directory: the rename fails") {
    const std::string p = dir.file("sub");
    fs::create_directories(fs::path(p) / "child");
    CHECK_THROWS_WITH_AS(save_npz(p, old), doctest::Contains(p.c_str()), IOError);
    CHECK(dir.listing() == std::vector<std::string>{"sub"});
    CHECK(fs::exists(fs::path(p) / "child"));
  }
  SUBCASE("the write itself fails (file size limit): old file intact") {
    const std::string p = dir.file("keep.npz");
    save_npz(p, old);
    const std::string before = read_file(p);
    // RLIMIT_FSIZE makes write() fail with EFBIG once a file passes the limit: a real
    // short write, even for root. Nothing is printed while the limit is in force.
    struct rlimit saved {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    struct rlimit low = saved;
    low.rlim_cur = 4096;
    auto* prev_handler = ::signal(SIGXFSZ, SIG_IGN);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &low) == 0);
    std::string error;
    bool io_error = false;
    try {
      save_npz(p, {{"large", zeros({100000}, f32)}});
    } catch (const IOError& e) {
      io_error = true;
      error = e.what();
    } catch (const std::exception& e) {
      error = std::string("wrong exception type: ") + e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
    ::signal(SIGXFSZ, prev_handler);
    INFO("message: " << error);
    CHECK(io_error);
    CHECK(error.find(p) != std::string::npos);
    CHECK(read_file(p) == before);
    CHECK(dir.listing() == std::vector<std::string>{"keep.npz"});
    check_same_entries(load_npz(p), old);
  }
}

// Permissions do not stop root: this runs as uid 65534 (xgtest::run_as_unprivileged), and
// counts as skipped where privileges cannot be dropped.
TEST_CASE("npz: a save into a directory that is not writable is an IOError; the old file survives" *
          doctest::skip(!xgtest::can_drop_privileges())) {
  TempDir dir;
  dir.hand_to_unprivileged();
  const std::string p = dir.file("keep.npz");
  const std::string failures = xgtest::run_as_unprivileged([&](xgtest::Expect& expect) {
    save_npz(p, small_entries());  // writable: the same save succeeds
    const std::string before = read_file(p);
    fs::permissions(dir.path, fs::perms::owner_read | fs::perms::owner_exec);
    try {
      save_npz(p, {{"x", ones({2})}});
      expect(false, "save_npz into a read-only directory did not throw");
    } catch (const IOError& e) {
      expect(xgtest::has(e.what(), p), std::string("the IOError does not name the path: ") + e.what());
    }
    fs::permissions(dir.path, fs::perms::owner_all);
    expect(read_file(p) == before, "the old file changed");
    expect(dir.listing() == std::vector<std::string>{"keep.npz"}, "files were left beside keep.npz");
  });
  CHECK_MESSAGE(failures.empty(), failures);
  check_same_entries(load_npz(p), small_entries());
}

TEST_CASE("npz: files written by numpy.savez load with the values the generator states") {
  // Values from tests/fixtures/gen_npz.py (see its docstring).
  const Entries d = load_npz(fixture("savez.npz"));
  REQUIRE(names_of(d) == std::vector<std::string>{"encoder.weight_ih_l0", "bias", "steps", "ids", "empty"});
  CHECK(d[0].second.dtype() == f32);
  CHECK(d[0].second.shape() == Shape{2, 3});
  xgtest::check_values(d[0].second, {-0.5, -0.25, 0.0, 0.25, 0.5, 0.75}, 0, 0);
  CHECK(d[1].second.dtype() == f64);
  CHECK(d[1].second.to_vector<double>() == std::vector<double>{1.5, -2.0, 1e-300});
  CHECK(d[2].second.dtype() == i64);
  CHECK(d[2].second.ndim() == 0);
  CHECK(d[2].second.item() == 7);
  CHECK(d[3].second.dtype() == i64);
  CHECK(d[3].second.shape() == Shape{2, 2});
  CHECK(d[3].second.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, -2, 3, 2147483647});
  CHECK(d[4].second.dtype() == f64);
  CHECK(d[4].second.shape() == Shape{0, 4});
}

TEST_CASE("npz: files written by numpy.savez_compressed (deflate) load with the stated values") {
  const Entries d = load_npz(fixture("savez_compressed.npz"));
  REQUIRE(names_of(d) == std::vector<std::string>{"a", "zeros", "b"});
  CHECK(d[0].second.dtype() == f64);
  CHECK(d[0].second.shape() == Shape{3, 4});
  std::vector<double> a;
  for (int i = 0; i < 12; ++i) a.push_back(i / 8.0);
  CHECK(d[0].second.to_vector<double>() == a);
  CHECK(d[1].second.dtype() == f32);
  CHECK(d[1].second.to_vector<float>() == std::vector<float>(1000, 0.f));
  CHECK(d[2].second.to_vector<std::int64_t>() ==
        std::vector<std::int64_t>{-(std::int64_t{1} << 62), -1, 0, 1, std::int64_t{1} << 62});
}

TEST_CASE("npz: an 80 MB all-zero numpy.savez_compressed entry (1026:1) loads") {
  // Near deflate's best ratio: a size bound tighter than ~1032:1 would reject this
  // legitimate file; reading it also exercises the growing read buffer (> 64 MB).
  const std::string p = fixture("zeros_80mb.npz");
  const Entries d = load_npz(p);
  REQUIRE(names_of(d) == std::vector<std::string>{"zeros"});
  const Tensor& t = d[0].second;
  CHECK(t.dtype() == f32);
  CHECK(t.shape() == Shape{5000, 4000});
  CHECK(t.numel() * 4 > 1000 * static_cast<std::int64_t>(fs::file_size(p)));
  const float* v = t.data<float>();
  std::int64_t nonzero = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) nonzero += v[i] != 0.f;
  CHECK(nonzero == 0);
}

// Counted as skipped (not passed) where /usr/bin/python3 has no numpy.
TEST_CASE("npz: numpy reads what save_npz writes, and xgrad reads numpy's rewrite of it" * doctest::skip(!xgtest::python_numpy_available())) {
  TempDir dir;
  const std::string ours = dir.file("ours.npz");
  const std::string theirs = dir.file("theirs.npz");
  save_npz(ours, {{"encoder.weight_ih_l0", from_vector(std::vector<float>{0.5f, -1.f, 2.f, 3.f, 4.f, 5.25f}, {3, 2})},
                  {"ids", from_vector(std::vector<std::int64_t>{-1, std::int64_t{1} << 50, 7})},
                  {"t", scalar(-2.5, f64)},
                  {"empty", zeros({0, 3}, f64)},
                  {"poids.é", full({2}, 0.125, f64)}});
  const std::string script =
      "import numpy as np, sys, zipfile\n"
      "src, dst = sys.argv[1], sys.argv[2]\n"
      "with zipfile.ZipFile(src) as z:\n"
      "    assert z.testzip() is None\n"
      "    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())\n"
      "d = np.load(src, allow_pickle=False)\n"
      "assert d.files == ['encoder.weight_ih_l0', 'ids', 't', 'empty', 'poids.\\u00e9'], d.files\n"
      "w = d['encoder.weight_ih_l0']\n"
      "assert w.dtype == np.float32 and w.shape == (3, 2), (w.dtype, w.shape)\n"
      "assert (w == np.array([[0.5, -1], [2, 3], [4, 5.25]], dtype=np.float32)).all(), w\n"
      "assert d['ids'].dtype == np.int64 and d['ids'].tolist() == [-1, 2**50, 7]\n"
      "assert d['t'].dtype == np.float64 and d['t'].shape == () and d['t'] == -2.5\n"
      "assert d['empty'].dtype == np.float64 and d['empty'].shape == (0, 3)\n"
      "assert d['poids.\\u00e9'].tolist() == [0.125, 0.125]\n"
      "np.savez_compressed(dst, **{k: d[k] * 2 for k in d.files})\n";
  const std::string script_path = dir.file("check.py");
  write_file(script_path, script);
  const std::string cmd = "/usr/bin/python3 '" + script_path + "' '" + ours + "' '" + theirs + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);

  const Entries back = load_npz(theirs);
  REQUIRE(names_of(back) == std::vector<std::string>{"encoder.weight_ih_l0", "ids", "t", "empty", "poids.é"});
  CHECK(back[0].second.dtype() == f32);
  xgtest::check_values(back[0].second, {1, -2, 4, 6, 8, 10.5}, 0, 0);
  CHECK(back[1].second.to_vector<std::int64_t>() == std::vector<std::int64_t>{-2, std::int64_t{1} << 51, 14});
  CHECK(back[2].second.item() == -5.0);
  CHECK(back[3].second.shape() == Shape{0, 3});
  xgtest::check_values(back[4].second, {0.25, 0.25}, 0, 0);
}

TEST_CASE("npz: a missing file, a directory, an empty file or not-a-zip is an IOError naming the path") {
  TempDir dir;
  check_load_error(dir.file("missing.npz"), "No such file or directory");
  check_load_error(dir.path.string(), "not a regular file");
  write_file(dir.file("empty.npz"), "");
  check_load_error(dir.file("empty.npz"), "empty.npz");
  write_file(dir.file("text.npz"), "this is not a zip archive at all, just some text\n");
  check_load_error(dir.file("text.npz"), "Not a zip archive");
  // A bare .npy is a common mix-up.
  save_npy(dir.file("single.npy"), ones({3}));
  check_load_error(dir.file("single.npy"), "Not a zip archive");
}

TEST_CASE("npz: invalid archives from Python are IOErrors naming the file and the entry") {
  check_load_error(fixture("bad_non_npy.npz"), "'readme.txt'");
  check_load_error(fixture("bad_non_npy.npz"), "not a '<name>.npy' entry");
  check_load_error(fixture("bad_duplicate.npz"), "same name");
  check_load_error(fixture("bad_object.npz"), "entry 'o.npy'");
  check_load_error(fixture("bad_object.npz"), "unsupported dtype '|O'");
  check_load_error(fixture("bad_slash.npz"), "'sub/w.npy'");
}

TEST_CASE("npz: duplicate and non-.npy entries in an archive we wrote and then patched") {
  TempDir dir;
  const std::string p = dir.file("patched.npz");
  // Same-length names so that only the name bytes change (the CRC covers the data only).
  save_npz(dir.file("src.npz"), {{"aa", ones({2}, f32)}, {"ab", zeros({2}, f32)}});
  const std::string good = read_file(dir.file("src.npz"));
  auto patch_name = [&](const std::string& from, const std::string& to) {
    std::string bad = good;
    int replaced = 0;
    for (std::size_t at = bad.find(from); at != std::string::npos; at = bad.find(from, at + 1)) {
      bad.replace(at, from.size(), to);
      ++replaced;
    }
    REQUIRE(replaced == 2);  // the local header and the central directory
    write_file(p, bad);
  };
  patch_name("ab.npy", "aa.npy");
  check_load_error(p, "same name");
  patch_name("ab.npy", "ab.txt");
  check_load_error(p, "entry 'ab.txt': not a '<name>.npy' entry");
  patch_name("ab.npy", "a/.npy");
  check_load_error(p, "entry 'a/.npy'");
}

TEST_CASE("npz: an archive truncated at any length is an IOError, never a crash") {
  TempDir dir;
  const std::string src = dir.file("src.npz");
  save_npz(src, small_entries());
  const std::string full_bytes = read_file(src);
  const std::string p = dir.file("trunc.npz");
  for (std::size_t len = 0; len < full_bytes.size(); ++len) {
    INFO("truncated to " << len << " of " << full_bytes.size() << " bytes");
    write_file(p, full_bytes.substr(0, len));
    CHECK_THROWS_AS(load_npz(p), IOError);
  }
  write_file(p, full_bytes);
  check_same_entries(load_npz(p), small_entries());
}

TEST_CASE("npz: a compressed archive truncated at many lengths is an IOError") {
  TempDir dir;
  const std::string full_bytes = read_file(fixture("savez_compressed.npz"));
  const std::string p = dir.file("trunc.npz");
  for (std::size_t len = 0; len < full_bytes.size(); len += 3) {
    INFO("truncated to " << len << " of " << full_bytes.size() << " bytes");
    write_file(p, full_bytes.substr(0, len));
    CHECK_THROWS_AS(load_npz(p), IOError);
  }
}

namespace {

// Flips bytes at every position of `good` with several masks; each load must be an
// IOError or (a flip in a field nobody checks) the original entries exactly.
void flip_every_byte(const std::string& good, const Entries& want, const std::string& p, std::size_t step) {
  int rejected = 0, accepted = 0;
  for (std::size_t i = 0; i < good.size(); i += step) {
    for (unsigned char mask : {0x01, 0x10, 0x80, 0xff}) {
      std::string bad = good;
      bad[i] = static_cast<char>(static_cast<unsigned char>(bad[i]) ^ mask);
      write_file(p, bad);
      INFO("byte " << i << " of " << good.size() << " ^ 0x" << std::hex << int(mask));
      try {
        const Entries got = load_npz(p);
        check_same_entries(got, want);
        ++accepted;
      } catch (const IOError&) {
        ++rejected;
      } catch (const std::exception& e) {
        FAIL("not an IOError: " << e.what());
      }
    }
  }
  MESSAGE("byte flips: " << rejected << " rejected, " << accepted << " harmless");
  CHECK(rejected > 0);
}

}  // namespace

TEST_CASE("npz: a flipped byte anywhere is an IOError or a harmless flip, never a crash") {
  TempDir dir;
  const std::string p = dir.file("flip.npz");
  SUBCASE("stored archive written by save_npz, every byte") {
    save_npz(dir.file("src.npz"), small_entries());
    flip_every_byte(read_file(dir.file("src.npz")), small_entries(), p, 1);
  }
  SUBCASE("deflated archive written by numpy.savez_compressed, every byte") {
    const std::string path = fixture("savez_compressed.npz");
    flip_every_byte(read_file(path), load_npz(path), p, 1);
  }
}

TEST_CASE("npz: a flip in an entry's data is a CRC error naming the entry") {
  TempDir dir;
  save_npz(dir.file("src.npz"), small_entries());
  std::string bad = read_file(dir.file("src.npz"));
  // The last value byte of the first entry's data (inside the npy payload).
  const std::string first = npy_bytes(small_entries()[0].second);
  const std::size_t at = bad.find(first);
  REQUIRE(at != std::string::npos);
  bad[at + first.size() - 1] ^= 0x40;
  const std::string p = dir.file("crc.npz");
  write_file(p, bad);
  check_load_error(p, "entry 'w.npy'");
  check_load_error(p, "CRC");
}

TEST_CASE("npz: forged sizes are rejected before anything large is allocated") {
  TempDir dir;
  const std::string p = dir.file("forged.npz");
  save_npz(dir.file("src.npz"), small_entries());
  const std::string good = read_file(dir.file("src.npz"));
  const auto locals = find_all(good, kLocal);
  const auto centrals = find_all(good, kCentral);
  const auto ends = find_all(good, kEnd);
  REQUIRE(locals.size() == 2);
  REQUIRE(centrals.size() == 2);
  REQUIRE(ends.size() == 1);

  // Sets entry 0's sizes in both headers consistently, so libzip's consistency check
  // passes and only the size bound can stop it.
  auto forge_sizes = [&](std::uint32_t comp, std::uint32_t size) {
    std::string bad = good;
    put_u32(bad, locals[0] + 18, comp);
    put_u32(bad, locals[0] + 22, size);
    put_u32(bad, centrals[0] + 20, comp);
    put_u32(bad, centrals[0] + 24, size);
    write_file(p, bad);
  };
  SUBCASE("a 4 GB uncompressed size in a file of a few hundred bytes") {
    forge_sizes(0xfffffff0u, 0xfffffff0u);
    CHECK_THROWS_AS(load_npz(p), IOError);
    forge_sizes(get_u32(good, centrals[0] + 20), 0xfffffff0u);
    check_load_error(p, "entry 'w.npy': the stated size of 4294967280 bytes is implausible");
  }
  SUBCASE("a stated size just past the ratio bound") {
    forge_sizes(get_u32(good, centrals[0] + 20), static_cast<std::uint32_t>(good.size() * 1100 + 1));
    check_load_error(p, "implausible");
  }
  SUBCASE("stored data claimed past the end of the file") {
    const auto forged = static_cast<std::uint32_t>(good.size() * 1000);
    forge_sizes(forged, forged);
    CHECK_THROWS_WITH_AS(load_npz(p), doctest::Contains(p.c_str()), IOError);
  }
  SUBCASE("a deflated entry claiming 1000x the file inflates to less: an IOError") {
    // Within the size bound and consistent between the headers: only reading finds out
    // (the read buffer grows with the bytes actually inflated, not the claim).
    std::string bad = read_file(fixture("savez_compressed.npz"));
    const std::size_t local = find_all(bad, kLocal).at(0);
    const std::size_t central = find_all(bad, kCentral).at(0);
    REQUIRE(bad.substr(local + 30, 5) == "a.npy");
    const auto forged = static_cast<std::uint32_t>(bad.size() * 1000);
    put_u32(bad, local + 22, forged);
    put_u32(bad, central + 24, forged);
    write_file(p, bad);
    check_load_error(p, "entry 'a.npy'");
  }
  SUBCASE("a stated size smaller or larger than the stored data") {
    const std::uint32_t comp = get_u32(good, centrals[0] + 20);
    forge_sizes(comp, comp - 1);
    check_load_error(p, "entry 'w.npy'");
    forge_sizes(comp, comp + 1);
    check_load_error(p, "entry 'w.npy'");
    forge_sizes(comp - 8, comp - 8);
    check_load_error(p, "entry 'w.npy'");
  }
  SUBCASE("a forged central-directory size or offset in the end record") {
    std::string bad = good;
    put_u32(bad, ends[0] + 12, get_u32(good, ends[0] + 12) + 46);  // central directory size
    write_file(p, bad);
    CHECK_THROWS_WITH_AS(load_npz(p), doctest::Contains(p.c_str()), IOError);
    bad = good;
    put_u32(bad, ends[0] + 12, 0xffffff00u);
    write_file(p, bad);
    CHECK_THROWS_WITH_AS(load_npz(p), doctest::Contains(p.c_str()), IOError);
    bad = good;
    put_u32(bad, ends[0] + 16, get_u32(good, ends[0] + 16) - 1);  // central directory offset
    write_file(p, bad);
    CHECK_THROWS_WITH_AS(load_npz(p), doctest::Contains(p.c_str()), IOError);
  }
  SUBCASE("an entry count larger than the directory holds") {
    std::string bad = good;
    bad[ends[0] + 8] = 3;
    bad[ends[0] + 10] = 3;
    write_file(p, bad);
    CHECK_THROWS_WITH_AS(load_npz(p), doctest::Contains(p.c_str()), IOError);
  }
}

// ---- decompression bombs ---------------------------------------------------------------------

namespace {

// A version 1.0 .npy header (magic through padding) for '<f4' of the given shape text.
std::string npy_header(const std::string& shape) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>((dict.size() >> 8) & 0xff);
  return out + dict;
}

// Writes an .npz at p with one deflated entry "bomb.npy": `header` then `zero_bytes`
// zeros, which deflate about 1000:1. The zip directory states the true inflated size.
void write_bomb(const std::string& p, const std::string& header, std::size_t zero_bytes) {
  std::string bytes = header;
  bytes.resize(header.size() + zero_bytes, '\0');
  int code = 0;
  zip_t* za = zip_open(p.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  REQUIRE(za != nullptr);
  zip_source_t* src = zip_source_buffer(za, bytes.data(), bytes.size(), 0);
  REQUIRE(src != nullptr);
  const zip_int64_t idx = zip_file_add(za, "bomb.npy", src, 0);
  REQUIRE(idx >= 0);
  REQUIRE(zip_set_file_compression(za, static_cast<zip_uint64_t>(idx), ZIP_CM_DEFLATE, 9) == 0);
  REQUIRE(zip_close(za) == 0);
}

// load_npz(p, options) in a child: must throw an IOError containing every needle, within
// 30 s, and raise the child's peak memory by less than 32 MiB.
void check_bomb_refused(const std::string& p, const LoadOptions& options, const std::vector<std::string>& needles) {
  long long growth = -1;
  const std::string failures = xgtest::run_in_child(
      [&](xgtest::Expect& expect) {
        try {
          (void)load_npz(p, options);
          expect(false, "the bomb loaded");
        } catch (const IOError& e) {
          const std::string msg = e.what();
          for (const auto& n : needles) expect(msg.find(n) != std::string::npos, "'" + n + "' not in: " + msg);
        }
      },
      30, &growth);
  CHECK_MESSAGE(failures.empty(), failures);
  INFO("peak RSS growth: " << growth << " bytes");
  CHECK(growth >= 0);
  CHECK(growth < (32LL << 20));
}

// 128 MiB of zeros behind a header that declares 4 floats, deflated to ~130 KB. Built once:
// deflating it takes a second or two.
const std::string& mismatched_bomb() {
  static const TempDir dir("_bomb");
  static const std::string p = [] {
    const std::string f = dir.file("bomb.npz");
    write_bomb(f, npy_header("(4,)"), std::size_t{128} << 20);
    return f;
  }();
  return p;
}

}  // namespace

TEST_CASE("npz: a bomb whose npy header disagrees with the zip's stated size is refused before inflating it") {
  // Before, all 128 MiB were inflated into a buffer (the file-size ratio bound let them
  // through) and only then was the header compared with them.
  const std::string& p = mismatched_bomb();
  CHECK(fs::file_size(p) < (std::uintmax_t{1} << 20));
  check_bomb_refused(p, {}, {p, "entry 'bomb.npy'", "needs 16 data bytes but 134217728 are present"});
}

TEST_CASE("npz: a bomb within its declared size is refused past LoadOptions::max_bytes, before allocating") {
  TempDir dir;
  const std::string p = dir.file("bomb.npz");
  // Consistent: the header declares 16 Mi floats (64 MiB) and the zip says as much.
  write_bomb(p, npy_header("(16777216,)"), std::size_t{64} << 20);
  check_bomb_refused(p, LoadOptions{.max_bytes = std::uint64_t{4} << 20},
                     {p, "entry 'bomb.npy'", "67108864 bytes", "LoadOptions::max_bytes = 4194304"});
  // The limit counts the total of all entries, and a user can raise it on purpose.
  const Entries two = {{"a", zeros({1024})}, {"b", zeros({1024})}};
  save_npz(dir.file("two.npz"), two);
  CHECK_THROWS_WITH_AS(load_npz(dir.file("two.npz"), LoadOptions{.max_bytes = 8191}),
                       doctest::Contains("entry 'b.npy'"), IOError);
  CHECK(load_npz(dir.file("two.npz"), LoadOptions{.max_bytes = 8192}).size() == 2);
}

TEST_CASE("npz: entry names are all checked before any entry is inflated") {
  TempDir dir;
  const std::string p = dir.file("names.npz");
  // The bomb first, then an entry with a bad name: the name is refused first, in a child
  // whose memory stays flat. (libzip copies the bomb's entry without inflating it.)
  fs::copy_file(mismatched_bomb(), p);
  const std::string other = "not an npy";
  int code = 0;
  zip_t* za = zip_open(p.c_str(), 0, &code);
  REQUIRE(za != nullptr);
  REQUIRE(zip_file_add(za, "readme.txt", zip_source_buffer(za, other.data(), other.size(), 0), 0) >= 0);
  REQUIRE(zip_close(za) == 0);
  check_bomb_refused(p, {}, {p, "entry 'readme.txt'", "not a '<name>.npy' entry"});
}

TEST_CASE("npz: loading a FIFO, a directory, a device or a socket is an IOError naming what it is") {
  TempDir dir;
  const std::string fifo = dir.file("fifo.npz");
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  const std::string failures = xgtest::fifo_load_failures(fifo, [](const std::string& f) { (void)load_npz(f); });
  CHECK_MESSAGE(failures.empty(), failures);
  check_load_error(dir.path.string(), "is a directory");
  check_load_error("/dev/null", "is a character device");
}

TEST_CASE("npz: saving through a symlink keeps it; a FIFO or a directory at the path is refused, untouched") {
  TempDir dir;
  save_npz(dir.file("real.npz"), small_entries());
  fs::create_symlink("real.npz", dir.file("link.npz"));
  const Entries next = {{"x", full({2}, 3.0)}};
  save_npz(dir.file("link.npz"), next);
  CHECK(fs::is_symlink(dir.file("link.npz")));
  check_same_entries(load_npz(dir.file("real.npz")), next);
  const std::string fifo = dir.file("fifo.npz");
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  CHECK_THROWS_WITH_AS(save_npz(fifo, next), doctest::Contains("is a FIFO"), IOError);
  CHECK(fs::is_fifo(fifo));
  fs::create_directories(dir.file("sub.npz"));
  CHECK_THROWS_WITH_AS(save_npz(dir.file("sub.npz"), next), doctest::Contains("is a directory"), IOError);
  CHECK(dir.listing() == std::vector<std::string>{"fifo.npz", "link.npz", "real.npz", "sub.npz"});
}

TEST_CASE("npz: an entry count the file cannot hold is refused before the entries are read") {
  TempDir dir;
  save_npz(dir.file("src.npz"), small_entries());
  std::string bad = read_file(dir.file("src.npz"));
  const auto ends = find_all(bad, kEnd);
  REQUIRE(ends.size() == 1);
  // 65535 entries (the 16-bit maximum) in a file of a few hundred bytes.
  bad[ends[0] + 8] = bad[ends[0] + 9] = bad[ends[0] + 10] = bad[ends[0] + 11] = '\xff';
  write_file(dir.file("count.npz"), bad);
  CHECK_THROWS_WITH_AS(load_npz(dir.file("count.npz")), doctest::Contains(dir.file("count.npz").c_str()), IOError);
}
