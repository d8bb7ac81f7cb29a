#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>

#include "helpers.hpp"
#include "run_in_child.hpp"

// The fixtures live in the source tree; the build passes their absolute path.
#ifndef XGRAD_FIXTURES_DIR
#define XGRAD_FIXTURES_DIR "tests/fixtures"
#endif

using namespace xg;
namespace fs = std::filesystem;

namespace {

using xgtest::TempDir;

using xgtest::read_file;

void write_file(const std::string& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string fixture(const std::string& name) { return std::string(XGRAD_FIXTURES_DIR) + "/npy/" + name; }

// A version 1.0 .npy with the given header dict (padded the way numpy pads) and payload.
std::string forge(const std::string& dict, const std::string& payload) {
  std::string header = dict;
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  return out + header + payload;
}

// Throws IOError whose message contains `needle`.
void check_io_error(const std::string& bytes, const std::string& needle) {
  try {
    (void)npy_from_bytes(bytes, "entry.npy");
    FAIL("no IOError for a header expected to mention: " << needle);
  } catch (const IOError& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.find(needle) != std::string::npos);
    CHECK(msg.find("entry.npy") != std::string::npos);
  }
}

}  // namespace

TEST_CASE("npy: round trip through a file keeps dtype, shape and values") {
  TempDir dir;
  const std::string p = dir.file("t.npy");

  SUBCASE("float32 [2,3]") {
    Tensor a = from_vector(std::vector<float>{1.5f, -2.f, 0.f, 3.25f, 1e-30f, -1e30f}, {2, 3});
    save_npy(p, a);
    Tensor b = load_npy(p);
    CHECK(b.dtype() == f32);
    CHECK(b.shape() == Shape{2, 3});
    CHECK(b.to_vector<float>() == a.to_vector<float>());
  }
  SUBCASE("float64 3-D [2,3,4], bit exact") {
    Tensor a = xgtest::rnd({2, 3, 4}, -5, 5);
    save_npy(p, a);
    Tensor b = load_npy(p);
    CHECK(b.dtype() == f64);
    CHECK(b.shape() == Shape{2, 3, 4});
    CHECK(b.to_vector<double>() == a.to_vector<double>());
  }
  SUBCASE("int64 1-D, extremes") {
    const std::vector<std::int64_t> v{std::numeric_limits<std::int64_t>::min(), -1, 0, 1,
                                      std::numeric_limits<std::int64_t>::max()};
    save_npy(p, from_vector(v));
    Tensor b = load_npy(p);
    CHECK(b.dtype() == i64);
    CHECK(b.shape() == Shape{5});
    CHECK(b.to_vector<std::int64_t>() == v);
  }
  SUBCASE("0-d") {
    save_npy(p, scalar(3.5, f64));
    Tensor b = load_npy(p);
    CHECK(b.ndim() == 0);
    CHECK(b.dtype() == f64);
    CHECK(b.item() == 3.5);
  }
  SUBCASE("empty [0,3]") {
    save_npy(p, zeros({0, 3}, f32));
    Tensor b = load_npy(p);
    CHECK(b.shape() == Shape{0, 3});
    CHECK(b.dtype() == f32);
    CHECK(b.numel() == 0);
  }
  SUBCASE("NaN and infinities survive") {
    const double inf = std::numeric_limits<double>::infinity();
    save_npy(p, from_vector(std::vector<double>{std::nan(""), inf, -inf, -0.0}));
    const std::vector<double> got = load_npy(p).to_vector<double>();
    CHECK(std::isnan(got[0]));
    CHECK(got[1] == inf);
    CHECK(got[2] == -inf);
    CHECK(std::signbit(got[3]));
  }
}

