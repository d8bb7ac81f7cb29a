#include <xgrad/xtensor.hpp>

#include <type_traits>

#include <xtensor/xbuilder.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "helpers.hpp"

using namespace xg;

TEST_CASE("xtensor: to_xarray copies values and shape for every dtype") {
  Tensor f = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  xt::xarray<float> a = to_xarray<float>(f);
  REQUIRE(a.dimension() == 2);
  CHECK(a.shape()[0] == 2);
  CHECK(a.shape()[1] == 3);
  CHECK(a(0, 0) == 1.f);
  CHECK(a(1, 2) == 6.f);
  // A copy: changing it leaves the tensor alone.
  a(0, 0) = 100.f;
  CHECK(f.to_vector<float>()[0] == 1.f);

  xt::xarray<std::int64_t> i = to_xarray<std::int64_t>(from_vector(std::vector<std::int64_t>{-3, 9}));
  CHECK(i.size() == 2);
  CHECK(i(1) == 9);

  xt::xarray<double> s = to_xarray<double>(scalar(2.5, f64));
  CHECK(s.dimension() == 0);
  CHECK(s() == 2.5);

  xt::xarray<double> e = to_xarray<double>(zeros({0, 4}, f64));
  CHECK(e.size() == 0);
  CHECK(e.shape()[1] == 4);
}

TEST_CASE("xtensor: dtype mismatch is a DtypeError, undefined a StateError") {
  Tensor f = ones({2}, f32);
  CHECK_THROWS_WITH_AS(to_xarray<double>(f), doctest::Contains("to_xarray<float64>: the tensor is float32"),
                       DtypeError);
  CHECK_THROWS_AS(as_xtensor<std::int64_t>(f), DtypeError);
  CHECK_THROWS_AS(to_xarray<float>(Tensor()), StateError);
  Tensor u;
  CHECK_THROWS_AS(as_xtensor<float>(u), StateError);
}

TEST_CASE("xtensor: as_xtensor is a view that aliases the tensor's storage") {
  Tensor t = zeros({2, 3}, f64);
  auto v = as_xtensor<double>(t);
  CHECK(v.dimension() == 2);
  CHECK(v.data() == t.data<double>());
  v(1, 2) = 7.0;  // writes into t
  xgtest::check_values(t, {0, 0, 0, 0, 0, 7});
  t.data<double>()[0] = -1.0;  // and t's writes show through
  CHECK(v(0, 0) == -1.0);
  // xtensor expressions work on the view.
  CHECK(xt::sum(v)() == doctest::Approx(6.0));
  xt::noalias(v) = v * 2.0;
  xgtest::check_values(t, {-2, 0, 0, 0, 0, 14});
}

TEST_CASE("xtensor: an as_xtensor view keeps the storage alive") {
  auto v = as_xtensor<float>(from_vector(std::vector<float>{4, 5, 6}));
  // The temporary tensor is gone; the view still reads its values.
  CHECK(v.size() == 3);
  CHECK(v(2) == 6.f);
  static_assert(std::is_const_v<std::remove_reference_t<decltype(*v.data())>>,
                "a view of a const Tensor is read-only");
}

TEST_CASE("xtensor: from_xtensor evaluates expressions into a tensor with the matching dtype") {
  Tensor d = from_xtensor(xt::arange<double>(6.0));
  CHECK(d.dtype() == f64);
  CHECK(d.shape() == Shape{6});
  xgtest::check_values(d, {0, 1, 2, 3, 4, 5});

  xt::xarray<float> a = {{1.f, 2.f}, {3.f, 4.f}};
  Tensor f = from_xtensor(a * a + 1.f);
  CHECK(f.dtype() == f32);
  CHECK(f.shape() == Shape{2, 2});
  xgtest::check_values(f, {2, 5, 10, 17});
  // A copy: a later change to `a` does not show.
  a(0, 0) = 50.f;
  CHECK(f.to_vector<float>()[0] == 2.f);
  CHECK(f.is_leaf());
  CHECK_FALSE(f.requires_grad());

  xt::xtensor<std::int64_t, 3> i = xt::zeros<std::int64_t>({2, 1, 3});
  i(1, 0, 2) = 9;
  Tensor ti = from_xtensor(i);
  CHECK(ti.dtype() == i64);
  CHECK(ti.shape() == Shape{2, 1, 3});
  CHECK(ti.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 0, 0, 0, 0, 9});

  // A non-contiguous view (a column) becomes a contiguous tensor.
  xt::xarray<double> m = {{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}};
  Tensor col = from_xtensor(xt::view(m, xt::all(), 1));
  CHECK(col.shape() == Shape{2});
  xgtest::check_values(col, {2, 5});

  // 0-d and empty.
  Tensor s = from_xtensor(xt::xarray<double>(3.5));
  CHECK(s.ndim() == 0);
  CHECK(s.item() == 3.5);
  Tensor e = from_xtensor(xt::xarray<float>::from_shape({0, 2}));
  CHECK(e.shape() == Shape{0, 2});
}

TEST_CASE("xtensor: more than 8 dimensions is a ShapeError") {
  xt::xarray<double> a = xt::zeros<double>({1, 1, 1, 1, 1, 1, 1, 1, 2});
  CHECK_THROWS_WITH_AS(from_xtensor(a), doctest::Contains("from_xtensor"), ShapeError);
}

TEST_CASE("xtensor: round trips tensor -> xarray -> tensor") {
  Tensor x = xgtest::rnd({3, 4, 2});
  Tensor y = from_xtensor(to_xarray<double>(x));
  CHECK(y.shape() == x.shape());
  CHECK(y.to_vector<double>() == x.to_vector<double>());
  CHECK_FALSE(y.is_same(x));
  CHECK(y.data_ptr() != x.data_ptr());
}
