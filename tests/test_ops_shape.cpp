// Shape ops: values against index-arithmetic references written here, views, float64
// gradchecks on 0-d..4-D shapes (size-1 dims, negative dims), properties, bad input and
// empty tensors.
//
// View semantics (documented in ops.hpp): reshape, flatten, squeeze and unsqueeze share
// storage with their input, like PyTorch views of a contiguous tensor: writing through
// data<T>() of one shows in the other. Every other shape op returns a fresh copy.
#include <algorithm>
#include <numeric>
#include <string>

#include "helpers.hpp"

using namespace xg;
using xgtest::throws_naming;
using xgtest::check_throws_msg;
using xgtest::check_close;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

using Vec = std::vector<double>;
using Dims = std::vector<std::int64_t>;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Distinct, non-integer values (0.5, 1.75, 3.0, ...) so a misplaced element shows.
Tensor iota(const Shape& s, Dtype dt = f64) {
  Vec v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.5 + 1.25 * static_cast<double>(i);
  return from_vector(v, s, dt);
}

Dims unravel(std::int64_t flat, const Dims& s) {
  Dims idx(s.size());
  for (std::size_t i = s.size(); i-- > 0;) {
    idx[i] = flat % s[i];
    flat /= s[i];
  }
  return idx;
}

std::int64_t ravel(const Dims& idx, const Dims& s) {
  std::int64_t f = 0;
  for (std::size_t i = 0; i < s.size(); ++i) f = f * s[i] + idx[i];
  return f;
}

std::int64_t numel(const Dims& s) {
  return std::accumulate(s.begin(), s.end(), std::int64_t{1}, std::multiplies<>());
}

// y[i_0, ..., i_n] = x[j] with j[p[k]] = i_k, element by element.
Vec ref_permute(const Vec& x, const Dims& xs, const std::vector<int>& p) {
  Dims ys;
  for (int d : p) ys.push_back(xs[static_cast<std::size_t>(d)]);
  Vec y(x.size());
  for (std::int64_t f = 0; f < numel(ys); ++f) {
    const Dims yi = unravel(f, ys);
    Dims xi(xs.size());
    for (std::size_t k = 0; k < p.size(); ++k) xi[static_cast<std::size_t>(p[k])] = yi[k];
    y[static_cast<std::size_t>(f)] = x[static_cast<std::size_t>(ravel(xi, xs))];
  }
  return y;
}

// x[..., start:start+len, ...] along d, element by element.
Vec ref_range(const Vec& x, const Dims& xs, int d, std::int64_t start, std::int64_t len) {
  Dims ys = xs;
  ys[static_cast<std::size_t>(d)] = len;
  Vec y;
  for (std::int64_t f = 0; f < numel(ys); ++f) {
    Dims i = unravel(f, ys);
    i[static_cast<std::size_t>(d)] += start;
    y.push_back(x[static_cast<std::size_t>(ravel(i, xs))]);
  }
  return y;
}

// Concatenation along d, element by element: find the piece each output index falls in.
Vec ref_concat(const std::vector<Tensor>& xs, int d) {
  Dims ys = xs[0].shape().vec();
  ys[static_cast<std::size_t>(d)] = 0;
  for (const Tensor& x : xs) ys[static_cast<std::size_t>(d)] += x.shape()[d];
  Vec y;
  for (std::int64_t f = 0; f < numel(ys); ++f) {
    Dims i = unravel(f, ys);
    std::size_t k = 0;
    while (i[static_cast<std::size_t>(d)] >= xs[k].shape()[d]) i[static_cast<std::size_t>(d)] -= xs[k++].shape()[d];
    y.push_back(xs[k].to_vector<double>()[static_cast<std::size_t>(ravel(i, xs[k].shape().vec()))]);
  }
  return y;
}


}  // namespace

// ---- reshape and the other views ------------------------------------------------------

TEST_CASE("reshape keeps row-major order and infers one -1 dimension") {
  Tensor x = iota({2, 3, 4});
  Tensor y = reshape(x, {4, -1});
  CHECK(y.shape() == Shape{4, 6});
  check_values(y, x.to_vector<double>(), 0.0, 0.0);
  CHECK(reshape(x, {-1}).shape() == Shape{24});
  CHECK(reshape(x, {2, -1, 3}).shape() == Shape{2, 4, 3});
  CHECK(reshape(scalar(2.0, f64), {1, 1}).shape() == Shape{1, 1});
  CHECK(reshape(iota({1, 1}), {}).shape() == Shape{});
  CHECK(reshape(iota({1}), {-1}).shape() == Shape{1});
}

TEST_CASE("reshape, flatten, squeeze and unsqueeze are views: writes through one show in the other") {
  Tensor x = iota({2, 3});
  Tensor r = reshape(x, {3, 2});
  r.data<double>()[4] = 42.0;
  CHECK(x.data<double>()[4] == 42.0);
  x.data<double>()[0] = -7.0;
  CHECK(r.data<double>()[0] == -7.0);
  CHECK(flatten(x).data_ptr() == x.data_ptr());
  CHECK(unsqueeze(x, 1).data_ptr() == x.data_ptr());
  CHECK(squeeze(unsqueeze(x, 0)).data_ptr() == x.data_ptr());
  // A view made from a leaf that requires grad is a recorded op, not a second leaf.
  Tensor w = iota({2, 3}).requires_grad_();
  Tensor v = reshape(w, {6});
  CHECK_FALSE(v.is_leaf());
  CHECK(v.op_name() == "reshape");
  CHECK(v.data_ptr() == w.data_ptr());
}

TEST_CASE("gradients through a view and through its source accumulate (the view's gradient aliases g)") {
  Tensor x = iota({2, 3}).requires_grad_();
  Tensor a = mul(x, 2.0);  // a non-leaf: its node gradient gets two contributions
  Tensor v = reshape(a, {3, 2});
  Tensor loss = add(sum(mul(v, from_vector(Vec{1, 2, 3, 4, 5, 6}, {3, 2}))),
                    sum(mul(flatten(unsqueeze(a, 0)), from_vector(Vec{10, 20, 30, 40, 50, 60}))));
  loss.backward();
  check_values(x.grad(), {22, 44, 66, 88, 110, 132}, 0.0, 0.0);
}

