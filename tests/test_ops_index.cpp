// index_select (incl. the embedding lookup) and gather: values against element-by-element
// references written here, scatter-add backwards (repeated indices accumulate), float64
// gradchecks, bad indices and empty tensors.
#include <string>

#include "helpers.hpp"

using namespace xg;
using xgtest::throws_naming;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

using Vec = std::vector<double>;
using Ids = std::vector<std::int64_t>;
using Dims = std::vector<std::int64_t>;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor iota(const Shape& s, Dtype dt = f64) {
  Vec v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.5 + 1.25 * static_cast<double>(i);
  return from_vector(v, s, dt);
}

Tensor ids(const Ids& v, const Shape& s) { return from_vector(v, s); }
Tensor ids(const Ids& v) { return from_vector(v); }

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

// index_select with a 1-D index: y[.., j, ..] = x[.., index[j], ..].
Vec ref_index_select(const Tensor& x, int d, const Ids& index) {
  const Dims xs = x.shape().vec();
  Dims ys = xs;
  ys[static_cast<std::size_t>(d)] = static_cast<std::int64_t>(index.size());
  const Vec xv = x.to_vector<double>();
  Vec y;
  for (std::int64_t f = 0; f < Shape(ys).numel(); ++f) {
    Dims i = unravel(f, ys);
    i[static_cast<std::size_t>(d)] = index[static_cast<std::size_t>(i[static_cast<std::size_t>(d)])];
    y.push_back(xv[static_cast<std::size_t>(ravel(i, xs))]);
  }
  return y;
}

// gather: y[i] = x[i with dim d replaced by index[i]].
Vec ref_gather(const Tensor& x, int d, const Tensor& index) {
  const Dims xs = x.shape().vec(), is = index.shape().vec();
  const Vec xv = x.to_vector<double>();
  const Ids iv = index.to_vector<std::int64_t>();
  Vec y;
  for (std::int64_t f = 0; f < index.numel(); ++f) {
    Dims i = unravel(f, is);
    i[static_cast<std::size_t>(d)] = iv[static_cast<std::size_t>(f)];
    y.push_back(xv[static_cast<std::size_t>(ravel(i, xs))]);
  }
  return y;
}


}  // namespace

// ---- index_select --------------------------------------------------------------------

TEST_CASE("index_select on dim 0 of a 2-D tensor is the embedding lookup: index.shape + [D]") {
  Tensor table = from_vector(Vec{0, 1, 10, 11, 20, 21, 30, 31}, {4, 2});
  Tensor y = index_select(table, 0, ids({3, 0, 1, 1}, {2, 2}));
  CHECK(y.shape() == Shape{2, 2, 2});
  check_values(y, {30, 31, 0, 1, 10, 11, 10, 11}, 0.0, 0.0);
  Tensor one = index_select(table, 0, from_vector(Ids{2}, Shape{}));
  CHECK(one.shape() == Shape{2});
  check_values(one, {20, 21}, 0.0, 0.0);
  Tensor seq = index_select(table, -2, ids({1, 2, 3}));
  CHECK(seq.shape() == Shape{3, 2});
  check_values(seq, {10, 11, 20, 21, 30, 31}, 0.0, 0.0);
  Tensor y32 = index_select(table.to(f32), 0, ids({2, 0, 1, 2, 3, 3}, {1, 2, 3}));
  CHECK(y32.shape() == Shape{1, 2, 3, 2});
  CHECK(y32.dtype() == f32);
  check_values(y32, {20, 21, 0, 1, 10, 11, 20, 21, 30, 31, 30, 31}, 0.0, 0.0);
}

