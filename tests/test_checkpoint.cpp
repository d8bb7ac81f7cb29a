// Checkpoints: "nothing lost". A run interrupted by save + load into fresh objects must
// continue bit for bit as if never stopped; a crash mid-save leaves the previous file; a
// checkpoint that does not fit is refused without touching anything.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <xgrad/xgrad.hpp>

#include "helpers.hpp"
#include "run_in_child.hpp"

namespace fs = std::filesystem;
using xg::Tensor;
using xg::training::CheckpointParts;
using xg::training::Extras;
using xg::training::load_checkpoint;
using xg::training::save_checkpoint;

namespace {

// A char-LM-shaped model with dropout, so training also consumes the default generator.
struct Net : xg::nn::Module {
  std::shared_ptr<xg::nn::Embedding> emb;
  std::shared_ptr<xg::nn::LSTM> lstm;
  std::shared_ptr<xg::nn::Dropout> drop;
  std::shared_ptr<xg::nn::Linear> out;

  Net(std::int64_t V, std::int64_t H) {
    emb = register_module("emb", std::make_shared<xg::nn::Embedding>(V, 8));
    xg::nn::LSTMOptions o;
    o.input_size = 8;
    o.hidden_size = H;
    o.num_layers = 2;
    o.dropout = 0.2;
    lstm = register_module("lstm", std::make_shared<xg::nn::LSTM>(o));
    drop = register_module("drop", std::make_shared<xg::nn::Dropout>(0.1));
    out = register_module("out", std::make_shared<xg::nn::Linear>(H, V));
  }
};

constexpr std::int64_t V = 11, B = 3, T = 5;

// One training run: model, Adam, warmup + cosine schedule, carried LSTM state, step count.
// The data of every step is drawn from the default generator, like a shuffling loader.
struct Run {
  std::int64_t H;
  std::shared_ptr<Net> net;
  std::unique_ptr<xg::optim::Adam> opt;
  std::unique_ptr<xg::optim::ChainedScheduler> sched;
  xg::nn::LSTMState state;
  std::int64_t step = 0;

  explicit Run(std::uint64_t seed, std::int64_t hidden = 6) : H(hidden) {
    xg::manual_seed(seed);
    net = std::make_shared<Net>(V, H);
    xg::optim::AdamOptions ao;
    ao.lr = 0.02;
    ao.weight_decay = 1e-3;
    ao.amsgrad = true;
    opt = std::make_unique<xg::optim::Adam>(net->parameters(), ao);
    sched = std::make_unique<xg::optim::ChainedScheduler>(
        xg::optim::chain(xg::optim::LinearWarmup(*opt, 3, 0.1), xg::optim::CosineAnnealingLR(*opt, 20, 1e-3)));
    state = {xg::zeros({2, B, H}), xg::zeros({2, B, H})};
  }

  CheckpointParts parts() { return {net.get(), opt.get(), sched.get(), &xg::default_generator()}; }

  double train_step() {
    const Tensor tok = xg::randint(0, V, {T + 1, B});
    const Tensor x = xg::slice(tok, 0, 0, T), y = xg::slice(tok, 0, 1, T + 1);
    auto [hs, next] = (*net->lstm)(net->emb->forward(x), state);
    const Tensor logits = net->out->forward(net->drop->forward(hs));  // [T, B, V]
    const Tensor loss = xg::cross_entropy(xg::reshape(logits, {T * B, V}), xg::reshape(y, {T * B}));
    loss.backward();
    xg::optim::clip_grad_norm(*net, 1.0);
    opt->step();
    opt->zero_grad();
    sched->step();
    state = next.detach();
    ++step;
    return loss.item();
  }