TEST_CASE("transpose, permute, slice, select and concat copy: writes do not reach the input") {
  Tensor x = iota({2, 3});
  Tensor t = transpose(x, 0, 1);
  t.data<double>()[0] = 99.0;
  CHECK(x.data<double>()[0] == 0.5);
  Tensor s = slice(x, 0, 0, 1);
  s.data<double>()[0] = 99.0;
  CHECK(x.data<double>()[0] == 0.5);
  CHECK(transpose(x, 0, 0).data_ptr() != x.data_ptr());
  CHECK(permute(x, {0, 1}).data_ptr() != x.data_ptr());
  Tensor r = select(x, 0, 0);
  r.data<double>()[1] = 99.0;
  CHECK(x.data<double>()[1] == 1.75);
  Tensor c = concat({x}, 0);
  c.data<double>()[2] = 99.0;
  CHECK(x.data<double>()[2] == 3.0);
}

TEST_CASE("flatten merges the dims start..end") {
  Tensor x = iota({2, 3, 4, 5});
  CHECK(flatten(x).shape() == Shape{120});
  CHECK(flatten(x, 1).shape() == Shape{2, 60});
  CHECK(flatten(x, 1, 2).shape() == Shape{2, 12, 5});
  CHECK(flatten(x, -3, -2).shape() == Shape{2, 12, 5});
  CHECK(flatten(x, 2, 2).shape() == Shape{2, 3, 4, 5});
  CHECK(flatten(scalar(1.0)).shape() == Shape{1});  // like PyTorch
  check_values(flatten(x, 0, 1), x.to_vector<double>(), 0.0, 0.0);
}

TEST_CASE("squeeze removes size-1 dims; squeezing a dim of another size is a no-op (PyTorch)") {
  Tensor x = iota({1, 3, 1, 2});
  CHECK(squeeze(x).shape() == Shape{3, 2});
  CHECK(squeeze(x, 0).shape() == Shape{3, 1, 2});
  CHECK(squeeze(x, -2).shape() == Shape{1, 3, 2});
  CHECK(squeeze(x, 1).shape() == Shape{1, 3, 1, 2});
  CHECK(squeeze(iota({1, 1})).shape() == Shape{});
  CHECK(squeeze(scalar(1.0)).shape() == Shape{});
  CHECK(squeeze(scalar(1.0), 0).shape() == Shape{});
  check_values(squeeze(x), x.to_vector<double>(), 0.0, 0.0);
}

TEST_CASE("unsqueeze inserts a size-1 dim; negative dims count from the end of the result") {
  Tensor x = iota({2, 3});
  CHECK(unsqueeze(x, 0).shape() == Shape{1, 2, 3});
  CHECK(unsqueeze(x, 1).shape() == Shape{2, 1, 3});
  CHECK(unsqueeze(x, 2).shape() == Shape{2, 3, 1});
  CHECK(unsqueeze(x, -1).shape() == Shape{2, 3, 1});
  CHECK(unsqueeze(x, -3).shape() == Shape{1, 2, 3});
  CHECK(unsqueeze(scalar(1.0), 0).shape() == Shape{1});
  CHECK(unsqueeze(scalar(1.0), -1).shape() == Shape{1});
}

// ---- transpose and permute -----------------------------------------------------------

TEST_CASE("transpose of a 2x3 matrix, by hand") {
  Tensor y = transpose(from_vector(Vec{1, 2, 3, 4, 5, 6}, {2, 3}), 0, 1);
  CHECK(y.shape() == Shape{3, 2});
  check_values(y, {1, 4, 2, 5, 3, 6}, 0.0, 0.0);
}

TEST_CASE("permute matches an element-by-element reference for every permutation of 1-D..4-D") {
  const Dims shapes[] = {{5}, {3, 4}, {2, 1, 3}, {2, 3, 4}, {2, 1, 3, 4}, {3, 2, 1, 5}, {2, 3, 4, 5}};
  for (const Dims& s : shapes) {
    Tensor x = iota(Shape(s));
    std::vector<int> p(s.size());
    std::iota(p.begin(), p.end(), 0);
    do {
      CAPTURE(Shape(s).str());
      CAPTURE(p.size() > 0 ? p[0] : -1);
      Tensor y = permute(x, p);
      Dims want_shape;
      for (int d : p) want_shape.push_back(s[static_cast<std::size_t>(d)]);
      CHECK(y.shape() == Shape(want_shape));
      check_values(y, ref_permute(x.to_vector<double>(), s, p), 0.0, 0.0);
      check_values(permute(x.to(f32), p), ref_permute(x.to_vector<double>(), s, p), 0.0, 0.0);
    } while (std::next_permutation(p.begin(), p.end()));
  }
}

TEST_CASE("transpose and permute of large tensors (the tiled and row-copy paths) match the reference") {
  Tensor x = iota({70, 45});
  check_values(transpose(x, 0, 1), ref_permute(x.to_vector<double>(), {70, 45}, {1, 0}), 0.0, 0.0);
  Tensor y = iota({3, 40, 50});
  check_values(permute(y, {2, 0, 1}), ref_permute(y.to_vector<double>(), {3, 40, 50}, {2, 0, 1}), 0.0, 0.0);
  check_values(permute(y, {1, 0, 2}), ref_permute(y.to_vector<double>(), {3, 40, 50}, {1, 0, 2}), 0.0, 0.0);
  Tensor z = iota({5, 33, 2, 37});
  check_values(permute(z, {3, 1, 0, 2}), ref_permute(z.to_vector<double>(), {5, 33, 2, 37}, {3, 1, 0, 2}), 0.0,
               0.0);
  Tensor idx = from_vector(std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(transpose(idx, 0, 1).to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 4, 2, 5, 3, 6});
}

