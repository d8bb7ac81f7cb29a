// .npy encoding and decoding.
//
// Writing goes through xtensor's xnpy (the project's encoder for .npy and .npz entries).
// Reading does NOT: xnpy trusts the header (it allocates whatever shape it is told and
// reads with no length check), so a forged or truncated file could allocate terabytes or
// read past the end. We parse and validate the header here, check that the shape times
// the item size is exactly the number of bytes present, and only then allocate the
// tensor and copy the bytes straight into it (a memcpy: simpler and faster than going
// through an xarray).
#include "io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <xtensor/xadapt.hpp>
#include <xtensor/xnpy.hpp>

#include "detail/tensor_impl.hpp"

namespace xg {

namespace {

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

// A row-major xarray adaptor over t's values (no copy). xnpy's typestring comes from the
// value type, so the pointer must not be const; nothing writes through it.
template <class T>
auto adapt_values(const Tensor& t) {
  std::vector<std::size_t> shape(t.shape().begin(), t.shape().end());
  return xt::adapt<xt::layout_type::row_major>(const_cast<T*>(t.data<T>()), static_cast<std::size_t>(t.numel()),
                                               xt::no_ownership(), shape);
}

// Calls f(T{}) with the C++ type of t's dtype.
template <class F>
decltype(auto) dispatch_all(Dtype d, F&& f) {
  switch (d) {
    case Dtype::f32: return f(float{});
    case Dtype::f64: return f(double{});
    case Dtype::b8: return f(bool{});  // xnpy writes bool as '|b1'
    case Dtype::i64: break;
  }
  return f(std::int64_t{});
}

// Sink for xnpy's stream writer that sends bytes straight to a file descriptor, so a
// save neither builds the file in memory nor loses a failed write (std::ofstream only
// sets a flag, and its destructor swallows a failed final flush: a full disk would go
// unnoticed). Buffers 1 MiB; large blocks (the values) bypass the buffer.
class FdWriter {
 public:
  FdWriter(int fd, const std::string& path) : fd_(fd), path_(path) { buf_.reserve(kBuf); }

  void write(const char* p, std::streamsize n) {
    const auto len = static_cast<std::size_t>(n);
    if (buf_.size() + len > kBuf) flush();
    if (len >= kBuf) {
      write_all(p, len);
    } else {
      buf_.append(p, len);
    }
  }
  void put(char c) { write(&c, 1); }
  FdWriter& operator<<(const std::string& s) {
    write(s.data(), static_cast<std::streamsize>(s.size()));
    return *this;
  }
  void flush() {
    write_all(buf_.data(), buf_.size());
    buf_.clear();
  }

 private:
  static constexpr std::size_t kBuf = std::size_t{1} << 20;

