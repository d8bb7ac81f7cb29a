#include "text.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <unistd.h>

#include <fmt/core.h>

#include "../autograd/io.hpp"

namespace xg::training {

namespace fs = std::filesystem;

// ---- reading ----------------------------------------------------------------------------

bool is_text(std::string_view bytes, std::int64_t* bad_offset) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  std::size_t i = 0;
  auto fail = [&](std::size_t at) {
    if (bad_offset) *bad_offset = static_cast<std::int64_t>(at);
    return false;
  };
  while (i < n) {
    const unsigned char c = s[i];
    if (c == 0) return fail(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    // UTF-8 per RFC 3629 table 3-7: the allowed range of the second byte depends on the
    // first (this is what excludes overlong forms, surrogates and > U+10FFFF).
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return fail(i);
    }
    if (n - i < len) return fail(i);
    if (s[i + 1] < lo || s[i + 1] > hi) return fail(i);
    for (std::size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xbf) return fail(i);
    }
    i += len;
  }
  if (bad_offset) *bad_offset = -1;
  return true;
}

std::string describe_char(unsigned char c) {
  switch (c) {
    case '\n': return "'\\n'";
    case '\t': return "'\\t'";
    case '\r': return "'\\r'";
    case '\'': return "'\\''";
    case '\\': return "'\\\\'";
    default: break;
  }
  if (c >= 0x20 && c < 0x7f) return fmt::format("'{}'", static_cast<char>(c));
  return fmt::format("'\\x{:02x}'", c);
}

namespace {

// The bytes of one regular file, at most `limit` of them (IOError beyond). Opened as a
// regular file or not at all: a FIFO in a corpus directory would block the read forever.
std::string read_file_bytes(const fs::path& path, std::int64_t limit, const std::string& shown) {
  std::uint64_t size = 0;
  const int fd = detail::open_regular_file("read_text", path.string(), &size);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (static_cast<std::uint64_t>(limit) < size)
    throw IOError(fmt::format("read_text: {}: {} bytes exceeds the limit of {} bytes (ReadTextOptions::max_bytes)",
                              shown, size, limit));
  std::string bytes(static_cast<std::size_t>(size), '\0');
  std::size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw IOError(fmt::format("read_text: {}: read error: {}", shown, std::strerror(errno)));
    // A file that shrank while being read: keep what was there.
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}

bool matches(const fs::path& p, const std::vector<std::string>& extensions) {
  if (extensions.empty()) return true;
  const std::string name = p.filename().string();
  return std::any_of(extensions.begin(), extensions.end(), [&](const std::string& e) {
    return !e.empty() && name.size() >= e.size() && name.compare(name.size() - e.size(), e.size(), e) == 0;
  });
}

}  // namespace

std::string read_text(const std::string& path, const ReadTextOptions& options) {
  if (options.max_bytes < 0)
    throw Error(fmt::format("read_text: {}: max_bytes must be >= 0, got {}", path, options.max_bytes));
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw IOError(fmt::format("read_text: {}: no such file or directory", path));

  if (fs::is_regular_file(st)) {
    std::string text = read_file_bytes(path, options.max_bytes, path);
    std::int64_t bad = -1;
    if (!is_text(text, &bad))
      throw IOError(fmt::format("read_text: {}: not a text file (byte {} at offset {} is a NUL or not UTF-8)", path,
                                describe_char(static_cast<unsigned char>(text[static_cast<std::size_t>(bad)])), bad));
    return text;
  }
  if (!fs::is_directory(st)) {
    const char* kind = fs::is_fifo(st)                ? "a FIFO"
                       : fs::is_character_file(st)  ? "a character device"
                       : fs::is_block_file(st)      ? "a block device"
                       : fs::is_socket(st)          ? "a socket"
                                                    : "a special file";
    throw IOError(fmt::format("read_text: {}: is {}, not a regular file or directory", path, kind));
  }

  // Collect first, then sort: directory iteration order is the filesystem's, and the
  // corpus (hence training) must not depend on it.
  std::vector<fs::path> files;
  fs::recursive_directory_iterator it(path, fs::directory_options::skip_permission_denied, ec);
  if (ec) throw IOError(fmt::format("read_text: {}: cannot list: {}", path, ec.message()));
  for (const fs::recursive_directory_iterator end; it != end; it.increment(ec)) {
    if (ec) throw IOError(fmt::format("read_text: {}: cannot list: {}", path, ec.message()));
    // A fresh stat, not the type the listing reported: a subdirectory that can be listed
    // but not entered (r--) names its files, and stat-ing them fails. Skipped like the
    // subdirectories that cannot be listed at all.
    std::error_code fec;
    const fs::file_status fst = fs::status(it->path(), fec);
    if (!fec && fs::is_regular_file(fst) && matches(it->path(), options.extensions)) files.push_back(it->path());
  }
  if (ec) throw IOError(fmt::format("read_text: {}: cannot list: {}", path, ec.message()));
  std::sort(files.begin(), files.end());

  std::string text;
  std::int64_t used = 0;
  for (const fs::path& f : files) {
    std::string bytes = read_file_bytes(f, options.max_bytes - used, f.string());
    if (!is_text(bytes)) continue;
    if (!bytes.empty() && bytes.back() != '\n') bytes.push_back('\n');
    if (static_cast<std::int64_t>(bytes.size()) > options.max_bytes - used)
      throw IOError(fmt::format("read_text: {}: the text exceeds the limit of {} bytes (ReadTextOptions::max_bytes)",
                                path, options.max_bytes));
    used += static_cast<std::int64_t>(bytes.size());
    text += bytes;
  }
  if (text.empty()) {
    std::string exts;
    for (const std::string& e : options.extensions) exts += (exts.empty() ? "" : " ") + e;
    throw IOError(fmt::format("read_text: {}: no non-empty text file{}", path,
                              exts.empty() ? std::string() : " matching " + exts));
  }
  return text;
}