TEST_CASE("transpose equals permute with two dims swapped, negative dims included") {
  Tensor x = iota({2, 3, 4});
  check_close(transpose(x, 0, 2), permute(x, {2, 1, 0}), 0.0, 0.0);
  check_close(transpose(x, -1, -2), permute(x, {0, 2, 1}), 0.0, 0.0);
  check_close(permute(x, {-1, 0, -2}), permute(x, {2, 0, 1}), 0.0, 0.0);
  check_close(transpose(x, 1, 1), x, 0.0, 0.0);
}

TEST_CASE("property: permute then the inverse permutation is the identity") {
  Tensor x = iota({2, 1, 3, 4});
  std::vector<int> p{0, 1, 2, 3};
  do {
    std::vector<int> inv(4);
    for (int i = 0; i < 4; ++i) inv[static_cast<std::size_t>(p[static_cast<std::size_t>(i)])] = i;
    check_close(permute(permute(x, p), inv), x, 0.0, 0.0);
  } while (std::next_permutation(p.begin(), p.end()));
}

// ---- slice, narrow, select -----------------------------------------------------------

TEST_CASE("slice clamps start and end like Python slicing") {
  Tensor x = from_vector(Vec{0, 1, 2, 3, 4});
  check_values(slice(x, 0, 1, 3), {1, 2}, 0.0, 0.0);
  check_values(slice(x, 0, -2, 100), {3, 4}, 0.0, 0.0);
  check_values(slice(x, 0, -100, 2), {0, 1}, 0.0, 0.0);
  check_values(slice(x, 0, 0, -1), {0, 1, 2, 3}, 0.0, 0.0);
  CHECK(slice(x, 0, 3, 1).shape() == Shape{0});
  CHECK(slice(x, 0, 7, 9).shape() == Shape{0});
  CHECK(slice(x, -1, -3, -3).shape() == Shape{0});
}

TEST_CASE("slice, narrow and select match the reference along every dim of 2-D..4-D") {
  const Dims shapes[] = {{4, 5}, {3, 1, 4}, {2, 3, 4, 5}};
  for (const Dims& s : shapes) {
    Tensor x = iota(Shape(s));
    const Vec xv = x.to_vector<double>();
    const int nd = static_cast<int>(s.size());
    for (int d = -nd; d < nd; ++d) {
      const int dd = d < 0 ? d + nd : d;
      const std::int64_t n = s[static_cast<std::size_t>(dd)];
      CAPTURE(Shape(s).str());
      CAPTURE(d);
      const std::int64_t lo = n > 1 ? 1 : 0;
      check_values(slice(x, d, lo, n), ref_range(xv, s, dd, lo, n - lo), 0.0, 0.0);
      check_values(narrow(x, d, lo, n - lo), ref_range(xv, s, dd, lo, n - lo), 0.0, 0.0);
      check_values(narrow(x, d, -n, n), xv, 0.0, 0.0);
      Tensor sel = select(x, d, -1);
      Dims want = s;
      want.erase(want.begin() + dd);
      CHECK(sel.shape() == Shape(want));
      check_values(sel, ref_range(xv, s, dd, n - 1, 1), 0.0, 0.0);
      check_values(select(x.to(f32), d, 0), ref_range(xv, s, dd, 0, 1), 0.0, 0.0);
    }
  }
  check_values(select(from_vector(Vec{1, 2, 3}), 0, 1), {2}, 0.0, 0.0);
  CHECK(select(from_vector(Vec{1, 2, 3}), 0, 1).shape() == Shape{});
}

// ---- concat, stack, split, chunk -----------------------------------------------------

TEST_CASE("concat of two matrices, by hand") {
  Tensor a = from_vector(Vec{1, 2, 3, 4}, {2, 2});
  Tensor b = from_vector(Vec{5, 6}, {2, 1});
  check_values(concat({a, b}, 1), {1, 2, 5, 3, 4, 6}, 0.0, 0.0);
  check_values(concat({a, transpose(b, 0, 1)}, 0), {1, 2, 3, 4, 5, 6}, 0.0, 0.0);
}

TEST_CASE("concat matches the reference along every dim, with unequal sizes and size-1 pieces") {
  for (int d = -3; d < 3; ++d) {
    const int dd = d < 0 ? d + 3 : d;
    Dims s0{2, 3, 4}, s1{2, 3, 4}, s2{2, 3, 4};
    s1[static_cast<std::size_t>(dd)] = 1;
    s2[static_cast<std::size_t>(dd)] = 5;
    std::vector<Tensor> xs{iota(Shape(s0)), rnd(Shape(s1), -1, 1, 3), rnd(Shape(s2), -1, 1, 4)};
    CAPTURE(d);
    Tensor y = concat(xs, d);
    check_values(y, ref_concat(xs, dd), 0.0, 0.0);
  }
  Tensor one = iota({2, 3});
  check_close(concat({one}, 0), one, 0.0, 0.0);
  Tensor i = concat({from_vector(std::vector<std::int64_t>{1, 2}), from_vector(std::vector<std::int64_t>{3})}, 0);
  CHECK(i.dtype() == i64);
  CHECK(i.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2, 3});
}

TEST_CASE("stack adds a dim of size len(xs) at dim") {
  Tensor a = from_vector(Vec{1, 2, 3});
  Tensor b = from_vector(Vec{4, 5, 6});
  Tensor s0 = stack({a, b}, 0);
  CHECK(s0.shape() == Shape{2, 3});
  check_values(s0, {1, 2, 3, 4, 5, 6}, 0.0, 0.0);
  Tensor s1 = stack({a, b}, -1);
  CHECK(s1.shape() == Shape{3, 2});
  check_values(s1, {1, 4, 2, 5, 3, 6}, 0.0, 0.0);
  Tensor sc = stack({scalar(1.0, f64), scalar(2.0, f64)}, 0);
  CHECK(sc.shape() == Shape{2});
  check_values(sc, {1, 2}, 0.0, 0.0);
}

