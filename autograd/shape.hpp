#pragma once
// A tensor shape: up to 8 dimensions stored inline, so making a tensor never allocates
// for its shape (1x1 tensors in a scalar graph are dominated by such costs).
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace xg {

class Shape {
 public:
  static constexpr int kMaxDims = 8;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims);
  Shape(const std::vector<std::int64_t>& dims);  // NOLINT: implicit, like IntArrayRef
  Shape(const std::int64_t* first, const std::int64_t* last);

  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  std::int64_t operator[](int i) const { return d_[i]; }
  std::int64_t& operator[](int i) { return d_[i]; }
  const std::int64_t* begin() const { return d_; }
  const std::int64_t* end() const { return d_ + n_; }
  const std::int64_t* data() const { return d_; }
  std::int64_t back() const { return d_[n_ - 1]; }

  void push_back(std::int64_t v);
  void insert(int pos, std::int64_t v);
  void erase(int pos);

  // Product of the dims (1 for a 0-d shape). A Shape built by hand may describe more
  // than int64 counts: then this throws ShapeError rather than wrap around. (A tensor's
  // own shape always passes checked_numel below, so for it this never throws.)
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < n_; ++i) {
      if (__builtin_mul_overflow(n, d_[i], &n)) throw_numel_overflow();
    }
    return n;
  }
  std::vector<std::int64_t> vec() const { return {begin(), end()}; }
  // "[2,3,4]"
  std::string str() const;

  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.n_ != b.n_) return false;
    for (int i = 0; i < a.n_; ++i) {
      if (a.d_[i] != b.d_[i]) return false;
    }
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

 private:
  [[noreturn]] void throw_numel_overflow() const;

  std::int64_t d_[kMaxDims] = {};
  int n_ = 0;
};

// The most elements a tensor may have: 2^60, so that a byte count (8 bytes a value) and
// every partial product of the dims fit in int64.
inline constexpr std::int64_t kMaxNumel = std::int64_t{1} << 60;

// Whether a tensor may have shape s: no negative dim, and the product of the dims, with a
// 0 counted as 1, at most kMaxNumel. Counting 0 as 1 keeps every partial product of the
// dims (the strides and outer/inner counts kernels compute) in range for empty tensors
// too: [0, 2^62, 2^62] has no elements, but its dims 1..2 multiply past int64.
inline bool numel_fits(const Shape& s) {
  std::int64_t n = 1;
  for (std::int64_t d : s) {
    if (d < 0 || __builtin_mul_overflow(n, d == 0 ? 1 : d, &n) || n > kMaxNumel) return false;
  }
  return true;
}

namespace detail {
// The op that last sized a tensor from its inputs, so that an allocation failing in
// Tensor::empty can name it (ResourceError "matmul: out of memory ..."). Ops note the site
// where they check a grown shape; empty() names the op only when the numel matches, so a
// stale note never blames the wrong op. constinit: a plain TLS store, no init wrapper.
struct AllocSite {
  const char* op = nullptr;
  std::int64_t numel = -1;
};
extern constinit thread_local AllocSite alloc_site;
}  // namespace detail

// numel_fits(s), and on success notes `op` as the site that sizes the next allocation.
inline bool numel_fits(const char* op, const Shape& s) {
  if (!numel_fits(s)) return false;
  detail::alloc_site = {op, s.numel()};
  return true;
}

// The ShapeError for a shape that numel_fits refuses, worded "<what> <shape> <problem>",
// e.g. "matmul: [2,3] x [3,4]: the result [..] has more than 2^60 elements (...)".
[[noreturn]] void throw_numel_error(std::string_view what, const Shape& s);

// s.numel() for a shape a tensor is about to get; throws ShapeError ("<op>: shape [..]
// has more than 2^60 elements ...", or "... negative dimension ...") unless numel_fits(s).
// Every op that makes a shape from user input or grows one checks it through this.
inline std::int64_t checked_numel(const char* op, const Shape& s) {
  if (!numel_fits(op, s)) throw_numel_error(std::string(op) + ": shape", s);
  return s.numel();
}

// Numpy broadcasting of two shapes; throws ShapeError naming `op`, also when the result
// has more elements than numel_fits allows.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

// Wraps a possibly negative dim into [0, ndim); throws IndexError naming `op`.
int wrap_dim(const char* op, int dim, int ndim);

}  // namespace xg