// ---- vocabulary -------------------------------------------------------------------------

void CharVocab::build_index() {
  std::fill(std::begin(id_of_), std::end(id_of_), std::int16_t{-1});
  for (std::size_t i = 0; i < chars_.size(); ++i) id_of_[static_cast<unsigned char>(chars_[i])] = static_cast<std::int16_t>(i);
}

CharVocab::CharVocab(std::string_view text) {
  bool seen[256] = {};
  for (char c : text) seen[static_cast<unsigned char>(c)] = true;
  for (int b = 0; b < 256; ++b) {
    if (seen[b]) chars_.push_back(static_cast<char>(b));
  }
  build_index();
}

CharVocab CharVocab::from_string(std::string_view chars) {
  for (std::size_t i = 1; i < chars.size(); ++i) {
    const auto prev = static_cast<unsigned char>(chars[i - 1]), cur = static_cast<unsigned char>(chars[i]);
    if (cur <= prev)
      throw Error(fmt::format("CharVocab::from_string: byte {} at position {} is not above the previous {} "
                              "(a vocabulary is strictly increasing bytes; corrupt or not a vocabulary?)",
                              describe_char(cur), i, describe_char(prev)));
  }
  CharVocab v;
  v.chars_ = std::string(chars);
  v.build_index();
  return v;
}

std::int64_t CharVocab::id(char c) const {
  const std::int16_t i = id_of_[static_cast<unsigned char>(c)];
  if (i < 0)
    throw IndexError(fmt::format("CharVocab::id: {} is not in the vocabulary of {} chars",
                                 describe_char(static_cast<unsigned char>(c)), size()));
  return i;
}

char CharVocab::chr(std::int64_t id) const {
  if (id < 0 || id >= size())
    throw IndexError(fmt::format("CharVocab::chr: id {} out of range [0, {})", id, size()));
  return chars_[static_cast<std::size_t>(id)];
}

Tensor CharVocab::encode(std::string_view text) const {
  Tensor ids = Tensor::empty({static_cast<std::int64_t>(text.size())}, i64);
  std::int64_t* out = ids.data<std::int64_t>();
  for (std::size_t k = 0; k < text.size(); ++k) {
    const std::int16_t i = id_of_[static_cast<unsigned char>(text[k])];
    if (i < 0)
      throw IndexError(fmt::format("CharVocab::encode: {} at offset {} is not in the vocabulary of {} chars",
                                   describe_char(static_cast<unsigned char>(text[k])), k, size()));
    out[k] = i;
  }
  return ids;
}

Tensor CharVocab::encode(std::string_view text, char fallback) const {
  const std::int16_t fb = id_of_[static_cast<unsigned char>(fallback)];
  if (fb < 0)
    throw IndexError(fmt::format("CharVocab::encode: fallback {} is not in the vocabulary of {} chars",
                                 describe_char(static_cast<unsigned char>(fallback)), size()));
  Tensor ids = Tensor::empty({static_cast<std::int64_t>(text.size())}, i64);
  std::int64_t* out = ids.data<std::int64_t>();
  for (std::size_t k = 0; k < text.size(); ++k) {
    const std::int16_t i = id_of_[static_cast<unsigned char>(text[k])];
    out[k] = i < 0 ? fb : i;
  }
  return ids;
}