TEST_CASE("property: stack equals concat of unsqueezed inputs for every dim") {
  std::vector<Tensor> xs{iota({2, 3}), rnd({2, 3}, -1, 1, 5), rnd({2, 3}, -1, 1, 6)};
  for (int d = -3; d < 3; ++d) {
    CAPTURE(d);
    std::vector<Tensor> us;
    for (const Tensor& x : xs) us.push_back(unsqueeze(x, d));
    check_close(stack(xs, d), concat(us, d), 0.0, 0.0);
  }
}

TEST_CASE("split gives pieces of `size` with a smaller last one; chunk follows torch.chunk") {
  Tensor x = iota({7, 2});
  std::vector<Tensor> p = split(x, 3, 0);
  REQUIRE(p.size() == 3);
  CHECK(p[0].shape() == Shape{3, 2});
  CHECK(p[2].shape() == Shape{1, 2});
  check_values(p[2], {15.5, 16.75}, 0.0, 0.0);  // row 6: elements 12, 13 of 0.5 + 1.25 i
  CHECK(split(x, 10, 0).size() == 1);
  CHECK(split(x, 1, -1).size() == 2);

  auto sizes = [](const std::vector<Tensor>& ts, int d) {
    std::vector<std::int64_t> r;
    for (const Tensor& t : ts) r.push_back(t.shape()[d]);
    return r;
  };
  CHECK(sizes(chunk(iota({5}), 3, 0), 0) == std::vector<std::int64_t>{2, 2, 1});
  CHECK(sizes(chunk(iota({6}), 4, 0), 0) == std::vector<std::int64_t>{2, 2, 2});  // fewer than 4, like torch
  CHECK(sizes(chunk(iota({6}), 3, 0), 0) == std::vector<std::int64_t>{2, 2, 2});
  CHECK(sizes(chunk(iota({2, 12}), 4, 1), 1) == std::vector<std::int64_t>{3, 3, 3, 3});  // LSTM gates
  CHECK(sizes(chunk(iota({3}), 5, 0), 0) == std::vector<std::int64_t>{1, 1, 1});
}

TEST_CASE("property: concat(split(x)) == x and concat(chunk(x)) == x along every dim") {
  Tensor x = iota({3, 5, 4});
  for (int d = -3; d < 3; ++d) {
    for (std::int64_t s : {1, 2, 3, 7}) {
      CAPTURE(d);
      CAPTURE(s);
      check_close(concat(split(x, s, d), d), x, 0.0, 0.0);
      check_close(concat(chunk(x, s, d), d), x, 0.0, 0.0);
    }
  }
}

// ---- gradients -----------------------------------------------------------------------

TEST_CASE("gradcheck: reshape, flatten, squeeze, unsqueeze on 0-d..4-D") {
  auto rs = [](Shape s) { return Fn([s](const std::vector<Tensor>& in) { return reshape(in[0], s); }); };
  gradcheck_ok(rs({2, 3}), {rnd({6})});
  gradcheck_ok(rs({4, -1}), {rnd({2, 3, 4})});
  gradcheck_ok(rs({3, 2}), {rnd({2, 1, 3})});
  gradcheck_ok(rs({-1}), {rnd({1, 2, 3, 2})});
  gradcheck_ok(rs({}), {rnd({1, 1})});
  gradcheck_ok(rs({1}), {rnd({})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return flatten(in[0]); }, {rnd({2, 3, 4})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return flatten(in[0], 1, -2); }, {rnd({2, 1, 3, 2})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return flatten(in[0]); }, {rnd({})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return squeeze(in[0]); }, {rnd({2, 1, 3, 1})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return squeeze(in[0], -1); }, {rnd({1, 3, 1})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return squeeze(in[0], 1); }, {rnd({1, 3, 1})});  // no-op
  gradcheck_ok([](const std::vector<Tensor>& in) { return squeeze(in[0]); }, {rnd({1})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return unsqueeze(in[0], -1); }, {rnd({3})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return unsqueeze(in[0], 1); }, {rnd({2, 3})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return unsqueeze(in[0], 0); }, {rnd({})});
}

TEST_CASE("gradcheck: transpose and permute on 1-D..4-D") {
  auto tr = [](int a, int b) { return Fn([a, b](const std::vector<Tensor>& in) { return transpose(in[0], a, b); }); };
  auto pm = [](std::vector<int> p) { return Fn([p](const std::vector<Tensor>& in) { return permute(in[0], p); }); };
  gradcheck_ok(tr(0, 0), {rnd({5})});
  gradcheck_ok(tr(0, 1), {rnd({3, 4})});
  gradcheck_ok(tr(0, 2), {rnd({2, 3, 4})});
  gradcheck_ok(tr(-1, -2), {rnd({2, 3, 4})});
  gradcheck_ok(tr(1, 3), {rnd({2, 1, 3, 2})});
  gradcheck_ok(pm({0}), {rnd({4})});
  gradcheck_ok(pm({1, 0}), {rnd({3, 4})});
  gradcheck_ok(pm({2, 0, 1}), {rnd({2, 3, 4})});
  gradcheck_ok(pm({-1, 0, 1}), {rnd({2, 1, 4})});
  gradcheck_ok(pm({3, 1, 0, 2}), {rnd({2, 1, 3, 2})});
  gradcheck_ok(pm({}), {rnd({})});
}

