#pragma once
// A tensor shape: up to 8 dimensions stored inline, so making a tensor never allocates
// for its shape (1x1 tensors in a scalar graph are dominated by such costs).
#include <cstdint>
#include <initializer_list>
#include <string>
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

  // Product of the dims (1 for a 0-d shape).
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < n_; ++i) n *= d_[i];
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
  std::int64_t d_[kMaxDims] = {};
  int n_ = 0;
};

// Numpy broadcasting of two shapes; throws ShapeError naming `op`.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

// Wraps a possibly negative dim into [0, ndim); throws IndexError naming `op`.
int wrap_dim(const char* op, int dim, int ndim);

}  // namespace xg