TEST_CASE("npy: bytes round trip and the file holds exactly npy_bytes") {
  TempDir dir;
  Tensor a = from_vector(std::vector<std::int64_t>{3, 1, 4, 1, 5, 9}, {3, 2});
  const std::string bytes = npy_bytes(a);
  // numpy's layout: magic, version 1.0, header padded so the values start 64-aligned.
  REQUIRE(bytes.size() > 10);
  CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  CHECK((10 + header_len) % 64 == 0);
  CHECK(bytes.size() == 10 + header_len + 6 * 8);
  const std::string header = bytes.substr(10, header_len);
  CHECK(header.find("'descr': '<i8'") != std::string::npos);
  CHECK(header.find("'fortran_order': False") != std::string::npos);
  CHECK(header.find("'shape': (3, 2)") != std::string::npos);
  CHECK(header.back() == '\n');

  Tensor b = npy_from_bytes(bytes);
  CHECK(b.shape() == Shape{3, 2});
  CHECK(b.to_vector<std::int64_t>() == a.to_vector<std::int64_t>());

  save_npy(dir.file("a.npy"), a);
  CHECK(read_file(dir.file("a.npy")) == bytes);
}

TEST_CASE("npy: save is atomic: it replaces an existing file and leaves no temp files") {
  TempDir dir;
  const std::string p = dir.file("w.npy");
  save_npy(p, ones({4}, f32));
  save_npy(p, full({2, 2}, 7.0, f64));
  Tensor b = load_npy(p);
  CHECK(b.shape() == Shape{2, 2});
  xgtest::check_values(b, {7, 7, 7, 7});
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("npy: save errors name the path and the OS error") {
  TempDir dir;
  const std::string missing_dir = dir.file("no/such/dir/x.npy");
  try {
    save_npy(missing_dir, ones({2}));
    FAIL("expected IOError");
  } catch (const IOError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("save_npy") != std::string::npos);
    CHECK(msg.find(missing_dir) != std::string::npos);
    CHECK(msg.find("No such file or directory") != std::string::npos);
  }
  // The target is a directory: the rename fails, and the temp file is cleaned up.
  const std::string is_dir = dir.file("sub");
  fs::create_directories(fs::path(is_dir) / "child");
  CHECK_THROWS_AS(save_npy(is_dir, ones({2})), IOError);
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
  CHECK_THROWS_AS(save_npy(dir.file("u.npy"), Tensor()), StateError);
  CHECK_THROWS_AS(npy_bytes(Tensor()), StateError);
}

TEST_CASE("npy: loading a missing file or a directory is an IOError naming the path") {
  TempDir dir;
  const std::string p = dir.file("missing.npy");
  try {
    (void)load_npy(p);
    FAIL("expected IOError");
  } catch (const IOError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("load_npy") != std::string::npos);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("No such file or directory") != std::string::npos);
  }
  CHECK_THROWS_AS(load_npy(dir.path.string()), IOError);
}

TEST_CASE("npy: a file truncated at any length is an IOError, never a crash") {
  TempDir dir;
  const std::string full_bytes = npy_bytes(from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}));
  const std::string p = dir.file("trunc.npy");
  for (std::size_t len = 0; len < full_bytes.size(); ++len) {
    INFO("truncated to " << len << " of " << full_bytes.size() << " bytes");
    const std::string cut = full_bytes.substr(0, len);
    CHECK_THROWS_AS(npy_from_bytes(cut), IOError);
    write_file(p, cut);
    CHECK_THROWS_AS(load_npy(p), IOError);
  }
  // Extra bytes after the values are rejected too (the size must match exactly).
  CHECK_THROWS_AS(npy_from_bytes(full_bytes + "x"), IOError);
  write_file(p, full_bytes);
  xgtest::check_values(load_npy(p), {1, 2, 3, 4, 5, 6});
}

