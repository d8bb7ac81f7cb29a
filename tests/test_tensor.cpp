#include "helpers.hpp"

using namespace xg;

TEST_CASE("factories: shape, dtype, values") {
  Tensor z = zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == f32);
  CHECK(z.numel() == 6);
  xgtest::check_values(eye(2, f64), {1, 0, 0, 1});
}