TEST_CASE("gradcheck: slice, narrow, select on 1-D..4-D with negative dims and indices") {
  auto sl = [](int d, std::int64_t s, std::int64_t e) {
    return Fn([=](const std::vector<Tensor>& in) { return slice(in[0], d, s, e); });
  };
  auto nr = [](int d, std::int64_t s, std::int64_t l) {
    return Fn([=](const std::vector<Tensor>& in) { return narrow(in[0], d, s, l); });
  };
  auto se = [](int d, std::int64_t i) { return Fn([=](const std::vector<Tensor>& in) { return select(in[0], d, i); }); };
  gradcheck_ok(sl(0, 1, 4), {rnd({5})});
  gradcheck_ok(sl(1, -3, -1), {rnd({3, 4})});
  gradcheck_ok(sl(-1, 1, 100), {rnd({2, 3, 4})});
  gradcheck_ok(sl(2, 0, 2), {rnd({2, 1, 3, 2})});
  gradcheck_ok(sl(1, 0, 1), {rnd({2, 1, 3})});
  gradcheck_ok(nr(0, 2, 2), {rnd({5})});
  gradcheck_ok(nr(-2, -3, 2), {rnd({2, 3, 4})});
  gradcheck_ok(nr(3, 1, 1), {rnd({2, 1, 3, 2})});
  gradcheck_ok(se(0, -1), {rnd({5})});
  gradcheck_ok(se(1, 2), {rnd({3, 4})});
  gradcheck_ok(se(-2, 0), {rnd({2, 3, 4})});
  gradcheck_ok(se(1, 0), {rnd({2, 1, 3, 2})});
}

TEST_CASE("gradcheck: concat and stack, 1-D..4-D, unequal pieces, negative dims") {
  auto cat = [](int d) { return Fn([d](const std::vector<Tensor>& in) { return concat(in, d); }); };
  auto stk = [](int d) { return Fn([d](const std::vector<Tensor>& in) { return stack(in, d); }); };
  gradcheck_ok(cat(0), {rnd({2}), rnd({3}), rnd({1})});
  gradcheck_ok(cat(1), {rnd({2, 3}), rnd({2, 1})});
  gradcheck_ok(cat(0), {rnd({1, 3, 2}), rnd({2, 3, 2})});
  gradcheck_ok(cat(-1), {rnd({2, 1, 3, 2}), rnd({2, 1, 3, 1}), rnd({2, 1, 3, 3})});
  gradcheck_ok(stk(0), {rnd({3}), rnd({3}), rnd({3})});
  gradcheck_ok(stk(-1), {rnd({3}), rnd({3})});
  gradcheck_ok(stk(1), {rnd({2, 3}), rnd({2, 3})});
  gradcheck_ok(stk(3), {rnd({2, 1, 3}), rnd({2, 1, 3})});
  gradcheck_ok(stk(-4), {rnd({2, 1, 3}), rnd({2, 1, 3})});
  gradcheck_ok(stk(0), {rnd({}), rnd({})});
}

TEST_CASE("concat and stack send gradients only to inputs that need them (mixed with constants)") {
  Tensor a = iota({2, 2}).requires_grad_();
  Tensor c = iota({2, 1});
  Tensor y = concat({c, a}, 1);
  sum(mul(y, from_vector(Vec{1, 2, 3, 4, 5, 6}, {2, 3}))).backward();
  check_values(a.grad(), {2, 3, 5, 6}, 0.0, 0.0);
  CHECK_FALSE(c.grad().defined());
  Tensor b = iota({2}).requires_grad_();
  Tensor z = stack({iota({2}), b}, 1);
  sum(mul(z, from_vector(Vec{1, 2, 3, 4}, {2, 2}))).backward();
  check_values(b.grad(), {2, 4}, 0.0, 0.0);
}

TEST_CASE("gradcheck: split and chunk, each piece its own node") {
  auto rev_cat = [](std::vector<Tensor> ps, int d) {
    std::reverse(ps.begin(), ps.end());
    return concat(ps, d);
  };
  gradcheck_ok([&](const std::vector<Tensor>& in) { return rev_cat(split(in[0], 2, 0), 0); }, {rnd({5})});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return rev_cat(split(in[0], 2, -1), -1); }, {rnd({2, 3, 5})});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return rev_cat(chunk(in[0], 4, 1), 1); }, {rnd({2, 8})});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return rev_cat(chunk(in[0], 3, 2), 2); }, {rnd({2, 1, 5, 2})});
  // One piece alone: the other pieces' nodes are never reached.
  gradcheck_ok([](const std::vector<Tensor>& in) { return chunk(in[0], 4, 1)[2]; }, {rnd({3, 8})});
  Tensor x = iota({4}).requires_grad_();
  std::vector<Tensor> ps = split(x, 2, 0);
  CHECK(ps[0].op_name() == "narrow");
  sum(mul(ps[1], 3.0)).backward();
  check_values(x.grad(), {0, 0, 3, 3}, 0.0, 0.0);
}

TEST_CASE("shape-op backwards in float32 place the gradient by hand") {
  Tensor x = iota({2, 3}, f32).requires_grad_();
  sum(slice(x, 1, 1, 3)).backward();
  check_values(x.grad(), {0, 1, 1, 0, 1, 1}, 0.0, 0.0);
  CHECK(x.grad().dtype() == f32);
  x.zero_grad();
  sum(mul(transpose(x, 0, 1), from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {3, 2}))).backward();
  check_values(x.grad(), {1, 3, 5, 2, 4, 6}, 0.0, 0.0);
}

// ---- empty tensors -------------------------------------------------------------------