  void write_all(const char* p, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw IOError(fmt::format("save_npy: writing '{}' failed: {}", path_, std::strerror(errno)));
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  int fd_;
  const std::string& path_;
  std::string buf_;
};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes now and reports the error (close can report a deferred write error).
  int close() {
    const int r = ::close(fd_);
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

void check_savable(const char* op, const Tensor& t) {
  if (!t.defined()) throw StateError(fmt::format("{}: the tensor is undefined (default-constructed Tensor)", op));
}

std::string errno_text() { return std::strerror(errno); }

// ---------------------------------------------------------------------------
// Reading: header validation
// ---------------------------------------------------------------------------

// How values on disk become values in memory when the two layouts differ.
enum class Widen : std::uint8_t {
  none,  // same bytes: memcpy
  i4,    // '<i4' on disk, int64 in memory
  u1,    // '|u1' on disk, int64 in memory (like every integer file: int64 is the index dtype)
  b1,    // '|b1' on disk, bool in memory: a byte other than 0 normalised to true, as numpy reads it
};

// What a validated header says.
struct NpyHeader {
  Dtype dtype = Dtype::f32;
  Widen widen = Widen::none;
  std::size_t disk_item = 4;   // bytes per element on disk
  Shape shape;
  std::size_t data_offset = 0;  // first byte of the values
  std::size_t data_bytes = 0;   // = numel * disk_item, equal to the bytes present
};

constexpr std::string_view kMagic("\x93NUMPY", 6);
// Magic, version and the 4-byte length of a version 2/3 header.
constexpr std::size_t kPreludeMax = 12;

[[noreturn]] void corrupt(const std::string& what, std::string_view why) {
  throw IOError(fmt::format("{}: not a valid .npy file: {}", what, why));
}

// A tiny parser for the header's Python dict literal, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// Only what numpy writes is accepted: string keys, a string, a bool and a tuple of ints.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  void parse(std::string& descr, bool& fortran, std::vector<std::uint64_t>& dims) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        if (have_descr) fail("duplicate key 'descr'");
        descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_fortran) fail("duplicate key 'fortran_order'");
        fortran = parse_bool();
        have_fortran = true;
      } else if (key == "shape") {
        if (have_shape) fail("duplicate key 'shape'");
        dims = parse_shape();
        have_shape = true;
      } else {
        fail(fmt::format("unexpected key '{}' in the header", key));
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != '}') fail("expected ',' or '}' in the header dict");
    }
    ++i_;  // '}'
    // numpy pads with spaces and ends the header with '\n'; nothing else may follow.
    skip_ws();
    if (i_ != s_.size()) fail("unexpected bytes after the header dict");
    if (!have_descr) fail("the header has no 'descr'");
    if (!have_fortran) fail("the header has no 'fortran_order'");
    if (!have_shape) fail("the header has no 'shape'");
  }

 private:
  [[noreturn]] void fail(std::string_view why) const { corrupt(what_, why); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}' in the header", c));
    ++i_;
  }
  std::string parse_string() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string in the header");
    ++i_;
    const std::size_t start = i_;
    while (i_ < s_.size() && s_[i_] != q) {
      if (s_[i_] == '\n') fail("unterminated string in the header");
      if (s_[i_] == '\\') fail("escapes in header strings are not supported");
      ++i_;
    }
    if (i_ >= s_.size()) fail("unterminated string in the header");
    std::string out(s_.substr(start, i_ - start));
    ++i_;
    return out;
  }
  bool parse_bool() {
    if (s_.substr(i_, 4) == "True") {
      i_ += 4;
      return true;
    }
    if (s_.substr(i_, 5) == "False") {
      i_ += 5;
      return false;
    }
    fail("'fortran_order' is not True or False");
  }
  std::vector<std::uint64_t> parse_shape() {
    std::vector<std::uint64_t> dims;
    if (peek() != '(') fail("'shape' is not a tuple of non-negative integers");
    ++i_;
    for (;;) {
      skip_ws();
      if (peek() == ')') break;
      if (peek() == '-') fail("negative dimension in 'shape'");
      if (peek() < '0' || peek() > '9') fail("'shape' is not a tuple of non-negative integers");
      std::uint64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        const auto digit = static_cast<std::uint64_t>(peek() - '0');
        if (v > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) fail("a dimension in 'shape' is too large");
        v = v * 10 + digit;
        ++i_;
      }
      if (peek() == 'L') ++i_;  // Python 2 longs, as old numpy wrote them
      if (dims.size() >= static_cast<std::size_t>(Shape::kMaxDims)) {
        fail(fmt::format("'shape' has more than {} dimensions", Shape::kMaxDims));
      }
      dims.push_back(v);
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != ')') fail("expected ',' or ')' in 'shape'");
    }
    ++i_;  // ')'
    return dims;
  }

  std::string_view s_;
  std::size_t i_ = 0;
  const std::string& what_;
};