  void save(const std::string& path) {
    Extras ex;
    ex.set_tensor("state.h", state.h);
    ex.set_tensor("state.c", state.c);
    ex.set_string("vocab", "abcdefghijk");
    save_checkpoint(path, parts(), step, ex);
  }
  void load(const std::string& path) {
    auto got = load_checkpoint(path, parts());
    step = got.step;
    state = {got.extras.get_tensor("state.h"), got.extras.get_tensor("state.c")};
  }
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), static_cast<std::size_t>(a.numel()) * xg::dtype_size(a.dtype())) == 0;
}

// Every entry equal bit for bit, and the same names in the same order.
void check_same_state(const xg::nn::StateDict& a, const xg::nn::StateDict& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(same_bits(a[i].second, b[i].second));
  }
}

xg::nn::StateDict snapshot(const xg::nn::StateDict& d) {
  xg::nn::StateDict out;
  for (const auto& [n, t] : d) out.emplace_back(n, t.clone());
  return out;
}

using xgtest::TempDir;

}  // namespace

TEST_CASE("checkpoint: N + M steps straight equals N steps, save, load into fresh objects, M steps") {
  TempDir dir;
  const std::string path = dir.file("ckpt.npz");
  constexpr int N = 7, M = 6;

  Run straight(42);
  std::vector<double> straight_losses;
  for (int i = 0; i < N + M; ++i) straight_losses.push_back(straight.train_step());
  const auto straight_gen = xg::default_generator().state();
  const auto straight_model = snapshot(straight.net->state_dict());

  Run first(42);
  for (int i = 0; i < N; ++i) CHECK(first.train_step() == straight_losses[static_cast<std::size_t>(i)]);
  first.save(path);

  // A different seed: every parameter, the generator and the schedule start elsewhere.
  Run resumed(1234);
  CHECK_FALSE(same_bits(resumed.net->parameters()[0], straight.net->parameters()[0]));
  resumed.load(path);
  CHECK(resumed.step == N);
  for (int i = 0; i < M; ++i) {
    CHECK(resumed.train_step() == straight_losses[static_cast<std::size_t>(N + i)]);  // exact, not approx
  }
  check_same_state(resumed.net->state_dict(), straight_model);
  check_same_state(resumed.opt->state_dict(), straight.opt->state_dict());
  check_same_state(resumed.sched->state_dict(), straight.sched->state_dict());
  CHECK(resumed.opt->get_lr(0) == straight.opt->get_lr(0));
  CHECK(xg::default_generator().state() == straight_gen);
}

TEST_CASE("checkpoint: the generator, step and extras come back exactly") {
  TempDir dir;
  const std::string path = dir.file("g.npz");
  xg::Generator g(99);
  (void)g.normal();  // leaves a cached second normal: part of the state
  Extras ex;
  ex.set_int("data.position", -77);
  ex.set_double("best_bpc", 1.25);
  std::string bytes = "tab\there";
  bytes.push_back('\0');
  bytes.push_back(static_cast<char>(255));
  ex.set_string("vocab", bytes);
  ex.set_string("empty", "");
  save_checkpoint(path, {nullptr, nullptr, nullptr, &g}, 123456789012LL, ex);
  const double next_normal = g.normal();
  const std::uint64_t next_u = g.next_u64();

  xg::Generator h(1);
  auto got = load_checkpoint(path, {nullptr, nullptr, nullptr, &h});
  CHECK(got.step == 123456789012LL);
  CHECK(h.normal() == next_normal);
  CHECK(h.next_u64() == next_u);
  CHECK(got.extras.get_int("data.position") == -77);
  CHECK(got.extras.get_double("best_bpc") == 1.25);
  CHECK(got.extras.get_string("vocab") == bytes);
  CHECK(got.extras.get_string("empty").empty());
  CHECK(xg::training::read_checkpoint_info(path).extras.get_string("vocab") == bytes);

  // numpy can read it: the entries are plain .npy arrays under documented names.
  std::vector<std::string> names;
  for (const auto& [n, t] : xg::load_npz(path)) names.push_back(n);
  CHECK(names == std::vector<std::string>{"xgrad.checkpoint", "step", "generator.state", "extra.data.position",
                                          "extra.best_bpc", "extra.vocab", "extra.empty"});
}

