// A user program that says `using namespace xg;` may name its own function train(): the
// training utilities live in xg::training (with the old xg::train, every call below was
// ambiguous and this file did not compile).
#include <string>

#include "helpers.hpp"

using namespace xg;

namespace {
int train_calls = 0;
}  // namespace

void train(int epochs) { train_calls += epochs; }
int train(Tensor& w, double lr) {
  w = w - lr;
  return 1;
}

TEST_CASE("namespace: a user's train() beside using namespace xg") {
  train(3);
  CHECK(train_calls == 3);
  Tensor w = ones({2}, f64);
  CHECK(train(w, 0.25) == 1);
  xgtest::check_values(w, {0.75, 0.75});
  // The utilities are reached as training::... in such a program.
  training::ProgressOptions opts;
  CHECK(opts.label == "train");
}
