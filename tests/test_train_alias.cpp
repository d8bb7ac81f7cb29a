// The old namespace spelling xg::train, opt-in for one release.
#define XGRAD_TRAIN_NAMESPACE_ALIAS
#include <type_traits>

#include "helpers.hpp"

static_assert(std::is_same_v<xg::train::ProgressOptions, xg::training::ProgressOptions>);
static_assert(std::is_same_v<xg::train::CsvLog, xg::training::CsvLog>);

TEST_CASE("namespace: XGRAD_TRAIN_NAMESPACE_ALIAS makes xg::train name xg::training") {
  const xg::Tensor ids = xg::arange(9.0, xg::i64);
  const xg::Tensor rows = xg::train::batchify(ids, 2);  // [2, 4]: the odd last token dropped
  CHECK(rows.shape() == xg::Shape{2, 4});
  CHECK(rows.to_vector<std::int64_t>() == xg::training::batchify(ids, 2).to_vector<std::int64_t>());
}