TEST_CASE("npy: flipped header bytes give an IOError or a valid tensor, never a crash") {
  const std::string good = npy_bytes(from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3}));
  const std::size_t header_end = 10 + (static_cast<unsigned char>(good[8]) | (static_cast<unsigned char>(good[9]) << 8));
  int rejected = 0;
  for (std::size_t i = 0; i < header_end; ++i) {
    for (unsigned char mask : {0x01, 0x20, 0x80, 0xff}) {
      std::string bad = good;
      bad[i] = static_cast<char>(static_cast<unsigned char>(bad[i]) ^ mask);
      INFO("byte " << i << " ^ " << int(mask));
      try {
        Tensor t = npy_from_bytes(bad);
        CHECK(t.numel() * static_cast<std::int64_t>(dtype_size(t.dtype())) <= 24);
      } catch (const IOError&) {
        ++rejected;
      }
    }
  }
  CHECK(rejected > 0);

  // Specific corruptions, each with its reason in the message.
  std::string bad = good;
  bad[1] = 'X';
  check_io_error(bad, "magic");
  bad = good;
  bad[6] = 4;
  check_io_error(bad, "version");
  bad = good;
  bad[9] = 0x7f;  // header length far past the end
  check_io_error(bad, "header claims");
  bad = good;
  bad.replace(bad.find("(2, 3)"), 6, "(2, 4)");
  check_io_error(bad, "needs 32 data bytes but 24 are present");
  bad = good;
  bad.replace(bad.find("False"), 5, "Fals ");
  check_io_error(bad, "fortran_order");
  bad = good;
  bad.replace(bad.find("'shape'"), 7, "'shapo'");
  check_io_error(bad, "unexpected key 'shapo'");
}

TEST_CASE("npy: forged headers are rejected before anything large is allocated") {
  const std::string four_floats(16, '\0');
  // 4 TB claimed, 16 bytes present: rejected by the size check, no allocation.
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }", four_floats),
                 "needs 4000000000000 data bytes but 16 are present");
  // A product that overflows 64 bits.
  check_io_error(
      forge("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", four_floats),
      "overflows int64");
  // A dimension that does not even fit in 64 bits.
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", four_floats),
                 "too large");
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }", four_floats), "negative");
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,4), }", four_floats),
                 "more than 8 dimensions");
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': [4], }", four_floats), "tuple");
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, }", four_floats), "no 'shape'");
  check_io_error(forge("{'fortran_order': False, 'shape': (4,), }", four_floats), "no 'descr'");
  check_io_error(forge("{'descr': '<f4', 'shape': (4,), }", four_floats), "no 'fortran_order'");
  check_io_error(forge("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", four_floats),
                 "duplicate");
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), } junk", four_floats), "after");
  check_io_error(forge("{'descr': '<f4", four_floats), "unterminated");
  check_io_error(forge("", four_floats), "expected '{'");
  // A zero dimension with a huge one is an empty array: valid, nothing to allocate.
  Tensor e = npy_from_bytes(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1000000000000), }", ""));
  CHECK(e.numel() == 0);
  CHECK(e.shape() == Shape{0, 1000000000000});
  // ... but its other dims must still multiply within int64.
  check_io_error(forge("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 0), }", ""),
                 "overflows int64");
  // Within int64 but past xgrad's 2^60 elements per tensor (a 0 dim counting as 1): before,
  // (0, 2^62) loaded as an empty tensor whose dims no kernel could multiply.
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904), }", ""), "2^60");
  check_io_error(forge("{'descr': '<f4', 'fortran_order': False, 'shape': (2305843009213693952,), }", four_floats),
                 "2^60");
  // Key order is free, and so are double quotes (the format is a Python literal).
  Tensor k = npy_from_bytes(forge("{\"shape\": (4,), \"fortran_order\": False, \"descr\": \"<f4\"}", four_floats));
  CHECK(k.shape() == Shape{4});
}