TEST_CASE("shape ops on tensors with a 0-size dim work and backward through them") {
  Tensor x = zeros({2, 0, 3}, f64).requires_grad_();
  CHECK(reshape(x, {0, 5}).shape() == Shape{0, 5});
  CHECK(reshape(x, {3, -1, 2}).shape() == Shape{3, 0, 2});
  CHECK(flatten(x).shape() == Shape{0});
  CHECK(transpose(x, 0, 2).shape() == Shape{3, 0, 2});
  CHECK(permute(x, {1, 2, 0}).shape() == Shape{0, 3, 2});
  CHECK(squeeze(x).shape() == Shape{2, 0, 3});
  CHECK(unsqueeze(x, 1).shape() == Shape{2, 1, 0, 3});
  CHECK(slice(x, 2, 1, 2).shape() == Shape{2, 0, 1});
  CHECK(narrow(x, 1, 0, 0).shape() == Shape{2, 0, 3});
  CHECK(select(x, 0, 1).shape() == Shape{0, 3});
  CHECK(concat({x, x}, 1).shape() == Shape{2, 0, 3});
  CHECK(concat({x, ones({2, 2, 3}, f64)}, 1).shape() == Shape{2, 2, 3});
  CHECK(stack({x, x}, 1).shape() == Shape{2, 2, 0, 3});
  CHECK(split(x, 2, 1).size() == 1);  // like torch: one empty piece
  CHECK(split(x, 0, 1).size() == 1);
  CHECK(chunk(x, 3, 1).size() == 3);  // like torch: `chunks` empty pieces
  CHECK(split(x, 1, 0).size() == 2);
  Tensor y = concat({flatten(transpose(x, 0, 1)), flatten(select(x, 0, 0)), flatten(stack({x}, 0))}, 0);
  CHECK(y.shape() == Shape{0});
  sum(y).backward();
  CHECK(x.grad().shape() == Shape{2, 0, 3});
}

// ---- bad input -----------------------------------------------------------------------

TEST_CASE("reshape rejects element-count mismatches, two -1s, negative and ambiguous dims") {
  throws_naming<ShapeError>([] { (void)reshape(iota({2, 3}), {4, 2}); },
                            "reshape: cannot reshape [2,3] (6 elements) into [4,2] (8 elements)");
  throws_naming<ShapeError>([] { (void)reshape(iota({2, 3}), {-1, -1}); }, "reshape");
  throws_naming<ShapeError>([] { (void)reshape(iota({2, 3}), {-2, -3}); }, "reshape");
  throws_naming<ShapeError>([] { (void)reshape(iota({2, 3}), {4, -1}); }, "[2,3]");
  throws_naming<ShapeError>([] { (void)reshape(zeros({0, 3}), {0, -1}); }, "reshape");
  throws_naming<StateError>([] { (void)reshape(Tensor(), {1}); }, "reshape");
}

// Shapes whose element count overflows int64, or exceeds xgrad's 2^60 limit (counting
// 0 dims as 1, so every partial product a kernel forms fits): ShapeError naming the op.
TEST_CASE("reshape to a shape whose product wraps around int64 is a ShapeError") {
  // 4611686018427387908 * 4 = 2^64 + 16: wraps to 16, which equals arange(16)'s numel.
  check_throws_msg<ShapeError>([] { (void)reshape(arange(16.0), {4611686018427387908, 4}); },
                               {"reshape", "[4611686018427387908,4]", "2^60"});
  check_throws_msg<ShapeError>([] { (void)reshape(arange(16.0), {1LL << 32, 1LL << 32, 16}); },
                               {"reshape", "[4294967296,4294967296,16]"});
}

TEST_CASE("reshape with -1: a product of the other dims that wraps around is a ShapeError") {
  // known = 2^64 + 16 wraps to 16: the -1 would become 1.
  check_throws_msg<ShapeError>([] { (void)reshape(arange(16.0), {-1, 4611686018427387908, 4}); },
                               {"reshape", "[-1,4611686018427387908,4]", "2^60"});
  // known = 2^64 wraps to 0.
  throws_naming<ShapeError>([] { (void)reshape(arange(16.0), {1LL << 32, -1, 1LL << 32}); }, "reshape");
}

TEST_CASE("reshape with a 0 dim: the other dims still have to fit (0 counts as 1)") {
  // numel 0 == 0, but [0, 2^62, 2^62] would make any kernel's inner product 2^124.
  check_throws_msg<ShapeError>([] { (void)reshape(zeros({0}), {0, 1LL << 62, 1LL << 62}); },
                               {"reshape", "[0,4611686018427387904,4611686018427387904]"});
  throws_naming<ShapeError>([] { (void)reshape(zeros({0, 4}), {0, -1, 1LL << 62, 1LL << 62}); }, "reshape");
  // Within the limit, a 0-size reshape still works.
  CHECK(reshape(zeros({0}), {0, 1LL << 30, 1LL << 30}).shape() == Shape{0, 1LL << 30, 1LL << 30});
}

TEST_CASE("Tensor::view with an overflowing shape is a ShapeError naming view") {
  const Tensor x = arange(16.0);
  check_throws_msg<ShapeError>([&] { (void)x.view({4611686018427387908, 4}); }, {"view", "[4611686018427387908,4]"});
  throws_naming<ShapeError>([&] { (void)x.view({-1, 4611686018427387908, 4}); }, "view");
}

TEST_CASE("concat and stack: a result dim or element count past the limit is a ShapeError") {
  // 16 pieces of [0, 2^59]: the concatenated dim would be 2^63, which wraps to -2^63.
  const std::vector<Tensor> pieces(16, zeros({0, 1LL << 59}));
  check_throws_msg<ShapeError>([&] { (void)concat(pieces, 1); }, {"concat", "[0,576460752303423488]"});
  // 3 x [0, 2^59] stacked is [3, 0, 2^59]: 0 elements, but 3 * 2^59 > 2^60.
  const std::vector<Tensor> three(3, zeros({0, 1LL << 59}));
  throws_naming<ShapeError>([&] { (void)stack(three, 0); }, "stack");
  CHECK(concat({zeros({0, 1LL << 59}), zeros({0, 1LL << 59})}, 1).shape() == Shape{0, 1LL << 60});
}