// Length of the whole header (magic through padding) from its first bytes, or 0 when
// `head` (the first min(12, total) bytes) is too short to say; checks magic and version.
std::size_t header_end(std::string_view head, std::uint64_t total, const std::string& what) {
  if (total < kMagic.size() + 2 + 2) {
    corrupt(what, fmt::format("{} bytes is too short for a .npy header", total));
  }
  if (head.substr(0, kMagic.size()) != kMagic) corrupt(what, "bad magic (expected \\x93NUMPY)");
  const auto major = static_cast<unsigned char>(head[6]);
  const auto minor = static_cast<unsigned char>(head[7]);
  if (major < 1 || major > 3 || minor != 0) {
    corrupt(what, fmt::format("unsupported format version {}.{} (1.0, 2.0 and 3.0 are read)", major, minor));
  }
  std::uint64_t len = 0;
  std::size_t prelude = 10;
  if (major == 1) {
    len = static_cast<unsigned char>(head[8]) | (static_cast<std::uint64_t>(static_cast<unsigned char>(head[9])) << 8);
  } else {
    prelude = 12;
    if (total < prelude) corrupt(what, fmt::format("{} bytes is too short for a version {}.0 header", total, major));
    for (int b = 0; b < 4; ++b) len |= static_cast<std::uint64_t>(static_cast<unsigned char>(head[8 + b])) << (8 * b);
  }
  if (len > total - prelude) {
    corrupt(what, fmt::format("the header claims {} bytes but only {} follow", len, total - prelude));
  }
  return prelude + static_cast<std::size_t>(len);
}

// Validates the full header `head` (its first header_end() bytes) against the total size.
NpyHeader parse_header(std::string_view head, std::uint64_t total, const std::string& what) {
  NpyHeader h;
  h.data_offset = head.size();
  const std::size_t prelude = static_cast<unsigned char>(head[6]) == 1 ? 10 : 12;

  std::string descr;
  bool fortran = false;
  std::vector<std::uint64_t> dims;
  HeaderParser(head.substr(prelude), what).parse(descr, fortran, dims);

  if (descr == "<f4") {
    h.dtype = Dtype::f32;
    h.disk_item = 4;
  } else if (descr == "<f8") {
    h.dtype = Dtype::f64;
    h.disk_item = 8;
  } else if (descr == "<i8") {
    h.dtype = Dtype::i64;
    h.disk_item = 8;
  } else if (descr == "<i4") {
    h.dtype = Dtype::i64;
    h.disk_item = 4;
    h.widen = Widen::i4;
  } else if (descr == "|b1") {
    h.dtype = Dtype::b8;
    h.disk_item = 1;
    h.widen = Widen::b1;
  } else if (descr == "|u1") {
    h.dtype = Dtype::i64;
    h.disk_item = 1;
    h.widen = Widen::u1;
  } else if (!descr.empty() && descr[0] == '>') {
    throw IOError(fmt::format("{}: dtype '{}' is big-endian; xgrad reads little-endian '<f4', '<f8', '<i8', '<i4' "
                              "(convert with arr.astype(arr.dtype.newbyteorder('<')))",
                              what, descr));
  } else {
    throw IOError(fmt::format("{}: unsupported dtype '{}'; xgrad reads '<f4', '<f8', '<i8', '<i4', '|u1' and '|b1'",
                              what, descr));
  }
  if (fortran) {
    throw IOError(fmt::format("{}: the array is stored in Fortran order (fortran_order: True); xgrad reads C order "
                              "only (save np.ascontiguousarray(arr))",
                              what));
  }

  // numel * item must equal the bytes present, checked before anything is allocated.
  // The products are overflow-checked, so a forged shape cannot wrap around. Even an
  // empty array must have a product of its non-zero dims within xgrad's element limit
  // (kMaxNumel, as numel_fits counts: kernels multiply the dims of empty tensors too).
  const std::uint64_t present = total - h.data_offset;
  std::uint64_t nonzero_product = 1;
  bool has_zero = false;
  for (std::uint64_t d : dims) {
    if (d == 0) {
      has_zero = true;
      continue;
    }
    if (__builtin_mul_overflow(nonzero_product, d, &nonzero_product) ||
        nonzero_product > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      corrupt(what, fmt::format("the shape ({}) is too large: its element count overflows int64",
                                fmt::join(dims, ", ")));
    }
    if (nonzero_product > static_cast<std::uint64_t>(kMaxNumel)) {
      corrupt(what, fmt::format("the shape ({}) is too large: its dims multiply past 2^60 (xgrad's limit on "
                                "elements per tensor; a 0 dim counts as 1)",
                                fmt::join(dims, ", ")));
    }
  }
  std::uint64_t bytes = 0;
  if (!has_zero && __builtin_mul_overflow(nonzero_product, h.disk_item, &bytes)) {
    corrupt(what, fmt::format("the shape ({}) is too large: its byte count overflows 64 bits", fmt::join(dims, ", ")));
  }
  if (bytes != present) {
    corrupt(what, fmt::format("the shape ({}) of '{}' needs {} data bytes but {} are present", fmt::join(dims, ", "),
                              descr, bytes, present));
  }
  std::vector<std::int64_t> sdims(dims.begin(), dims.end());
  h.shape = Shape(sdims);
  h.data_bytes = static_cast<std::size_t>(present);
  return h;
}

