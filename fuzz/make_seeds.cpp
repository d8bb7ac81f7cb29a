// Writes the seed corpus of the fuzz targets with xgrad's own writers:
//   ./build-fuzz/fuzz/make_seeds fuzz/corpus
// (fuzz/make_seeds.py adds numpy-written variants.) Seeds are small valid files of every
// kind each loader accepts; libFuzzer mutates them into the bad ones.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <xgrad/xgrad.hpp>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  const fs::path root = argc > 1 ? argv[1] : "fuzz/corpus";
  for (const char* d : {"npy", "npz", "checkpoint", "text"}) fs::create_directories(root / d);

  xg::manual_seed(3);
  const std::vector<std::pair<std::string, xg::Tensor>> tensors = {
      {"f32_2x3", xg::randn({2, 3})},
      {"f64_4", xg::randn({4}, xg::f64)},
      {"i64_0d", xg::from_vector(std::vector<std::int64_t>{7}, xg::Shape{})},
      {"f32_empty", xg::zeros({0, 3})},
      {"f32_1x1x2", xg::randn({1, 1, 2})},
  };
  for (const auto& [name, t] : tensors) {
    std::ofstream(root / "npy" / (name + ".npy"), std::ios::binary) << xg::npy_bytes(t);
  }
  xg::save_npz((root / "npz" / "two.npz").string(), {tensors[0], tensors[2]});
  xg::save_npz((root / "npz" / "all.npz").string(), tensors);
  xg::save_npz((root / "npz" / "empty.npz").string(), {});

  // The fuzz_checkpoint target loads into Linear(3, 2) + Adam + StepLR(2) + a generator.
  auto model = std::make_shared<xg::nn::Linear>(3, 2);
  xg::optim::Adam opt(model->parameters());
  xg::optim::StepLR sched(opt, 2);
  xg::Generator gen(5);
  xg::training::CheckpointParts parts{model.get(), &opt, &sched, &gen};
  xg::training::Extras extras;
  extras.set_string("vocab", "abc\n{}");
  extras.set_int("data.position", 12);
  xg::training::save_checkpoint((root / "checkpoint" / "fresh.npz").string(), parts, 0, extras);
  xg::sum(model->forward(xg::randn({4, 3}))).backward();
  opt.step();
  sched.step();
  xg::training::save_checkpoint((root / "checkpoint" / "stepped.npz").string(), parts, 1, extras);
  xg::training::save_checkpoint((root / "checkpoint" / "model_only.npz").string(), {model.get()}, 1);

  std::ofstream(root / "text" / "code.txt") << "int main() {\n  return 0;  // \"ok\"\n}\n";
  std::ofstream(root / "text" / "empty.txt") << "";
  return 0;
}