namespace {
[[noreturn]] void die_before_rename(const std::string&) { ::_exit(42); }
void fail_before_rename(const std::string&) { throw xg::IOError("injected failure before rename"); }
}  // namespace

TEST_CASE("checkpoint: a save that dies between writing and renaming leaves the previous checkpoint") {
  TempDir dir;
  const std::string path = dir.file("ckpt.npz");
  Run run(5);
  for (int i = 0; i < 3; ++i) run.train_step();
  run.save(path);
  const auto saved_model = snapshot(run.net->state_dict());
  const auto saved_opt = snapshot(run.opt->state_dict());
  for (int i = 0; i < 3; ++i) run.train_step();  // the live run moves on

  // The process really dies (no destructors, no cleanup) at the worst moment.
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    xg::detail::set_save_npz_hook(&die_before_rename);
    run.save(path);
    ::_exit(3);  // not reached when the hook fires
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 42);
  int temps = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) temps += e.path().filename().string().find(".tmp.") != std::string::npos;
  CHECK(temps == 1);  // the complete new file, written but never renamed

  Run fresh(77);
  fresh.load(path);
  CHECK(fresh.step == 3);
  check_same_state(fresh.net->state_dict(), saved_model);
  check_same_state(fresh.opt->state_dict(), saved_opt);

  // In-process failure at the same point: an IOError, the temp file removed, the old file intact.
  xg::detail::set_save_npz_hook(&fail_before_rename);
  CHECK_THROWS_AS(run.save(dir.file("other.npz")), xg::IOError);
  xg::detail::set_save_npz_hook(nullptr);
  CHECK_FALSE(fs::exists(dir.file("other.npz")));
  int left = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) left += e.path().filename().string().rfind("other.npz", 0) == 0;
  CHECK(left == 0);
  Run again(8);
  again.load(path);
  check_same_state(again.net->state_dict(), saved_model);
}

TEST_CASE("checkpoint: loading into a mismatched model or optimizer is an error and changes nothing") {
  TempDir dir;
  const std::string path = dir.file("ckpt.npz");
  Run src(3);
  for (int i = 0; i < 2; ++i) src.train_step();
  src.save(path);

  auto unchanged = [](Run& r, const std::function<void()>& load, const char* expect) {
    const auto model = snapshot(r.net->state_dict());
    const auto opt = snapshot(r.opt->state_dict());
    const auto sched = snapshot(r.sched->state_dict());
    const auto gen = xg::default_generator().state();
    const std::string msg = xgtest::error_of<xg::StateError>(load);
    CAPTURE(msg);
    CHECK(xgtest::has(msg, "load_checkpoint"));
    CHECK(xgtest::has(msg, expect));
    check_same_state(r.net->state_dict(), model);
    check_same_state(r.opt->state_dict(), opt);
    check_same_state(r.sched->state_dict(), sched);
    CHECK(xg::default_generator().state() == gen);
  };

  SUBCASE("another model shape") {
    Run other(9, 7);
    unchanged(other, [&] { other.load(path); }, "lstm.weight_hh_l0");
  }
  SUBCASE("another optimizer type: the model, already loaded, is rolled back") {
    Run other(9);
    other.train_step();
    auto sgd = std::make_unique<xg::optim::SGD>(other.net->parameters(), xg::optim::SGDOptions{.lr = 0.1});
    const auto model = snapshot(other.net->state_dict());
    const std::string msg = xgtest::error_of<xg::StateError>(
        [&] { load_checkpoint(path, {other.net.get(), sgd.get(), nullptr, nullptr}); });
    CAPTURE(msg);
    CHECK(xgtest::has(msg, "optimizer"));
    check_same_state(other.net->state_dict(), model);
  }
  SUBCASE("an optimizer over other parameters") {
    Run other(9);
    xg::optim::Adam partial(std::vector<Tensor>{other.net->out->parameters()});
    const auto model = snapshot(other.net->state_dict());
    const std::string msg = xgtest::error_of<xg::StateError>(
        [&] { load_checkpoint(path, {other.net.get(), &partial, nullptr, nullptr}); });
    CHECK(xgtest::has(msg, "optimizer"));
    check_same_state(other.net->state_dict(), model);
  }
  SUBCASE("a part the file does not have") {
    const std::string bare = dir.file("bare.npz");
    save_checkpoint(bare, {src.net.get(), nullptr, nullptr, nullptr}, 2);
    Run other(9);
    unchanged(other, [&] { other.load(bare); }, "no optimizer, scheduler, generator state");
  }
  SUBCASE("a scheduler of another kind") {
    Run other(9);
    xg::optim::StepLR step(*other.opt, 5);
    unchanged(other, [&] { load_checkpoint(path, {other.net.get(), other.opt.get(), &step, nullptr}); }, "scheduler");
  }
  SUBCASE("a file that is not a checkpoint") {
    const std::string plain = dir.file("plain.npz");
    src.net->save(plain);
    Run other(9);
    unchanged(other, [&] { other.load(plain); }, "not an xgrad checkpoint");
  }
}

