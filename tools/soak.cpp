// Soak run: trains a small char LSTM for many steps (truncated BPTT with carried state,
// clipping, Adam, a checkpoint and a sampling pass every report) and prints the resident
// set size every `--every` steps as JSON lines. Memory must stay flat: a leak of one
// tensor per step shows up as steady growth.
//   ./build/tools/soak [--steps 10000] [--every 1000] [--model fused|loop]
// --model loop: the LSTM written from ops by hand (matmul on parameters, chunk, gates), the
// path of the storage cache, the packed parameters and ranged gradients.
// Exit status 1 when RSS grew more than --max-growth-mib between the first report and the
// last, or when the storage cache's live bytes or the system allocations grew (both are
// per step constants once the cache is warm).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>
#include <unistd.h>

#include <xgrad/xgrad.hpp>

namespace {

double rss_mib() {
  long pages = 0, resident = 0;
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  std::fclose(f);
  return static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

struct CharLM : xg::nn::Module {
  std::shared_ptr<xg::nn::Embedding> emb;
  std::shared_ptr<xg::nn::LSTM> lstm;
  std::shared_ptr<xg::nn::Linear> out;
  CharLM(std::int64_t V, std::int64_t E, std::int64_t H) {
    emb = register_module("emb", std::make_shared<xg::nn::Embedding>(V, E));
    lstm = register_module("lstm", std::make_shared<xg::nn::LSTM>(E, H));
    out = register_module("out", std::make_shared<xg::nn::Linear>(H, V));
  }
};

// One LSTM layer from public ops: xs [T, B, E] -> hs [T, B, H] and the final state.
struct OpsLSTM : xg::nn::Module {
  xg::Tensor w_ih, w_hh, b;
  OpsLSTM(std::int64_t E, std::int64_t H) {
    w_ih = register_parameter("w_ih", xg::uniform({E, 4 * H}, -0.1, 0.1));
    w_hh = register_parameter("w_hh", xg::uniform({H, 4 * H}, -0.1, 0.1));
    b = register_parameter("b", xg::zeros({4 * H}));
  }
  std::pair<xg::Tensor, xg::nn::LSTMState> forward(const xg::Tensor& xs, const xg::nn::LSTMState& s) const {
    xg::Tensor h = xg::select(s.h, 0, 0), c = xg::select(s.c, 0, 0);
    std::vector<xg::Tensor> outs;
    for (std::int64_t t = 0; t < xs.size(0); ++t) {
      const std::vector<xg::Tensor> g =
          xg::chunk(xg::add(xg::add(xg::matmul(xg::select(xs, 0, t), w_ih), xg::matmul(h, w_hh)), b), 4, 1);
      c = xg::add(xg::mul(xg::sigmoid(g[1]), c), xg::mul(xg::sigmoid(g[0]), xg::tanh(g[2])));
      h = xg::mul(xg::sigmoid(g[3]), xg::tanh(c));
      outs.push_back(h);
    }
    return {xg::stack(outs, 0), xg::nn::LSTMState{xg::unsqueeze(h, 0), xg::unsqueeze(c, 0)}};
  }
};

}  // namespace

int main(int argc, char** argv) {
  long steps = 10000, every = 1000;
  double max_growth = 8.0;
  std::string model = "fused";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--model")) model = argv[i + 1];
    else if (!std::strcmp(argv[i], "--every")) every = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--max-growth-mib")) max_growth = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: soak [--steps N] [--every N] [--max-growth-mib X] [--model fused|loop]\n");
      return 2;
    }
  }
  if (steps < 1 || every < 1 || (model != "fused" && model != "loop")) return 2;
  xg::set_num_threads(1);
  constexpr std::int64_t V = 64, E = 16, H = 64, B = 8, T = 32;
  xg::manual_seed(1);
  CharLM lm(V, E, H);
  std::shared_ptr<OpsLSTM> ops;
  if (model == "loop") ops = lm.register_module("ops", std::make_shared<OpsLSTM>(E, H));
  xg::optim::Adam opt(lm.parameters(), xg::optim::AdamOptions{.lr = 2e-3});
  // A fixed pseudo-text: a repeating pattern with noise, so the loss really falls.
  xg::Generator data_gen(9);
  auto next_batch = [&](std::int64_t offset) {
    std::vector<std::int64_t> v(static_cast<std::size_t>((T + 1) * B));
    for (std::int64_t t = 0; t <= T; ++t)
      for (std::int64_t b = 0; b < B; ++b)
        v[static_cast<std::size_t>(t * B + b)] =
            data_gen.uniform() < 0.1 ? data_gen.randint(0, V) : (offset + t + 3 * b) % 17;
    return xg::from_vector(v, {T + 1, B});
  };
  const std::string ckpt = (std::filesystem::temp_directory_path() / ("xgrad_soak_" + std::to_string(::getpid()) + ".npz")).string();

  xg::nn::LSTMState state{xg::zeros({1, B, H}), xg::zeros({1, B, H})};
  double first_rss = -1, last_rss = -1, peak = 0;
  std::int64_t first_live = -1, last_live = -1, later_system = 0;
  for (long step = 1; step <= steps; ++step) {
    double loss_value = 0;
    {  // one step; its graph and tensors end with the scope
      const xg::Tensor tok = next_batch(step * T);
      const xg::Tensor x = lm.emb->forward(xg::slice(tok, 0, 0, T));
      xg::Tensor hs;
      xg::nn::LSTMState next;
      if (ops) {
        std::tie(hs, next) = ops->forward(x, state);
      } else {
        auto r = (*lm.lstm)(x, state);
        hs = r.output;
        next = r.state;
      }
      const xg::Tensor loss = xg::cross_entropy(xg::reshape(lm.out->forward(hs), {T * B, V}),
                                                xg::reshape(xg::slice(tok, 0, 1, T + 1), {T * B}));
      loss.backward();
      xg::optim::clip_grad_norm(lm, 5.0);
      opt.step();
      opt.zero_grad();
      state = next.detach();
      loss_value = loss.item();
    }
    if (step % every == 0) {
      xg::training::Extras extras;
      extras.set_int("step", step);
      xg::training::save_checkpoint(ckpt, {&lm, &opt, nullptr, &xg::default_generator()}, step, extras);
      (void)xg::training::load_checkpoint(ckpt, {&lm, &opt, nullptr, &xg::default_generator()});
      {  // sample 64 characters, recording off
        xg::NoGradGuard no_grad;
        xg::nn::LSTMState s{xg::zeros({1, 1, H}), xg::zeros({1, 1, H})};
        xg::Tensor c = xg::from_vector(std::vector<std::int64_t>{1}, {1, 1});
        for (int i = 0; i < 64; ++i) {
          auto [h, ns] = (*lm.lstm)(lm.emb->forward(c), s);
          s = ns;
          const xg::Tensor probs = xg::softmax(xg::reshape(lm.out->forward(h), {1, V}), 1);
          const std::vector<double> p = probs.to_vector<double>();
          double u = xg::default_generator().uniform();
          std::int64_t k = 0;
          while (k + 1 < V && u >= p[static_cast<std::size_t>(k)]) u -= p[static_cast<std::size_t>(k++)];
          c = xg::from_vector(std::vector<std::int64_t>{k}, {1, 1});
        }
      }
      const double rss = rss_mib();
      const xg::MemoryStats m = xg::memory_stats();
      if (first_rss < 0) {
        first_rss = rss;
        first_live = m.allocated_bytes;
      } else {
        later_system += m.system_allocations;
      }
      last_rss = rss;
      last_live = m.allocated_bytes;
      peak = std::max(peak, rss);
      std::printf("{\"step\": %ld, \"loss\": %.4f, \"rss_mib\": %.2f, \"tape_size\": %zu, \"live_bytes\": %lld, "
                  "\"cached_bytes\": %lld, \"packed_bytes\": %lld, \"storages\": %lld, \"system_allocations\": %lld}\n",
                  step, loss_value, rss, xg::tape_size(), static_cast<long long>(m.allocated_bytes),
                  static_cast<long long>(m.cached_bytes), static_cast<long long>(m.packed_bytes),
                  static_cast<long long>(m.requests), static_cast<long long>(m.system_allocations));
      xg::reset_memory_stats();
      std::fflush(stdout);
    }
  }
  std::remove(ckpt.c_str());
  const double growth = last_rss - first_rss;
  std::printf("{\"summary\": \"soak\", \"model\": \"%s\", \"steps\": %ld, \"rss_first_mib\": %.2f, "
              "\"rss_last_mib\": %.2f, \"rss_peak_mib\": %.2f, \"growth_mib\": %.2f, \"live_bytes_growth\": %lld, "
              "\"system_allocations_after_first_report\": %lld}\n",
              model.c_str(), steps, first_rss, last_rss, peak, growth, static_cast<long long>(last_live - first_live),
              static_cast<long long>(later_system));
  return growth > max_growth || last_live > first_live || later_system > 0 ? 1 : 0;
}