TEST_CASE("flatten, transpose, permute, squeeze, unsqueeze reject bad dims") {
  Tensor x = iota({2, 3, 4});
  throws_naming<IndexError>([&] { (void)flatten(x, 3); }, "flatten");
  throws_naming<ShapeError>([&] { (void)flatten(x, 2, 1); }, "flatten");
  throws_naming<IndexError>([&] { (void)transpose(x, 0, 3); }, "transpose");
  throws_naming<IndexError>([&] { (void)transpose(x, -4, 0); }, "transpose");
  throws_naming<ShapeError>([&] { (void)permute(x, {0, 1}); }, "permute");
  throws_naming<ShapeError>([&] { (void)permute(x, {0, 1, 1}); }, "permute: [0,1,1] is not a permutation");
  throws_naming<ShapeError>([&] { (void)permute(x, {0, 1, -2}); }, "permute");
  throws_naming<IndexError>([&] { (void)permute(x, {0, 1, 3}); }, "permute");
  throws_naming<IndexError>([&] { (void)squeeze(x, 3); }, "squeeze");
  throws_naming<IndexError>([&] { (void)unsqueeze(x, 4); }, "unsqueeze");
  throws_naming<IndexError>([&] { (void)unsqueeze(x, -5); }, "unsqueeze");
  throws_naming<ShapeError>([] { (void)unsqueeze(zeros({1, 1, 1, 1, 1, 1, 1, 1}), 0); }, "unsqueeze");
  throws_naming<StateError>([] { (void)transpose(Tensor(), 0, 1); }, "transpose");
}

TEST_CASE("slice, narrow and select reject bad ranges, bad dims and 0-d tensors") {
  Tensor x = iota({2, 5});
  throws_naming<IndexError>([&] { (void)slice(x, 2, 0, 1); }, "slice");
  throws_naming<IndexError>([] { (void)slice(scalar(1.0), 0, 0, 1); }, "slice");
  throws_naming<IndexError>([&] { (void)narrow(x, 1, 3, 3); }, "narrow: start 3, length 3 is out of range for dim 1 of size 5");
  throws_naming<IndexError>([&] { (void)narrow(x, 1, -6, 1); }, "narrow");
  throws_naming<IndexError>([&] { (void)narrow(x, 1, 6, 0); }, "narrow");
  throws_naming<IndexError>([&] { (void)narrow(x, 1, 0, -1); }, "narrow");
  throws_naming<IndexError>([&] { (void)narrow(x, -3, 0, 1); }, "narrow");
  throws_naming<IndexError>([] { (void)narrow(scalar(1.0), 0, 0, 1); }, "narrow");
  throws_naming<IndexError>([&] { (void)select(x, 1, 5); }, "select: index 5 is out of range for dim 1 of size 5");
  throws_naming<IndexError>([&] { (void)select(x, 0, -3); }, "select");
  throws_naming<IndexError>([&] { (void)select(x, 2, 0); }, "select");
  throws_naming<IndexError>([] { (void)select(scalar(1.0), 0, 0); }, "select");
  throws_naming<IndexError>([] { (void)select(zeros({0, 2}), 0, 0); }, "select");
}

TEST_CASE("concat and stack reject empty lists, mixed dtypes, ranks and sizes") {
  throws_naming<ShapeError>([] { (void)concat({}, 0); }, "concat");
  throws_naming<ShapeError>([] { (void)stack({}, 0); }, "stack");
  throws_naming<DtypeError>([] { (void)concat({zeros({2}, f32), zeros({2}, f64)}, 0); }, "concat: tensor 1 is float64");
  throws_naming<DtypeError>([] { (void)stack({zeros({2}, f32), zeros({2}, f64)}, 0); }, "stack");
  throws_naming<ShapeError>([] { (void)concat({zeros({2, 3}), zeros({2, 3, 1})}, 0); }, "concat");
  throws_naming<ShapeError>([] { (void)concat({zeros({2, 3}), zeros({3, 3}), zeros({2, 4})}, 0); },
                            "concat: tensor 2 has shape [2,4] but tensor 0 has [2,3]");
  throws_naming<ShapeError>([] { (void)concat({scalar(1.0), scalar(2.0)}, 0); }, "concat");
  throws_naming<IndexError>([] { (void)concat({zeros({2, 3}), zeros({2, 3})}, 2); }, "concat");
  throws_naming<StateError>([] { (void)concat({zeros({2}), Tensor()}, 0); }, "concat");
  throws_naming<ShapeError>([] { (void)stack({zeros({2, 3}), zeros({3, 2})}, 0); }, "stack: tensor 1 has shape [3,2]");
  throws_naming<IndexError>([] { (void)stack({zeros({2, 3}), zeros({2, 3})}, 3); }, "stack");
}

TEST_CASE("split and chunk reject non-positive sizes, bad dims and 0-d tensors") {
  Tensor x = iota({4, 2});
  throws_naming<ShapeError>([&] { (void)split(x, 0, 0); }, "split");
  throws_naming<ShapeError>([&] { (void)split(x, -1, 0); }, "split");
  throws_naming<IndexError>([&] { (void)split(x, 1, 2); }, "split");
  throws_naming<ShapeError>([] { (void)split(scalar(1.0), 1, 0); }, "split");
  throws_naming<ShapeError>([&] { (void)chunk(x, 0, 0); }, "chunk");
  throws_naming<IndexError>([&] { (void)chunk(x, 2, -3); }, "chunk");
  throws_naming<ShapeError>([] { (void)chunk(scalar(1.0), 1, 0); }, "chunk");
}

// ---- row_block ------------------------------------------------------------------------

