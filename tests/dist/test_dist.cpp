// Data-parallel training under MPI: run by `mpirun -np 2` (tests/meson.build). Every rank
// runs every test case; each case that involves communication is collective.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <unistd.h>
#include <vector>

#include <xgrad/dist/dist.hpp>
#include <xgrad/xgrad.hpp>

#include "../helpers.hpp"

namespace dist = xg::dist;
using xg::Tensor;

namespace {

constexpr std::int64_t V = 9, E = 5, H = 8, T = 6, B = 3;  // B: sequences per rank

struct LM : xg::nn::Module {
  std::shared_ptr<xg::nn::Embedding> emb;
  std::shared_ptr<xg::nn::LSTM> lstm;
  std::shared_ptr<xg::nn::Linear> out;
  LM() {
    emb = register_module("emb", std::make_shared<xg::nn::Embedding>(V, E));
    lstm = register_module("lstm", std::make_shared<xg::nn::LSTM>(E, H));
    out = register_module("out", std::make_shared<xg::nn::Linear>(H, V));
  }
  // tokens [T + 1, n]: mean next-token cross-entropy.
  Tensor loss(const Tensor& tok) const {
    const std::int64_t n = tok.size(1);
    auto [hs, st] = (*lstm)(emb->forward(xg::slice(tok, 0, 0, T)));
    return xg::cross_entropy(xg::reshape(out->forward(hs), {T * n, V}),
                             xg::reshape(xg::slice(tok, 0, 1, T + 1), {T * n}));
  }
};

// The global batch of a step, [T + 1, 2B], the same on every rank: columns [rB, rB + B)
// belong to rank r.
Tensor global_batch(int step) {
  xg::Generator g(1000 + static_cast<std::uint64_t>(step));
  std::vector<std::int64_t> v(static_cast<std::size_t>((T + 1) * 2 * B));
  for (auto& x : v) x = g.randint(0, V);
  return xg::from_vector(v, {T + 1, 2 * B});
}
Tensor half(const Tensor& batch, int r) { return xg::slice(batch, 1, r * B, (r + 1) * B); }

std::vector<std::vector<unsigned char>> bytes_of(const xg::nn::Module& m) {
  std::vector<std::vector<unsigned char>> out;
  for (const auto& [n, t] : m.state_dict()) {
    const auto* p = static_cast<const unsigned char*>(t.data_ptr());
    out.emplace_back(p, p + t.numel() * static_cast<std::int64_t>(xg::dtype_size(t.dtype())));
  }
  return out;
}

// Data-parallel: each rank its half, gradients averaged by the reducer, clipped after.
struct DistRun {
  std::unique_ptr<LM> lm;
  std::unique_ptr<xg::optim::Adam> opt;
  std::unique_ptr<dist::GradientReducer> reducer;
  explicit DistRun(std::uint64_t seed, std::size_t bucket_bytes = std::size_t{25} << 20) {
    xg::manual_seed(seed + static_cast<std::uint64_t>(dist::rank()));  // replicas start apart...
    lm = std::make_unique<LM>();
    dist::broadcast_parameters(*lm);  // ...and rank 0's weights reach everyone
    opt = std::make_unique<xg::optim::Adam>(lm->parameters(), xg::optim::AdamOptions{.lr = 0.05});
    reducer = std::make_unique<dist::GradientReducer>(*lm, dist::ReducerOptions{.bucket_bytes = bucket_bytes});
  }
  double step(int s) {
    const Tensor loss = lm->loss(half(global_batch(s), dist::rank()));
    loss.backward();
    reducer->allreduce();
    xg::optim::clip_grad_norm(*lm, 0.5);
    opt->step();
    opt->zero_grad();
    return dist::allreduce_sum(loss.item()) / dist::world_size();
  }
};

}  // namespace

TEST_CASE("dist: the world has two ranks and rank() / world_size() say so") {
  REQUIRE(dist::is_initialized());
  CHECK(dist::world_size() == 2);
  CHECK((dist::rank() == 0 || dist::rank() == 1));
  CHECK(dist::allreduce_sum(1.0 + dist::rank()) == 3.0);
}

TEST_CASE("dist: data-parallel steps are bit-identical to a single process averaging the two half-batch gradients") {
  constexpr int steps = 6;
  for (std::size_t bucket : {std::size_t{25} << 20, std::size_t{200}}) {  // one bucket; many small ones
    CAPTURE(bucket);
    DistRun run(7, bucket);
    if (bucket == 200) CHECK(run.reducer->num_buckets() > 3);

    // The reference, in this process alone: rank 0's initial weights (seed 7), both halves.
    xg::manual_seed(7);
    LM ref;
    xg::optim::Adam ref_opt(ref.parameters(), xg::optim::AdamOptions{.lr = 0.05});
    for (int s = 0; s < steps; ++s) {
      const Tensor batch = global_batch(s);
      std::vector<Tensor> g0;
      ref.loss(half(batch, 0)).backward();
      for (const Tensor& p : ref.parameters()) g0.push_back(p.grad().clone());
      ref_opt.zero_grad();
      ref.loss(half(batch, 1)).backward();
      std::size_t i = 0;
      for (Tensor p : ref.parameters()) {
        Tensor g = p.grad();
        float* d = g.data<float>();
        const float* a = g0[i++].data<float>();
        for (std::int64_t k = 0; k < g.numel(); ++k) d[k] = (a[k] + d[k]) / 2.0f;  // (g0 + g1) / W
      }
      xg::optim::clip_grad_norm(ref, 0.5);
      ref_opt.step();
      ref_opt.zero_grad();

      run.step(s);
    }
    CHECK(bytes_of(*run.lm) == bytes_of(ref));
    CHECK(bytes_of(*run.lm)[1] != std::vector<unsigned char>{});  // compared something
    CHECK_NOTHROW(dist::verify_replicas(*run.lm));
  }
}