TEST_CASE("index_select along other dims matches the reference (1-D..4-D, negative dims, repeats)") {
  struct Case {
    Dims shape;
    int dim;
    Ids index;
  };
  const Case cases[] = {{{5}, 0, {4, 0, 0, 2}},       {{3, 4}, 1, {3, 1, 3}},       {{3, 4}, -1, {0}},
                        {{2, 3, 4}, 0, {1, 1, 0}},    {{2, 3, 4}, 1, {2, 0, 2, 1}}, {{2, 3, 4}, -1, {3, 0}},
                        {{2, 1, 3, 2}, 2, {2, 2}},    {{2, 1, 3, 2}, 1, {0, 0, 0}}, {{2, 1, 3, 2}, 3, {1, 0}}};
  for (const Case& c : cases) {
    CAPTURE(Shape(c.shape).str());
    CAPTURE(c.dim);
    Tensor x = iota(Shape(c.shape));
    const int d = c.dim < 0 ? c.dim + static_cast<int>(c.shape.size()) : c.dim;
    Tensor y = index_select(x, c.dim, ids(c.index));
    Dims want = c.shape;
    want[static_cast<std::size_t>(d)] = static_cast<std::int64_t>(c.index.size());
    CHECK(y.shape() == Shape(want));
    check_values(y, ref_index_select(x, d, c.index), 0.0, 0.0);
    check_values(index_select(x.to(f32), c.dim, ids(c.index)), ref_index_select(x, d, c.index), 0.0, 0.0);
  }
  // Off the embedding path a 0-d index selects one entry and keeps the dim, like PyTorch.
  Tensor x3 = iota({2, 3, 4});
  Tensor y0 = index_select(x3, 1, from_vector(Ids{2}, Shape{}));
  CHECK(y0.shape() == Shape{2, 1, 4});
  check_values(y0, ref_index_select(x3, 1, {2}), 0.0, 0.0);
  Tensor xi = from_vector(Ids{5, 6, 7});
  CHECK(index_select(xi, 0, ids({2, 0})).to_vector<std::int64_t>() == Ids{7, 5});
}

TEST_CASE("index_select backward scatter-adds: repeated indices accumulate") {
  Tensor table = iota({3, 2}).requires_grad_();
  Tensor y = index_select(table, 0, ids({0, 2, 0, 0}, {2, 2}));
  // Weight each looked-up row differently: row r of y gets weight r+1.
  Tensor w = from_vector(Vec{1, 1, 2, 2, 3, 3, 4, 4}, {2, 2, 2});
  sum(mul(y, w)).backward();
  // Row 0 was looked up at positions 0, 2, 3 (weights 1+3+4), row 2 at position 1 (2).
  check_values(table.grad(), {8, 8, 0, 0, 2, 2}, 0.0, 0.0);

  Tensor x = iota({2, 3}, f32).requires_grad_();
  sum(index_select(x, 1, ids({2, 2, 0}))).backward();
  check_values(x.grad(), {1, 0, 2, 1, 0, 2}, 0.0, 0.0);
  CHECK(x.grad().dtype() == f32);
}

TEST_CASE("gradcheck: index_select, embedding and general dims, with repeated indices") {
  auto is = [](int d, Tensor index) {
    return Fn([d, index](const std::vector<Tensor>& in) { return index_select(in[0], d, index); });
  };
  gradcheck_ok(is(0, ids({1, 3, 1, 0, 1, 2}, {2, 3})), {rnd({4, 3})});
  gradcheck_ok(is(0, from_vector(Ids{2}, Shape{})), {rnd({4, 3})});
  gradcheck_ok(is(-2, ids({0, 0})), {rnd({1, 5})});
  gradcheck_ok(is(0, ids({4, 0, 4})), {rnd({5})});
  gradcheck_ok(is(1, ids({2, 0, 2})), {rnd({3, 4})});
  gradcheck_ok(is(1, ids({2, 0, 2, 2})), {rnd({2, 3, 4})});
  gradcheck_ok(is(-1, ids({1, 1})), {rnd({2, 1, 3, 2})});
  gradcheck_ok(is(0, ids({1, 0, 1})), {rnd({2, 3, 2})});
}

// ---- gather --------------------------------------------------------------------------

