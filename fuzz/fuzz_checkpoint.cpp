// Checkpoints: read_checkpoint_info and load_checkpoint into a small model, optimizer,
// scheduler and generator must load or throw xg::Error, and a refused load must leave
// the model as it was.
#include <cstdint>
#include <cstring>
#include <memory>

#include <xgrad/xgrad.hpp>

#include "fuzz_common.hpp"

namespace {

struct Parts {
  std::shared_ptr<xg::nn::Linear> model;
  std::unique_ptr<xg::optim::Adam> opt;
  std::unique_ptr<xg::optim::StepLR> sched;
  xg::Generator gen{1};
  Parts() {
    model = std::make_shared<xg::nn::Linear>(3, 2);
    opt = std::make_unique<xg::optim::Adam>(model->parameters());
    sched = std::make_unique<xg::optim::StepLR>(*opt, 2);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = xgfuzz::write_input("ckpt", data, size);
  try {
    auto info = xg::training::read_checkpoint_info(path);
    for (const auto& [name, t] : info.extras.entries()) (void)xg::npy_bytes(t);
  } catch (const xg::Error&) {
  }
  static Parts parts;
  const xg::Tensor before = parts.model->weight.clone();
  try {
    (void)xg::training::load_checkpoint(path, {parts.model.get(), parts.opt.get(), parts.sched.get(), &parts.gen});
    parts.opt->step();  // whatever loaded must be usable
  } catch (const xg::Error&) {
    const xg::Tensor after = parts.model->weight;
    if (std::memcmp(before.data_ptr(), after.data_ptr(), 6 * sizeof(float)) != 0) __builtin_trap();
  }
  return 0;
}