// Copies n_elems validated values from their disk layout (src) into tensor storage.
void store_values(const NpyHeader& h, const char* src, std::size_t n_elems, char* dst_bytes) {
  switch (h.widen) {
    case Widen::none: std::memcpy(dst_bytes, src, n_elems * h.disk_item); return;
    case Widen::i4: {
      auto* dst = reinterpret_cast<std::int64_t*>(dst_bytes);
      for (std::size_t i = 0; i < n_elems; ++i) {
        std::int32_t v;
        std::memcpy(&v, src + 4 * i, 4);
        dst[i] = v;
      }
      return;
    }
    case Widen::u1: {
      auto* dst = reinterpret_cast<std::int64_t*>(dst_bytes);
      for (std::size_t i = 0; i < n_elems; ++i) dst[i] = static_cast<unsigned char>(src[i]);
      return;
    }
    case Widen::b1: {
      // A C++ bool must hold 0 or 1 (anything else is undefined behaviour): a forged byte
      // is read as numpy reads it, nonzero = true.
      auto* dst = reinterpret_cast<bool*>(dst_bytes);
      for (std::size_t i = 0; i < n_elems; ++i) dst[i] = src[i] != 0;
      return;
    }
  }
}

// Reads exactly n bytes or throws (a file that shrank while we read it).
void read_exact(int fd, char* p, std::size_t n, const std::string& what) {
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IOError(fmt::format("{}: read failed: {}", what, errno_text()));
    }
    if (r == 0) throw IOError(fmt::format("{}: unexpected end of file (was it truncated?)", what));
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

std::string kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "a special file";
}

std::string parent_dir(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

std::uint64_t default_load_max_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  constexpr std::uint64_t kFloor = std::uint64_t{1} << 30;
  if (pages <= 0 || page <= 0) return std::uint64_t{64} << 30;
  const std::uint64_t phys = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
  return std::max(kFloor, phys / 4 * 3);
}

int detail::open_regular_file(const char* op, const std::string& path, std::uint64_t* size) {
  // stat first so that a device is never opened at all (opening one can have effects:
  // a tape rewinds, a modem hangs up), and a socket, which open() refuses with a
  // confusing ENXIO, is named as what it is.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IOError(fmt::format("{}: cannot open '{}': {}", op, path, errno_text()));
  auto refuse = [&](mode_t mode) {
    return IOError(fmt::format("{}: '{}' is {}, not a regular file (only regular files are read)", op, path,
                               kind_of(mode)));
  };
  if (!S_ISREG(st.st_mode)) throw refuse(st.st_mode);
  // O_NONBLOCK: if a FIFO replaced the file since the stat, open() must not wait for a
  // writer; fstat of the descriptor then sees what was actually opened.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) throw IOError(fmt::format("{}: cannot open '{}': {}", op, path, errno_text()));
  Fd guard(fd);
  if (::fstat(fd, &st) != 0) throw IOError(fmt::format("{}: cannot stat '{}': {}", op, path, errno_text()));
  if (!S_ISREG(st.st_mode)) throw refuse(st.st_mode);
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    throw IOError(fmt::format("{}: cannot read '{}': {}", op, path, errno_text()));
  }
  *size = static_cast<std::uint64_t>(st.st_size);
  return guard.release();
}