TEST_CASE("gather picks x[i][index[i][j]] along dim 1 and x[index[i][j]][j] along dim 0") {
  Tensor x = from_vector(Vec{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor y = gather(x, 1, ids({2, 0, 1, 1}, {2, 2}));
  CHECK(y.shape() == Shape{2, 2});
  check_values(y, {3, 1, 5, 5}, 0.0, 0.0);
  Tensor z = gather(x, 0, ids({1, 0, 1}, {1, 3}));
  CHECK(z.shape() == Shape{1, 3});
  check_values(z, {4, 2, 6}, 0.0, 0.0);
  check_values(gather(x.to(f32), -1, ids({0, 2}, {2, 1})), {1, 6}, 0.0, 0.0);
  check_values(gather(from_vector(Vec{7, 8, 9}), 0, ids({2, 2, 0, 1})), {9, 9, 7, 8}, 0.0, 0.0);
  CHECK(gather(scalar(3.0, f64), 0, from_vector(Ids{0}, Shape{})).item() == 3.0);
}

TEST_CASE("gather matches the reference along every dim of a 3-D tensor with smaller index sizes") {
  Tensor x = iota({3, 4, 5});
  Generator g(7);
  const Dims sizes[] = {{3, 4, 5}, {2, 3, 4}, {1, 1, 1}, {3, 2, 5}, {2, 4, 1}};
  for (int d = -3; d < 3; ++d) {
    const int dd = d < 0 ? d + 3 : d;
    for (Dims s : sizes) {
      s[static_cast<std::size_t>(dd)] += 2;  // along dim the index may be larger than x
      Tensor index = randint(0, x.shape()[dd], Shape(s), &g);
      CAPTURE(d);
      CAPTURE(Shape(s).str());
      Tensor y = gather(x, d, index);
      CHECK(y.shape() == Shape(s));
      check_values(y, ref_gather(x, dd, index), 0.0, 0.0);
    }
  }
}

TEST_CASE("gather backward scatter-adds, repeated indices accumulate") {
  Tensor x = from_vector(Vec{1, 2, 3, 4, 5, 6}, {2, 3}).requires_grad_();
  sum(mul(gather(x, 1, ids({2, 2, 0, 1, 1, 1}, {2, 3})), from_vector(Vec{1, 2, 3, 4, 5, 6}, {2, 3}))).backward();
  check_values(x.grad(), {3, 0, 3, 0, 15, 0}, 0.0, 0.0);
}

TEST_CASE("gradcheck: gather on 0-d..4-D, every dim, with repeated indices") {
  auto ga = [](int d, Tensor index) {
    return Fn([d, index](const std::vector<Tensor>& in) { return gather(in[0], d, index); });
  };
  Generator g(11);
  gradcheck_ok(ga(0, ids({3, 0, 3, 3})), {rnd({4})});
  gradcheck_ok(ga(0, from_vector(Ids{0}, Shape{})), {rnd({})});
  gradcheck_ok(ga(1, ids({2, 2, 0, 1, 1, 1}, {2, 3})), {rnd({2, 3})});
  gradcheck_ok(ga(0, ids({1, 0, 1, 1}, {2, 2})), {rnd({2, 3})});
  for (int d = -3; d < 3; ++d) {
    CAPTURE(d);
    Shape s{2, 2, 3};
    s[d < 0 ? d + 3 : d] = 4;
    gradcheck_ok(ga(d, randint(0, 3, s, &g)), {rnd({3, 3, 3})});
  }
  gradcheck_ok(ga(-1, randint(0, 2, {2, 1, 2, 3}, &g)), {rnd({2, 1, 3, 2})});
}

// ---- empty tensors -------------------------------------------------------------------

TEST_CASE("index_select and gather with empty indices or empty tensors") {
  Tensor table = iota({4, 3}).requires_grad_();
  Tensor none = index_select(table, 0, from_vector(Ids{}, {0, 5}));
  CHECK(none.shape() == Shape{0, 5, 3});
  sum(none).backward();
  check_values(table.grad(), Vec(12, 0.0), 0.0, 0.0);
  CHECK(index_select(iota({2, 3, 4}), 1, from_vector(Ids{})).shape() == Shape{2, 0, 4});
  CHECK(index_select(zeros({0, 3}), 0, from_vector(Ids{})).shape() == Shape{0, 3});
  CHECK(index_select(zeros({2, 0}), 0, ids({1, 1, 0})).shape() == Shape{3, 0});
  CHECK(index_select(zeros({2, 0, 3}), 0, ids({1})).shape() == Shape{1, 0, 3});
  CHECK(gather(iota({2, 3}), 1, from_vector(Ids{}, {2, 0})).shape() == Shape{2, 0});
  CHECK(gather(zeros({0, 3}), 1, from_vector(Ids{}, {0, 2})).shape() == Shape{0, 2});
  Tensor x = iota({2, 3}).requires_grad_();
  sum(gather(x, 0, from_vector(Ids{}, {0, 3}))).backward();
  check_values(x.grad(), Vec(6, 0.0), 0.0, 0.0);
}

// ---- bad input -----------------------------------------------------------------------

TEST_CASE("index_select rejects out-of-range and negative indices naming the value and the range") {
  Tensor table = iota({5, 3});
  throws_naming<IndexError>([&] { (void)index_select(table, 0, ids({1, 7})); }, "index_select: index 7");
  throws_naming<IndexError>([&] { (void)index_select(table, 0, ids({1, 7})); }, "valid 0..4");
  throws_naming<IndexError>([&] { (void)index_select(table, 0, ids({-1})); }, "index -1");
  throws_naming<IndexError>([&] { (void)index_select(table, 1, ids({3})); }, "valid 0..2");
  throws_naming<IndexError>([] { (void)index_select(zeros({0, 3}), 0, ids({0})); }, "index_select");
  throws_naming<IndexError>([&] { (void)index_select(iota({2, 3, 4}), 2, ids({4})); }, "index_select");
}

TEST_CASE("index_select rejects float indices, multi-dim indices off the embedding path, bad dims") {
  Tensor table = iota({5, 3});
  throws_naming<DtypeError>([&] { (void)index_select(table, 0, from_vector(Vec{1.0})); },
                            "index_select: the index must be int64, got float64");
  throws_naming<DtypeError>([&] { (void)index_select(table, 0, from_vector(std::vector<float>{1.0f})); },
                            "index_select");
  throws_naming<ShapeError>([&] { (void)index_select(table, 1, ids({0, 1}, {1, 2})); }, "index_select");
  throws_naming<ShapeError>([] { (void)index_select(iota({2, 3, 4}), 0, ids({0, 1}, {2, 1})); }, "index_select");
  throws_naming<IndexError>([&] { (void)index_select(table, 2, ids({0})); }, "index_select");
  throws_naming<IndexError>([] { (void)index_select(scalar(1.0), 0, ids({0})); }, "index_select");
  throws_naming<StateError>([&] { (void)index_select(table, 0, Tensor()); }, "index_select");
  throws_naming<StateError>([] { (void)index_select(Tensor(), 0, ids({0})); }, "index_select");
}

TEST_CASE("gather rejects bad indices, index shapes, dtypes and dims") {
  Tensor x = iota({2, 4});
  throws_naming<IndexError>([&] { (void)gather(x, 1, ids({0, 4}, {2, 1})); }, "gather: index 4");
  throws_naming<IndexError>([&] { (void)gather(x, 1, ids({0, 4}, {2, 1})); }, "valid 0..3");
  throws_naming<IndexError>([&] { (void)gather(x, 0, ids({-1}, {1, 1})); }, "index -1");
  throws_naming<ShapeError>([&] { (void)gather(x, 1, ids({0, 1})); }, "gather: index [2] must have as many dims");
  throws_naming<ShapeError>([&] { (void)gather(x, 1, ids({0, 1, 2}, {3, 1})); }, "gather: index [3,1] is larger");
  throws_naming<DtypeError>([&] { (void)gather(x, 1, from_vector(Vec{0, 1}, {2, 1})); }, "gather");
  throws_naming<IndexError>([&] { (void)gather(x, 2, ids({0, 1}, {2, 1})); }, "gather");
  throws_naming<IndexError>([] { (void)gather(zeros({2, 0}), 1, ids({0}, {1, 1})); }, "gather");
  throws_naming<StateError>([] { (void)gather(Tensor(), 0, ids({0})); }, "gather");
}

// ---- embedding ------------------------------------------------------------------------

TEST_CASE("embedding: ids of any shape give the rows of weight") {
  const Tensor w = rnd({5, 3}, -1, 1, 2);
  const Vec wv = w.to_vector<double>();
  const Tensor y = embedding(from_vector(Ids{4, 0, 4, 2}, {2, 2}), w);
  CHECK(y.shape() == Shape{2, 2, 3});
  Vec want;
  for (std::int64_t id : {4, 0, 4, 2}) want.insert(want.end(), wv.begin() + id * 3, wv.begin() + id * 3 + 3);
  check_values(y, want, 0, 0);
  CHECK(embedding(from_vector(Ids{1}, {}), w).shape() == Shape{3});
  CHECK(embedding(zeros({0}, i64), w).shape() == Shape{0, 3});
  // The padding row is returned as it is (only its gradient is zero).
  check_values(embedding(from_vector(Ids{1}), w, 1), {wv[3], wv[4], wv[5]}, 0, 0);
}

TEST_CASE("embedding: repeated ids accumulate, the padding row (also given from the end) gets exactly zero") {
  for (std::int64_t pad : {1, -4}) {
    Tensor w = rnd({5, 2}, -1, 1, 3);
    w.requires_grad_();
    const Tensor g = from_vector(Vec{1, 2, 3, 4, 5, 6, 7, 8}, {4, 2});
    sum(mul(embedding(from_vector(Ids{3, 1, 3, 0}), w, pad), g)).backward();
    check_values(w.grad(), {7, 8, 0, 0, 0, 0, 1 + 5, 2 + 6, 0, 0}, 0, 0);
  }
}

TEST_CASE("gradcheck embedding w.r.t. the weight: repeats, 2-D ids, padding_idx, float64") {
  const Tensor ids = from_vector(Ids{2, 0, 2, 5, 1, 2}, {2, 3});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return embedding(ids, in[0]); }, {rnd({6, 3})});
  // The padding row's gradient is zero by definition (not the numerical one), so the pad
  // here is a row the ids do not use; its exact zero is tested above.
  gradcheck_ok([&](const std::vector<Tensor>& in) { return embedding(ids, in[0], 3); }, {rnd({6, 3})});
  gradcheck_ok([&](const std::vector<Tensor>& in) { return embedding(from_vector(Ids{0}), in[0]); }, {rnd({1, 1})});
}