TEST_CASE("checkpoint: bad input") {
  TempDir dir;
  SUBCASE("nothing to save") {
    const std::string msg = xgtest::error_of<xg::Error>([&] { save_checkpoint(dir.file("x.npz"), {}, 0); });
    CHECK(xgtest::has(msg, "nothing to save"));
    CHECK_FALSE(fs::exists(dir.file("x.npz")));
  }
  SUBCASE("missing or truncated file: IOError naming the path") {
    Run r(1);
    const std::string msg = xgtest::error_of<xg::IOError>([&] { r.load(dir.file("missing.npz")); });
    CHECK(xgtest::has(msg, "missing.npz"));
    const std::string path = dir.file("t.npz");
    r.save(path);
    fs::resize_file(path, fs::file_size(path) / 2);
    CHECK_THROWS_AS(r.load(path), xg::IOError);
  }
  SUBCASE("unwritable path: IOError") {
    Run r(1);
    CHECK_THROWS_AS(r.save(dir.file("no/such/dir/c.npz")), xg::IOError);
  }
  SUBCASE("extras: missing names and wrong kinds") {
    Extras ex;
    ex.set_int("n", 3);
    ex.set_double("d", 0.5);
    ex.set_string("s", "hi");
    CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { (void)ex.get_int("absent"); }), "absent"));
    CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { (void)ex.get_int("d"); }), "get_int"));
    CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { (void)ex.get_double("s"); }), "get_double"));
    // A 0-d bool is a flag, not a number: get_double refuses it as it refuses an int64.
    ex.set_tensor("flag", xg::scalar(1.0, xg::b8));
    CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { (void)ex.get_double("flag"); }), "not a 0-d float"));
    CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { (void)ex.get_string("n"); }), "get_string"));
    CHECK_THROWS_AS(ex.set_int("", 1), xg::Error);
    CHECK_THROWS_AS(ex.set_tensor("t", Tensor{}), xg::StateError);
    ex.set_int("n", 4);  // replaces
    CHECK(ex.get_int("n") == 4);
    CHECK(ex.entries().size() == 4);
    Extras bad;
    bad.set_tensor("s", xg::from_vector(std::vector<std::int64_t>{104, 300}));
    CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { (void)bad.get_string("s"); }), "not a byte"));
  }
  SUBCASE("a checkpoint of another format version") {
    const std::string path = dir.file("v.npz");
    Tensor v = Tensor::empty(xg::Shape{}, xg::i64);
    v.data<std::int64_t>()[0] = 99;
    Tensor s = Tensor::empty(xg::Shape{}, xg::i64);
    s.data<std::int64_t>()[0] = 0;
    xg::save_npz(path, {{"xgrad.checkpoint", v}, {"step", s}});
    CHECK(xgtest::has(xgtest::error_of<xg::StateError>([&] { (void)xg::training::read_checkpoint_info(path); }),
                      "format 99"));
  }
}