std::string CharVocab::decode(const std::vector<std::int64_t>& ids) const {
  std::string s(ids.size(), '\0');
  for (std::size_t k = 0; k < ids.size(); ++k) {
    const std::int64_t i = ids[k];
    if (i < 0 || i >= size())
      throw IndexError(fmt::format("CharVocab::decode: id {} at position {} out of range [0, {})", i, k, size()));
    s[k] = chars_[static_cast<std::size_t>(i)];
  }
  return s;
}

std::string CharVocab::decode(const Tensor& ids) const {
  if (!ids.defined()) throw StateError("CharVocab::decode: ids is an undefined tensor");
  if (ids.dtype() != i64)
    throw DtypeError(fmt::format("CharVocab::decode: ids {} must be int64, got {}", ids.shape().str(),
                                 dtype_name(ids.dtype())));
  const std::int64_t* p = ids.data<std::int64_t>();
  return decode(std::vector<std::int64_t>(p, p + ids.numel()));
}

// ---- splitting and batching -------------------------------------------------------------

std::int64_t split_point(std::int64_t n, double valid_fraction) {
  if (!(valid_fraction >= 0.0 && valid_fraction < 1.0))
    throw Error(fmt::format("split: valid_fraction must be in [0, 1), got {}", valid_fraction));
  if (n < 0) throw Error(fmt::format("split: length must be >= 0, got {}", n));
  const auto held_out = static_cast<std::int64_t>(std::floor(static_cast<double>(n) * valid_fraction));
  return n - std::clamp<std::int64_t>(held_out, 0, n);
}

std::pair<std::string, std::string> split_text(std::string_view text, double valid_fraction) {
  const auto p = static_cast<std::size_t>(split_point(static_cast<std::int64_t>(text.size()), valid_fraction));
  return {std::string(text.substr(0, p)), std::string(text.substr(p))};
}

std::pair<Tensor, Tensor> split_tokens(const Tensor& tokens, double valid_fraction) {
  if (!tokens.defined()) throw StateError("split_tokens: tokens is an undefined tensor");
  if (tokens.ndim() != 1)
    throw ShapeError(fmt::format("split_tokens: tokens {} must be 1-D [N]", tokens.shape().str()));
  const std::int64_t n = tokens.numel();
  const std::int64_t p = split_point(n, valid_fraction);
  // Copies, not views: the halves outlive the corpus tensor and are never written back.
  const std::size_t item = dtype_size(tokens.dtype());
  Tensor a = Tensor::empty({p}, tokens.dtype()), b = Tensor::empty({n - p}, tokens.dtype());
  const auto* src = static_cast<const char*>(tokens.data_ptr());
  if (p > 0) std::memcpy(a.data_ptr(), src, static_cast<std::size_t>(p) * item);
  if (n - p > 0) std::memcpy(b.data_ptr(), src + static_cast<std::size_t>(p) * item, static_cast<std::size_t>(n - p) * item);
  return {a, b};
}

Tensor batchify(const Tensor& tokens, std::int64_t batch) {
  if (!tokens.defined()) throw StateError("batchify: tokens is an undefined tensor");
  if (tokens.dtype() != i64)
    throw DtypeError(fmt::format("batchify: tokens {} must be int64, got {}", tokens.shape().str(),
                                 dtype_name(tokens.dtype())));
  if (tokens.ndim() != 1) throw ShapeError(fmt::format("batchify: tokens {} must be 1-D [N]", tokens.shape().str()));
  if (batch < 1) throw Error(fmt::format("batchify: batch must be >= 1, got {}", batch));
  const std::int64_t n = tokens.numel();
  if (n < batch)
    throw ShapeError(fmt::format("batchify: tokens {} too short for {} streams (need at least one token each)",
                                 tokens.shape().str(), batch));
  const std::int64_t len = n / batch;
  // Row b is the contiguous stretch [b*len, (b+1)*len): the first batch*len tokens
  // reinterpreted as [batch, len], copied so the result owns compact storage.
  Tensor out = Tensor::empty({batch, len}, i64);
  std::memcpy(out.data<std::int64_t>(), tokens.data<std::int64_t>(),
              static_cast<std::size_t>(batch * len) * sizeof(std::int64_t));
  return out;
}

}  // namespace xg::training