TEST_CASE("npy: unsupported dtypes, big-endian and Fortran order are IOErrors that say why") {
  const std::string eight(8, '\0');
  check_io_error(forge("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", eight), "big-endian");
  check_io_error(forge("{'descr': '>i8', 'fortran_order': False, 'shape': (1,), }", eight), "big-endian");
  check_io_error(forge("{'descr': '|i1', 'fortran_order': False, 'shape': (8,), }", eight), "unsupported dtype '|i1'");
  check_io_error(forge("{'descr': '<b1', 'fortran_order': False, 'shape': (8,), }", eight), "unsupported dtype '<b1'");
  check_io_error(forge("{'descr': '<u8', 'fortran_order': False, 'shape': (1,), }", eight), "unsupported dtype");
  check_io_error(forge("{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }", eight), "unsupported dtype");
  check_io_error(forge("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", eight), "Fortran order");
  // '<i4' is widened to int64.
  std::string ints(8, '\0');
  const std::int32_t vals[2] = {-5, 2147483647};
  std::memcpy(ints.data(), vals, 8);
  Tensor t = npy_from_bytes(forge("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", ints));
  CHECK(t.dtype() == i64);
  CHECK(t.to_vector<std::int64_t>() == std::vector<std::int64_t>{-5, 2147483647});
  // numpy's bool '|b1' loads as bool and '|u1' widens to int64, like '<i4' (both once refused).
  const std::string bytes("\x01\x00\xff\x07", 4);
  Tensor b = npy_from_bytes(forge("{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }", bytes));
  CHECK(b.dtype() == b8);
  CHECK(b.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 1, 1});
  Tensor u = npy_from_bytes(forge("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }", bytes));
  CHECK(u.dtype() == i64);
  CHECK(u.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 255, 7});
  check_io_error(forge("{'descr': '|u1', 'fortran_order': False, 'shape': (5,), }", bytes), "needs 5 data bytes");
}

TEST_CASE("npy: files written by numpy load with the values the generator states") {
  // Values from tests/fixtures/gen_npy.py (see its docstring).
  SUBCASE("float32 [2,3] = arange(6).reshape(2,3) * 0.5") {
    Tensor t = load_npy(fixture("f32_2x3.npy"));
    CHECK(t.dtype() == f32);
    CHECK(t.shape() == Shape{2, 3});
    xgtest::check_values(t, {0.0, 0.5, 1.0, 1.5, 2.0, 2.5}, 0, 0);
  }
  SUBCASE("float64 0-d = -3.25") {
    Tensor t = load_npy(fixture("f64_0d.npy"));
    CHECK(t.dtype() == f64);
    CHECK(t.ndim() == 0);
    CHECK(t.item() == -3.25);
  }
  SUBCASE("int64 [4]") {
    Tensor t = load_npy(fixture("i64_4.npy"));
    CHECK(t.dtype() == i64);
    CHECK(t.to_vector<std::int64_t>() == std::vector<std::int64_t>{-7, 0, 42, std::int64_t{1} << 40});
  }
  SUBCASE("int32 [2,2] widened to int64") {
    Tensor t = load_npy(fixture("i32_2x2.npy"));
    CHECK(t.dtype() == i64);
    CHECK(t.shape() == Shape{2, 2});
    CHECK(t.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, -2, 2147483647, -2147483648LL});
  }
  SUBCASE("format version 2.0, float64 [2,1,2] incl. a subnormal") {
    Tensor t = load_npy(fixture("f64_2x1x2_v2.npy"));
    CHECK(t.shape() == Shape{2, 1, 2});
    CHECK(t.to_vector<double>() == std::vector<double>{1.5, -2.0, 1e300, 5e-324});
  }
  SUBCASE("empty float32 [0,3]") {
    Tensor t = load_npy(fixture("f32_empty_0x3.npy"));
    CHECK(t.shape() == Shape{0, 3});
    CHECK(t.dtype() == f32);
  }
  SUBCASE("Fortran order is rejected, saying so") {
    CHECK_THROWS_WITH_AS(load_npy(fixture("f64_fortran_2x3.npy")), doctest::Contains("Fortran order"), IOError);
  }
  SUBCASE("big-endian is rejected, saying so") {
    CHECK_THROWS_WITH_AS(load_npy(fixture("f32_bigendian_3.npy")), doctest::Contains("big-endian"), IOError);
  }
}