namespace {

// A copy of checkpoint `src` at `dst` with entry `key` changed by `edit`.
template <class F>
void rewrite_entry(const std::string& src, const std::string& dst, const std::string& key, F&& edit) {
  xg::nn::StateDict all = xg::load_npz(src);
  bool found = false;
  for (auto& [n, t] : all) {
    if (n != key) continue;
    found = true;
    t = t.clone();
    edit(t);
  }
  REQUIRE_MESSAGE(found, key);
  xg::save_npz(dst, all);
}

// Loading `path` into `r` is a StateError with every needle, and the model, optimizer,
// scheduler and default generator are as they were.
void refused_nothing_loaded(Run& r, const std::string& path, const std::vector<std::string>& needles) {
  const auto model = snapshot(r.net->state_dict());
  const auto opt = snapshot(r.opt->state_dict());
  const auto sched = snapshot(r.sched->state_dict());
  const auto gen = xg::default_generator().state();
  std::vector<std::string> want = {"load_checkpoint"};
  want.insert(want.end(), needles.begin(), needles.end());
  xgtest::check_throws_msg<xg::StateError>([&] { r.load(path); }, want);
  check_same_state(r.net->state_dict(), model);
  check_same_state(r.opt->state_dict(), opt);
  check_same_state(r.sched->state_dict(), sched);
  CHECK(xg::default_generator().state() == gen);
}

}  // namespace

TEST_CASE("checkpoint: an Adam checkpoint into an AdamW is refused naming both types; the model is rolled back") {
  TempDir dir;
  const std::string path = dir.file("ckpt.npz");
  Run src(3);
  for (int i = 0; i < 2; ++i) src.train_step();
  src.save(path);
  Run other(9);
  other.train_step();
  xg::optim::AdamWOptions wo;
  wo.amsgrad = true;  // every entry name matches Adam's amsgrad state
  xg::optim::AdamW adamw(other.net->parameters(), wo);
  const auto model = snapshot(other.net->state_dict());
  const auto opt = snapshot(adamw.state_dict());
  xgtest::check_throws_msg<xg::StateError>(
      [&] { load_checkpoint(path, {other.net.get(), &adamw, nullptr, nullptr}); },
      {"load_checkpoint", "optimizer", "saved by Adam, this optimizer is AdamW"});
  check_same_state(other.net->state_dict(), model);
  check_same_state(adamw.state_dict(), opt);
}

TEST_CASE("checkpoint: optimizer or generator values that are not states are refused; nothing is loaded") {
  TempDir dir;
  const std::string path = dir.file("ckpt.npz"), bad = dir.file("bad.npz");
  Run src(3);
  for (int i = 0; i < 2; ++i) src.train_step();
  (void)xg::default_generator().normal();  // a cached normal, so its flag is 1
  src.save(path);
  Run other(9);
  other.train_step();

  SUBCASE("a negative exp_avg_sq") {
    rewrite_entry(path, bad, "optimizer.state.0.exp_avg_sq", [](Tensor& t) {
      if (t.dtype() == xg::f32) t.data<float>()[0] = -1.0f;
      else t.data<double>()[0] = -1.0;
    });
    refused_nothing_loaded(other, bad, {"optimizer", "'state.0.exp_avg_sq' (parameter 0)"});
  }
  SUBCASE("a NaN cached normal in the generator state") {
    rewrite_entry(path, bad, "generator.state", [](Tensor& t) {
      const double nan = std::numeric_limits<double>::quiet_NaN();
      std::memcpy(&t.data<std::int64_t>()[4], &nan, sizeof nan);
      t.data<std::int64_t>()[5] = 1;
    });
    refused_nothing_loaded(other, bad, {"'generator.state'", "entry 4", "nan"});
  }
  SUBCASE("an all-zero generator state") {
    rewrite_entry(path, bad, "generator.state", [](Tensor& t) {
      for (int k = 0; k < 4; ++k) t.data<std::int64_t>()[k] = 0;
    });
    refused_nothing_loaded(other, bad, {"'generator.state'", "all zero"});
  }
}