TEST_CASE("dist: resume under MPI gives the same result as no interruption") {
  constexpr int N = 4, M = 3;
  const std::string path = (std::filesystem::temp_directory_path() / "xgrad_dist_resume.npz").string();
  DistRun straight(21);
  std::vector<double> losses;
  for (int s = 0; s < N + M; ++s) losses.push_back(straight.step(s));

  {
    DistRun first(21);
    for (int s = 0; s < N; ++s) CHECK(first.step(s) == losses[static_cast<std::size_t>(s)]);
    xg::training::Extras ex;
    ex.set_int("next_step", N);
    dist::save_checkpoint(path, {first.lm.get(), first.opt.get(), nullptr, nullptr}, N, ex);
  }
  DistRun resumed(99);  // other weights everywhere
  auto got = xg::training::load_checkpoint(path, {resumed.lm.get(), resumed.opt.get(), nullptr, nullptr});
  dist::broadcast_parameters(*resumed.lm);
  CHECK(got.step == N);
  for (int s = static_cast<int>(got.extras.get_int("next_step")); s < N + M; ++s) {
    CHECK(resumed.step(s) == losses[static_cast<std::size_t>(s)]);
  }
  CHECK(bytes_of(*resumed.lm) == bytes_of(*straight.lm));
  CHECK(dist::parameter_checksum(*resumed.lm) == dist::parameter_checksum(*straight.lm));
  dist::barrier();
  if (dist::rank() == 0) std::filesystem::remove(path);
}

TEST_CASE("dist: replicas that drift apart are caught by verify_replicas on every rank") {
  DistRun run(3);
  CHECK_NOTHROW(dist::verify_replicas(*run.lm));
  if (dist::rank() == 1) {
    Tensor w = run.lm->out->weight;
    w.data<float>()[0] += 1.0f;
  }
  const std::string msg = xgtest::error_of<xg::StateError>([&] { dist::verify_replicas(*run.lm); });
  CHECK(xgtest::has(msg, "rank 1"));
}

TEST_CASE("dist: mismatched broadcasts and failing saves are errors on every rank, never a hang") {
  Tensor t = xg::zeros({dist::rank() == 0 ? 3 : 4});
  CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { dist::broadcast(t); }), "dist::broadcast"));
  Tensor u = xg::full({2}, 1.0 + dist::rank());
  dist::broadcast(u, 1);
  CHECK(u.to_vector<double>() == std::vector<double>{2.0, 2.0});
  CHECK_THROWS_AS(dist::broadcast(u, 5), xg::IndexError);

  LM lm;
  const std::string msg = xgtest::error_of<xg::StateError>(
      [&] { dist::save_checkpoint("/nonexistent-dir/x/ckpt.npz", {&lm}, 0); });
  CHECK(xgtest::has(msg, "rank 0"));
}

TEST_CASE("dist: shard gives disjoint shares that cover every item, the same on every rank") {
  for (std::int64_t n : {0, 1, 7, 10, 101}) {
    std::vector<int> seen(static_cast<std::size_t>(n), 0);
    for (int r = 0; r < 3; ++r) {
      const auto mine = dist::shard(n, 5, r, 3);
      CHECK(static_cast<std::int64_t>(mine.size()) >= n / 3);
      CHECK(static_cast<std::int64_t>(mine.size()) <= n / 3 + 1);
      for (auto i : mine) seen[static_cast<std::size_t>(i)]++;
    }
    for (int c : seen) CHECK(c == 1);
  }
  CHECK(dist::shard(50, 1, 0, 2) != dist::shard(50, 2, 0, 2));  // the seed reshuffles
  CHECK(dist::shard(50, 1) == dist::shard(50, 1, dist::rank(), 2));
  CHECK_THROWS_AS(dist::shard(10, 1, 2, 2), xg::Error);
  CHECK_THROWS_AS(dist::shard(10, 1, 0, 0), xg::Error);
  CHECK_THROWS_AS(dist::GradientReducer(std::vector<Tensor>{}), xg::Error);
}

int main(int argc, char** argv) {
  xg::dist::init(&argc, &argv);
  xg::set_num_threads(1);
  doctest::Context ctx(argc, argv);
  const int rc = ctx.run();
  // Every rank's verdict decides the exit status of each (mpirun reports the first failure).
  const double failed = xg::dist::allreduce_sum(rc != 0 ? 1.0 : 0.0);
  xg::dist::finalize();
  return failed > 0 ? 1 : 0;
}