// Counted as skipped (not passed) where /usr/bin/python3 has no numpy.
TEST_CASE("npy: numpy reads what save_npy writes" * doctest::skip(!xgtest::python_numpy_available())) {
  TempDir dir;
  const std::string pf = dir.file("f32.npy");
  const std::string pi = dir.file("i64.npy");
  const std::string p0 = dir.file("f64_0d.npy");
  const std::string pe = dir.file("empty.npy");
  save_npy(pf, from_vector(std::vector<float>{0.5f, -1.f, 2.f, 3.f, 4.f, 5.25f}, {3, 2}));
  save_npy(pi, from_vector(std::vector<std::int64_t>{-1, 1LL << 50, 7}));
  save_npy(p0, scalar(-2.5, f64));
  save_npy(pe, zeros({0, 3}, f64));
  const std::string script =
      "import numpy as np, sys\n"
      "f, i, z, e = (np.load(p, allow_pickle=False) for p in sys.argv[1:5])\n"
      "assert f.dtype == np.float32 and f.shape == (3, 2), (f.dtype, f.shape)\n"
      "assert (f == np.array([[0.5, -1], [2, 3], [4, 5.25]], dtype=np.float32)).all(), f\n"
      "assert i.dtype == np.int64 and i.tolist() == [-1, 2**50, 7], i\n"
      "assert z.dtype == np.float64 and z.shape == () and z == -2.5, z\n"
      "assert e.dtype == np.float64 and e.shape == (0, 3), e.shape\n";
  const std::string script_path = dir.file("check.py");
  write_file(script_path, script);
  const std::string cmd =
      "/usr/bin/python3 '" + script_path + "' '" + pf + "' '" + pi + "' '" + p0 + "' '" + pe + "'";
  CHECK(std::system(cmd.c_str()) == 0);
}

// ---- paths that are not regular files -------------------------------------------------------