// ---- hostile files ---------------------------------------------------------------------------

namespace {

void put_le(std::string& b, std::size_t at, std::uint64_t v, int n) {
  for (int k = 0; k < n; ++k) b.at(at + static_cast<std::size_t>(k)) = static_cast<char>((v >> (8 * k)) & 0xff);
}

// The archive with a ZIP64 end record (and its locator) stating `count` entries, and the
// classic end record's fields set to "see ZIP64", as a zip writer does past 65535 entries.
std::string with_zip64_count(const std::string& zip, std::uint64_t count) {
  const std::size_t end = zip.rfind(std::string("PK\x05\x06", 4));
  REQUIRE(end != std::string::npos);
  std::string rec(56, '\0'), loc(20, '\0');
  put_le(rec, 0, 0x06064b50, 4);
  put_le(rec, 4, 44, 8);
  put_le(rec, 12, 45, 2);
  put_le(rec, 14, 45, 2);
  put_le(rec, 24, count, 8);
  put_le(rec, 32, count, 8);
  rec.replace(40, 4, zip, end + 12, 4);  // central directory size and offset, widened
  rec.replace(48, 4, zip, end + 16, 4);
  put_le(loc, 0, 0x07064b50, 4);
  put_le(loc, 8, end, 8);
  put_le(loc, 16, 1, 4);
  std::string eocd = zip.substr(end, 22);
  put_le(eocd, 8, 0xffff, 2);
  put_le(eocd, 10, 0xffff, 2);
  put_le(eocd, 12, 0xffffffffu, 4);
  put_le(eocd, 16, 0xffffffffu, 4);
  return zip.substr(0, end) + rec + loc + eocd;
}

}  // namespace

TEST_CASE("checkpoint: a forged entry count is refused fast, naming the count and the file") {
  TempDir dir;
  Run r(1);
  const std::string good = dir.file("good.npz");
  r.save(good);
  const std::string path = dir.file("forged.npz");
  {
    std::ofstream out(path, std::ios::binary);
    out << with_zip64_count(xgtest::read_file(good), 2000000);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::string msg = xgtest::error_of<xg::IOError>([&] { r.load(path); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(msg);
  CHECK(xgtest::has(msg, path));
  CHECK(xgtest::has(msg, "2000000 entries"));
  CHECK(seconds < 1.0);
  // The same with read_checkpoint_info, which reads the archive the same way.
  CHECK(xgtest::has(xgtest::error_of<xg::IOError>([&] { (void)xg::training::read_checkpoint_info(path); }),
                    "2000000 entries"));
}

TEST_CASE("checkpoint: saving through a symlink keeps it; a FIFO is neither loaded (no hang) nor replaced") {
  TempDir dir;
  Run r(1);
  r.save(dir.file("real.npz"));
  fs::create_symlink("real.npz", dir.file("latest.npz"));
  const auto before = fs::file_size(dir.file("real.npz"));
  Run r2(2, 9);
  r2.save(dir.file("latest.npz"));
  CHECK(fs::is_symlink(dir.file("latest.npz")));
  CHECK(fs::file_size(dir.file("real.npz")) != before);
  Run r3(3, 9);
  r3.load(dir.file("latest.npz"));

  const std::string fifo = dir.file("fifo.npz");
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  const std::string failures =
      xgtest::fifo_load_failures(fifo, [](const std::string& f) { (void)xg::training::read_checkpoint_info(f); });
  CHECK_MESSAGE(failures.empty(), failures);
  CHECK(xgtest::has(xgtest::error_of<xg::IOError>([&] { r.save(fifo); }), "is a FIFO"));
  CHECK(fs::is_fifo(fifo));
}