TEST_CASE("row_block: a view of rows [start, start + length) whose backward fills only those rows") {
  Tensor w = rnd({5, 2}, -1, 1, 4);
  const Vec wv = w.to_vector<double>();
  const Tensor b = row_block(w, 1, 3);
  CHECK(b.shape() == Shape{3, 2});
  check_values(b, Vec(wv.begin() + 2, wv.begin() + 8), 0, 0);
  CHECK(b.data<double>() == w.data<double>() + 2);  // shares w's storage
  CHECK(row_block(w, 5, 0).shape() == Shape{0, 2});
  CHECK(row_block(rnd({6}), 2, 4).shape() == Shape{4});
  w.requires_grad_();
  sum(mul(row_block(w, 3, 2), from_vector(Vec{1, 2, 3, 4}, {2, 2}))).backward();
  check_values(w.grad(), {0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, 0, 0);
}

TEST_CASE("gradcheck row_block: 1-D, 2-D and 3-D, first, middle and last rows") {
  gradcheck_ok([](const std::vector<Tensor>& in) { return row_block(in[0], 0, 2); }, {rnd({4, 3})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return row_block(in[0], 1, 1); }, {rnd({3})});
  gradcheck_ok([](const std::vector<Tensor>& in) { return row_block(in[0], 2, 1); }, {rnd({3, 2, 2})});
}

TEST_CASE("row_block: rows out of range are an IndexError naming the op and the shape") {
  xgtest::check_throws_msg<IndexError>([] { row_block(rnd({4, 3}), 2, 3); }, {"row_block", "[4,3]"});
  xgtest::check_throws_msg<IndexError>([] { row_block(rnd({4, 3}), -1, 1); }, {"row_block"});
  xgtest::check_throws_msg<IndexError>([] { row_block(scalar(1.0), 0, 1); }, {"row_block"});
}

// ---- ranged gradients: select, narrow, slice, chunk and split add into their range ------

TEST_CASE("ranged gradients: loops of select / narrow / chunk pass gradcheck, with overlaps and mixed uses") {
  // A T-step loop over select(x, 0, t), as a hoisted input projection is read.
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        Tensor h = zeros({3, 4}, f64);
        for (std::int64_t t = 0; t < in[0].size(0); ++t) h = tanh(add(select(in[0], 0, t), mul(h, in[1])));
        return h;
      },
      {rnd({5, 3, 4}), rnd({4})});
  // Overlapping narrows along a middle dim, a negative dim, and a full use of the same
  // input before and after the ranged ones (the accumulated gradient switches kinds).
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        const Tensor& x = in[0];
        Tensor y = mul(x, x);
        y = add(y, broadcast_to(sum(mul(narrow(x, 1, 0, 3), narrow(x, 1, 2, 3)), {1}, true), x.shape()));
        return add(y, mul(narrow(x, -1, 1, 2), 3.0).sum() * x);
      },
      {rnd({2, 5, 3})});
  // chunk (the LSTM gates) and split, also of a non-leaf, and of a broadcast operand.
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        Tensor z = add(matmul(in[0], in[1]), in[2]);  // [3, 8] + [8]
        auto g = chunk(z, 4, 1);
        auto p = split(in[2], 3, 0);                  // [3], [3], [2]
        Tensor c = mul(sigmoid(g[0]), tanh(g[2]));
        Tensor c2 = add(c, mul(sigmoid(g[1]), tanh(g[3])));
        return add(sum(c2), sum(mul(p[0], p[1])) + sum(p[2]));
      },
      {rnd({3, 5}), rnd({5, 8}), rnd({8})});
  // slice with a step of rows, and select of a 1-d tensor (a 0-d gradient).
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        Tensor s = zeros({}, f64);
        for (std::int64_t i = 0; i < 6; ++i) s = add(s, mul(select(in[0], 0, i), select(in[0], 0, 5 - i)));
        return add(s, sum(slice(in[1], 0, 1, 3)));
      },
      {rnd({6}), rnd({4, 2})});
}

TEST_CASE("ranged gradients: the same input read twice by a retained graph gets the same gradient twice") {
  Tensor x = rnd({4, 3}).requires_grad_();
  Tensor y = sum(mul(select(x, 0, 1), narrow(x, 0, 1, 1).reshape({3})));
  y.backward(Tensor(), true);
  const std::vector<double> first = x.grad().to_vector<double>();
  y.backward();
  const std::vector<double> second = x.grad().to_vector<double>();
  for (std::size_t i = 0; i < first.size(); ++i) CHECK(second[i] == doctest::Approx(2 * first[i]));
  CHECK(first[3] != 0.0);
  CHECK(first[0] == 0.0);
}

TEST_CASE("ranged gradients: a T = 512 loop over select backpropagates in O(T) bytes, not O(T^2)") {
  constexpr std::int64_t T = 512, B = 4, W = 32;
  const std::int64_t x_bytes = T * B * W * 4;  // 256 KiB
  Tensor x = randn({T, B, W}).requires_grad_();
  Tensor xp = mul(x, 2.0f);  // a non-leaf, like a hoisted projection
  Tensor h = zeros({B, W});
  for (std::int64_t t = 0; t < T; ++t) h = add(mul(h, 0.5f), select(xp, 0, t));
  Tensor loss = sum(h);
  reset_memory_stats();
  loss.backward();
  const MemoryStats s = memory_stats();
  INFO("backward requested " << s.requested_bytes << " bytes; x is " << x_bytes);
  // One zero-filled gradient of xp's size, x's gradient, and O(T) step-sized pieces;
  // a zero tensor of xp's size per step (before) was T * x_bytes = 128 MiB.
  CHECK(s.requested_bytes < 8 * x_bytes);
  // The values: d loss / d x[t] = 2 * 0.5^(T-1-t).
  const std::vector<float> g = x.grad().to_vector<float>();
  CHECK(g[(T - 1) * B * W] == doctest::Approx(2.0));
  CHECK(g[(T - 2) * B * W + 5] == doctest::Approx(1.0));
}

TEST_CASE("ranged gradients: index_select in a loop, with repeated rows, along dims 0 and 1, gradchecked") {
  gradcheck_ok(
      [](const std::vector<Tensor>& in) {
        Tensor h = zeros({1, 3}, f64);
        for (std::int64_t t : {3, 0, 3, 1}) {
          const Tensor idx = from_vector(std::vector<std::int64_t>{t}, Shape{1});
          h = tanh(add(index_select(in[0], 0, idx), h));
        }
        const Tensor rep = from_vector(std::vector<std::int64_t>{2, 0, 2}, Shape{3});
        return add(sum(h), sum(mul(index_select(in[1], 1, rep), in[1].sum())));
      },
      {rnd({4, 3}), rnd({2, 3, 2})});
}