std::string detail::resolve_save_target(const char* op, const std::string& path) {
  std::string cur = path;
  // 40 is Linux's own limit on symlinks in one lookup (ELOOP beyond).
  for (int hops = 0; hops <= 40; ++hops) {
    struct stat st {};
    if (::lstat(cur.c_str(), &st) != 0) {
      // Nothing there yet (or a dangling link's target): the save creates it, and a
      // missing directory is reported by the temp file's creation.
      if (errno == ENOENT) return cur;
      throw IOError(fmt::format("{}: cannot stat '{}': {}", op, cur, errno_text()));
    }
    if (S_ISREG(st.st_mode)) return cur;
    if (!S_ISLNK(st.st_mode)) {
      const std::string via = cur == path ? std::string() : fmt::format(" (the symlink '{}' points to it)", path);
      throw IOError(fmt::format("{}: '{}' is {}{}; refusing to replace it with a file (save to a regular file's "
                                "path)",
                                op, cur, kind_of(st.st_mode), via));
    }
    std::string target(static_cast<std::size_t>(std::max<off_t>(st.st_size, 0)) + 256, '\0');
    const ssize_t n = ::readlink(cur.c_str(), target.data(), target.size());
    if (n < 0) throw IOError(fmt::format("{}: cannot read the symlink '{}': {}", op, cur, errno_text()));
    if (n == 0) throw IOError(fmt::format("{}: the symlink '{}' is empty", op, cur));
    if (static_cast<std::size_t>(n) >= target.size()) {
      throw IOError(fmt::format("{}: the symlink '{}' changed while being read; try again", op, cur));
    }
    target.resize(static_cast<std::size_t>(n));
    cur = target.front() == '/' ? target : parent_dir(cur) + "/" + target;
  }
  throw IOError(fmt::format("{}: '{}': more than 40 levels of symlinks (a loop?)", op, path));
}

Tensor detail::read_npy(std::uint64_t total, const std::function<void(char*, std::size_t)>& read,
                        const std::string& what, LoadBudget& budget) {
  // Only the header first: its shape must account for every byte before anything the
  // size of the values is allocated.
  std::string head(static_cast<std::size_t>(std::min<std::uint64_t>(total, kPreludeMax)), '\0');
  read(head.data(), head.size());
  const std::size_t end = header_end(head, total, what);
  std::string values_start;  // bytes of the values that came with the 12-byte prelude
  if (end > head.size()) {
    const std::size_t have = head.size();
    head.resize(end);
    read(head.data() + have, end - have);
  } else {
    values_start = head.substr(end);
    head.resize(end);
  }
  const NpyHeader h = parse_header(head, total, what);

  const std::uint64_t numel = h.data_bytes / h.disk_item;
  const std::uint64_t mem = numel * dtype_size(h.dtype);
  if (mem > budget.max_bytes - std::min(budget.used, budget.max_bytes)) {
    throw IOError(fmt::format("{}: the shape ({}) needs {} bytes, which would take the load to {} bytes, past "
                              "LoadOptions::max_bytes = {} (raise it to load this file on purpose)",
                              what, h.shape.str(), mem, budget.used + mem, budget.max_bytes));
  }
  budget.used += mem;

  Tensor t = Tensor::empty(h.shape, h.dtype);
  char* dst = static_cast<char*>(t.data_ptr());
  if (h.widen == Widen::none) {
    std::memcpy(dst, values_start.data(), values_start.size());
    read(dst + values_start.size(), h.data_bytes - values_start.size());
  } else {
    // Converted on the way in (int32 / uint8 widened, bool bytes normalised), in chunks
    // so the staging buffer stays small.
    constexpr std::size_t kChunk = 1 << 16;
    const std::size_t in = h.disk_item, out = dtype_size(h.dtype);
    std::vector<char> buf(kChunk * in);
    const auto n = static_cast<std::size_t>(numel);
    std::size_t pending = values_start.size();  // prelude bytes not yet consumed
    for (std::size_t i = 0; i < n; i += kChunk) {
      const std::size_t m = std::min(kChunk, n - i);
      const std::size_t pre = std::min(pending, m * in);
      std::memcpy(buf.data(), values_start.data() + (values_start.size() - pending), pre);
      pending -= pre;
      read(buf.data() + pre, m * in - pre);
      store_values(h, buf.data(), m, dst + i * out);
    }
  }
  return t;
}