namespace {

// A unix socket bound at p (kept open by the returned descriptor; -1 when p is too long).
int bind_socket(const std::string& p) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (p.size() >= sizeof addr.sun_path) return -1;
  std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// mknod of a character device needs CAP_MKNOD (root, and a container that allows it).
bool can_make_char_device() {
  TempDir dir("_mknod_probe");
  return ::mknod(dir.file("null").c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0;
}

void check_refused_load(const std::string& p, const std::string& kind) {
  try {
    (void)load_npy(p);
    FAIL("expected IOError for " << kind);
  } catch (const IOError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("load_npy") != std::string::npos);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("is " + kind) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("npy: loading a FIFO, a directory, a device or a socket is an IOError naming what it is") {
  TempDir dir;
  // Before, open() of a FIFO nobody writes blocked forever: the load runs in a child
  // under an alarm so that a regression fails here instead of hanging the suite.
  const std::string fifo = dir.file("fifo.npy");
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  const std::string failures = xgtest::fifo_load_failures(fifo, [](const std::string& f) { (void)load_npy(f); });
  CHECK_MESSAGE(failures.empty(), failures);
  check_refused_load(dir.path.string(), "a directory");
  check_refused_load("/dev/null", "a character device");
  const std::string sock = dir.file("s.npy");
  const int sfd = bind_socket(sock);
  REQUIRE(sfd >= 0);
  check_refused_load(sock, "a socket");
  ::close(sfd);
}

TEST_CASE("npy: saving through a symlink replaces its target and keeps the link") {
  TempDir dir;
  save_npy(dir.file("real.npy"), ones({2}));
  fs::create_symlink("real.npy", dir.file("link.npy"));  // relative, as ln -s makes it
  fs::create_symlink(dir.file("link.npy"), dir.file("chain.npy"));
  save_npy(dir.file("link.npy"), full({3}, 2.0));
  CHECK(fs::is_symlink(dir.file("link.npy")));
  xgtest::check_values(load_npy(dir.file("real.npy")), {2, 2, 2});
  save_npy(dir.file("chain.npy"), full({1}, 5.0));
  CHECK(fs::is_symlink(dir.file("chain.npy")));
  CHECK(fs::is_symlink(dir.file("link.npy")));
  xgtest::check_values(load_npy(dir.file("real.npy")), {5});
  // A dangling link: its target is created (what editors do), the link kept.
  fs::create_symlink("new.npy", dir.file("dangling.npy"));
  save_npy(dir.file("dangling.npy"), full({1}, 7.0));
  CHECK(fs::is_symlink(dir.file("dangling.npy")));
  xgtest::check_values(load_npy(dir.file("new.npy")), {7});
  // No temp files left beside any of them.
  CHECK(dir.listing() == std::vector<std::string>{"chain.npy", "dangling.npy", "link.npy", "new.npy", "real.npy"});
}

TEST_CASE("npy: saving over a FIFO, a directory or a device is refused and leaves it untouched") {
  TempDir dir;
  auto check_refused = [&](const std::string& p, const std::string& kind) {
    try {
      save_npy(p, ones({2}));
      FAIL("expected IOError for " << kind);
    } catch (const IOError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("save_npy") != std::string::npos);
      CHECK(msg.find(p) != std::string::npos);
      CHECK(msg.find("is " + kind) != std::string::npos);
    }
  };
  // Before, the temp file was renamed over the FIFO, which became a plain file.
  const std::string fifo = dir.file("fifo.npy");
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  check_refused(fifo, "a FIFO");
  CHECK(fs::is_fifo(fifo));
  // A symlink to the FIFO: refused too, naming the FIFO; link and FIFO both kept.
  fs::create_symlink("fifo.npy", dir.file("to_fifo.npy"));
  check_refused(dir.file("to_fifo.npy"), "a FIFO");
  CHECK(fs::is_symlink(dir.file("to_fifo.npy")));
  CHECK(fs::is_fifo(fifo));
  fs::create_directories(dir.file("sub"));
  check_refused(dir.file("sub"), "a directory");
  CHECK(fs::is_directory(dir.file("sub")));
  const std::string sock = dir.file("s.npy");
  const int sfd = bind_socket(sock);
  REQUIRE(sfd >= 0);
  check_refused(sock, "a socket");
  CHECK(fs::is_socket(sock));
  ::close(sfd);
  CHECK(dir.listing() == std::vector<std::string>{"fifo.npy", "s.npy", "sub", "to_fifo.npy"});
}

// A device node of its own (a copy of /dev/null made with mknod): needs CAP_MKNOD, so it
// counts as skipped where that is not available (not root, or a container without it).
TEST_CASE("npy: saving over a character device is refused and leaves the node" *
          doctest::skip(!can_make_char_device())) {
  TempDir dir;
  const std::string dev = dir.file("null.npy");
  REQUIRE(::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0);
  try {
    save_npy(dev, ones({2}));
    FAIL("expected IOError");
  } catch (const IOError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find(dev) != std::string::npos);
    CHECK(msg.find("is a character device") != std::string::npos);
  }
  CHECK(fs::is_character_file(dev));
  check_refused_load(dev, "a character device");
}

TEST_CASE("npy: LoadOptions::max_bytes refuses a file before allocating its values") {
  TempDir dir;
  save_npy(dir.file("a.npy"), zeros({1024}));  // 4096 bytes of float32
  try {
    (void)load_npy(dir.file("a.npy"), LoadOptions{.max_bytes = 4095});
    FAIL("expected IOError");
  } catch (const IOError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find(dir.file("a.npy")) != std::string::npos);
    CHECK(msg.find("4096 bytes") != std::string::npos);
    CHECK(msg.find("LoadOptions::max_bytes") != std::string::npos);
  }
  CHECK(load_npy(dir.file("a.npy"), LoadOptions{.max_bytes = 4096}).numel() == 1024);
  CHECK(default_load_max_bytes() >= (std::uint64_t{1} << 30));
}