TEST_CASE("embedding: bad input names the op and the shapes") {
  const Tensor w = rnd({4, 2});
  xgtest::check_throws_msg<IndexError>([&] { embedding(from_vector(Ids{1, 4}), w); },
                                       {"embedding", "token id 4", "[4,2]"});
  xgtest::check_throws_msg<IndexError>([&] { embedding(from_vector(Ids{-1}), w); }, {"embedding", "-1"});
  xgtest::check_throws_msg<IndexError>([&] { embedding(from_vector(Ids{1}), w, 4); }, {"embedding", "padding_idx"});
  xgtest::check_throws_msg<IndexError>([&] { embedding(from_vector(Ids{1}), w, -5); }, {"embedding", "padding_idx"});
  xgtest::check_throws_msg<DtypeError>([&] { embedding(from_vector(Vec{1.0}), w); }, {"embedding"});
  xgtest::check_throws_msg<DtypeError>([&] { embedding(from_vector(Ids{1}), zeros({4, 2}, i64)); }, {"embedding"});
  xgtest::check_throws_msg<ShapeError>([&] { embedding(from_vector(Ids{1}), rnd({4, 2, 1})); },
                                       {"embedding", "[4,2,1]"});
}

// ids [2^40, 0] and weight [0, 2^30] are empty; the result [2^40, 0, 2^30] would be
// too, but its nonzero dims multiply to 2^70.
TEST_CASE("embedding and index_select: a result shape past the element limit is a ShapeError naming the op") {
  const Tensor ids = zeros({1LL << 40, 0}, i64);
  const Tensor w = zeros({0, 1LL << 30});
  xgtest::check_throws_msg<ShapeError>([&] { (void)embedding(ids, w); },
                                       {"embedding", "[1099511627776,0,1073741824]"});
  xgtest::throws_naming<ShapeError>([&] { (void)index_select(w, 0, ids); }, "index_select");
}
