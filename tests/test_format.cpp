#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>

#include "helpers.hpp"

using namespace xg;

namespace {
Tensor ints(std::int64_t n, const Shape& shape) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return from_vector(v, shape);
}
}  // namespace

TEST_CASE("format: small tensors print exactly like PyTorch's layout") {
  CHECK(to_string(from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2})) ==
        "tensor([[1.0000, 2.0000],\n"
        "        [3.0000, 4.0000]], dtype=float32, shape=[2,2])");
  // Elements are right-aligned to the widest one.
  CHECK(to_string(from_vector(std::vector<double>{1, -2.5})) == "tensor([ 1.0000, -2.5000], dtype=float64, shape=[2])");
  CHECK(to_string(from_vector(std::vector<std::int64_t>{1, -20, 300})) ==
        "tensor([  1, -20, 300], dtype=int64, shape=[3])");
  // Three dims: blocks are separated by a blank line.
  CHECK(to_string(ints(8, {2, 2, 2})) ==
        "tensor([[[0, 1],\n"
        "         [2, 3]],\n"
        "\n"
        "        [[4, 5],\n"
        "         [6, 7]]], dtype=int64, shape=[2,2,2])");
  // Size-1 dims.
  CHECK(to_string(from_vector(std::vector<double>{0.25}, {1, 1})) == "tensor([[0.2500]], dtype=float64, shape=[1,1])");
}

TEST_CASE("format: 0-d, empty and undefined tensors") {
  CHECK(to_string(scalar(3.5, f32)) == "tensor(3.5000, dtype=float32, shape=[])");
  CHECK(to_string(scalar(-7, i64)) == "tensor(-7, dtype=int64, shape=[])");
  CHECK(to_string(zeros({0, 3}, f32)) == "tensor([], dtype=float32, shape=[0,3])");
  CHECK(to_string(zeros({0}, i64)) == "tensor([], dtype=int64, shape=[0])");
  CHECK(to_string(Tensor()) == "tensor(undefined)");
}

TEST_CASE("format: autograd state: requires_grad on leaves, grad_fn on op outputs") {
  Tensor a = from_vector(std::vector<float>{1, 2}).requires_grad_();
  CHECK(to_string(a) == "tensor([1.0000, 2.0000], dtype=float32, shape=[2], requires_grad=True)");
  Tensor y = mul(a, a);
  CHECK(to_string(y) == "tensor([1.0000, 4.0000], dtype=float32, shape=[2], grad_fn=<mul>)");
  // detach() is a leaf again, without requires_grad.
  CHECK(to_string(y.detach()) == "tensor([1.0000, 4.0000], dtype=float32, shape=[2])");
  {
    NoGradGuard g;
    CHECK(to_string(mul(a, a)) == "tensor([1.0000, 4.0000], dtype=float32, shape=[2])");
  }
}

TEST_CASE("format: scientific notation when fixed decimals would hide values") {
  CHECK(to_string(from_vector(std::vector<double>{1e-5, 1.0})) ==
        "tensor([1.0000e-05, 1.0000e+00], dtype=float64, shape=[2])");
  CHECK(to_string(from_vector(std::vector<double>{2e8, -1.0})) ==
        "tensor([ 2.0000e+08, -1.0000e+00], dtype=float64, shape=[2])");
  // A ratio above 1000 between the largest and smallest magnitudes.
  CHECK(to_string(from_vector(std::vector<double>{0.001, 2.0})) ==
        "tensor([1.0000e-03, 2.0000e+00], dtype=float64, shape=[2])");
  // Zeros do not count as small values.
  CHECK(to_string(from_vector(std::vector<double>{0.0, 500.0})) ==
        "tensor([  0.0000, 500.0000], dtype=float64, shape=[2])");
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(to_string(from_vector(std::vector<double>{std::nan(""), inf, -inf, 1.0})) ==
        "tensor([   nan,    inf,   -inf, 1.0000], dtype=float64, shape=[4])");
}

TEST_CASE("format: long dimensions are abbreviated with ... past 2*edge entries") {
  CHECK(to_string(ints(10, {10})) == "tensor([0, 1, 2, ..., 7, 8, 9], dtype=int64, shape=[10])");
  // Exactly 2*edge entries: nothing is hidden.
  CHECK(to_string(ints(6, {6})) == "tensor([0, 1, 2, 3, 4, 5], dtype=int64, shape=[6])");
  CHECK(to_string(ints(35, {7, 5}), 2) ==
        "tensor([[ 0,  1, ...,  3,  4],\n"
        "        [ 5,  6, ...,  8,  9],\n"
        "        ...,\n"
        "        [25, 26, ..., 28, 29],\n"
        "        [30, 31, ..., 33, 34]], dtype=int64, shape=[7,5])");
  // Widths come from the shown elements only.
  CHECK(to_string(ints(1000, {1000}), 1) == "tensor([  0, ..., 999], dtype=int64, shape=[1000])");
  // edge <= 0 shows everything.
  CHECK(to_string(ints(8, {8}), 0) == "tensor([0, 1, 2, 3, 4, 5, 6, 7], dtype=int64, shape=[8])");
}

TEST_CASE("format: a [1000,1000] tensor prints fast and short") {
  Tensor big = ones({1000, 1000});
  const auto t0 = std::chrono::steady_clock::now();
  const std::string s = to_string(big);
  const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  INFO(s);
  CHECK(s.size() < 2000);
  CHECK(s.find("...") != std::string::npos);
  CHECK(s.find("shape=[1000,1000]") != std::string::npos);
  CHECK(ms < 50.0);
  // 3 rows, "...", 3 rows: 7 lines.
  CHECK(std::count(s.begin(), s.end(), '\n') == 6);
}

TEST_CASE("format: fmt::format works for tensors, shapes and gradcheck reports") {
  Tensor t = from_vector(std::vector<std::int64_t>{4, 5});
  CHECK(fmt::format("{}", t) == to_string(t));
  CHECK(fmt::format("x = {}", t) == "x = tensor([4, 5], dtype=int64, shape=[2])");
  CHECK(fmt::format("{}", Shape{2, 3}) == "[2,3]");
  CHECK(fmt::format("{}", Shape{}) == "[]");
  CHECK(fmt::format("{:>6}", Shape{2}) == "   [2]");
  CHECK(fmt::format("{}", Tensor()) == "tensor(undefined)");
  GradcheckReport r;
  CHECK(fmt::format("{}", r) == r.str());
}