std::string npy_bytes(const Tensor& t) {
  check_savable("npy_bytes", t);
  return dispatch_all(t.dtype(), [&](auto tag) -> std::string {
    using T = decltype(tag);
    return xt::dump_npy(adapt_values<T>(t));
  });
}

void save_npy(const std::string& path, const Tensor& t) {
  check_savable("save_npy", t);
  const std::string target = detail::resolve_save_target("save_npy", path);
  // Atomic: write a temp file beside the target, fsync, rename over it. A crash leaves
  // either the old file or the new one, never half of one. The temp name is unique per
  // process and call; O_EXCL keeps us from clobbering anything, and the 0666 mode lets
  // the umask decide permissions as for any new file.
  static std::atomic<std::uint64_t> counter{0};
  std::string tmp;
  int raw = -1;
  for (int attempt = 0; attempt < 100 && raw < 0; ++attempt) {
    tmp = fmt::format("{}.tmp.{}.{}", target, ::getpid(), counter.fetch_add(1));
    raw = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (raw < 0 && errno != EEXIST) break;
  }
  if (raw < 0) throw IOError(fmt::format("save_npy: cannot create a temp file for '{}': {}", path, errno_text()));
  Fd fd(raw);
  try {
    FdWriter out(fd.get(), path);
    dispatch_all(t.dtype(), [&](auto tag) {
      using T = decltype(tag);
      // xnpy's public dump_npy only writes to std::ofstream (write errors lost) or to a
      // string (two in-memory copies); its stream writer takes any sink with write/put/<<.
      xt::detail::dump_npy_stream(out, adapt_values<T>(t));
    });
    out.flush();
    if (::fsync(fd.get()) != 0) throw IOError(fmt::format("save_npy: fsync of '{}' failed: {}", path, errno_text()));
    if (fd.close() != 0) throw IOError(fmt::format("save_npy: closing '{}' failed: {}", path, errno_text()));
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
      throw IOError(fmt::format("save_npy: cannot rename the temp file to '{}': {}", target, errno_text()));
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable. Best effort: some file systems refuse to fsync a
  // directory, and the data is already safe under one name or the other.
  const int dfd = ::open(parent_dir(target).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

Tensor npy_from_bytes(const std::string& bytes, const std::string& what) {
  std::size_t at = 0;
  // The bytes are already in memory, and the header must account for all of them.
  detail::LoadBudget budget{std::numeric_limits<std::uint64_t>::max(), 0};
  return detail::read_npy(
      bytes.size(),
      [&](char* p, std::size_t n) {
        // read_npy never asks past `total`, which is bytes.size().
        std::memcpy(p, bytes.data() + at, n);
        at += n;
      },
      what, budget);
}

Tensor load_npy(const std::string& path, const LoadOptions& options) {
  std::uint64_t total = 0;
  Fd fd(detail::open_regular_file("load_npy", path, &total));
  const std::string what = fmt::format("load_npy: '{}'", path);
  detail::LoadBudget budget{options.max_bytes, 0};
  return detail::read_npy(
      total, [&](char* p, std::size_t n) { read_exact(fd.get(), p, n, what); }, what, budget);
}

}  // namespace xg
