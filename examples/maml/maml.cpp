// MAML on sine waves: learning an initialisation that adapts to a new task in one gradient step.
//
// A task is y = A sin(x - phase) with A in [0.1, 5], phase in [0, pi], x in [-5, 5]; the
// learner sees K = 10 points of it (the support set) and must predict the rest. MAML
// (Finn et al. 2017) meta-trains the weights theta of a 1-40-40-1 ReLU MLP so that a few
// SGD steps on the support set,
//     theta' = theta - alpha * grad_theta L_support(theta),
// give a small loss on fresh points of the same task (the query set). The meta-gradient
// d L_query(theta') / d theta goes through the inner step, so it contains the Hessian term
// -alpha * H_support * grad L_query: the inner gradient is computed with
// xg::grad(..., {.create_graph = true}), which records it as an expression of theta.
// First-order MAML drops that term (the inner gradient taken as a constant, d theta' / d theta = I).
//
// With no flags it trains both, from the same initial weights on the same task stream,
// then scores each on the same held-out tasks (MSE on 100 query points after adapting on
// K) and prints the difference task by task. Figures: out/maml/maml_<order>.svg, one
// held-out task's truth, support points, the fit before adaptation and after.
//
//   ./maml                              # both orders, ~2 min on one core
//   ./maml --first-order --steps 500    # first-order only
//   ./maml --steps 2000 --meta-batch 10 --eval-tasks 100 --check   # the smoke test
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <xgrad/xgrad.hpp>

#include "../common/cli.hpp"

using namespace xg;
namespace cli = examples::cli;

namespace {

// ---- the tasks ------------------------------------------------------------------------

struct Sine {
  double amplitude = 1, phase = 0;
  double operator()(double x) const { return amplitude * std::sin(x - phase); }
};

Sine draw_task(Generator& gen) {
  Sine t;
  t.amplitude = 0.1 + 4.9 * gen.uniform();
  t.phase = std::numbers::pi * gen.uniform();
  return t;
}

// n points of the task at x uniform in [-5, 5]: x [n, 1], y [n, 1].
std::pair<Tensor, Tensor> draw_points(const Sine& task, std::int64_t n, Generator& gen) {
  std::vector<float> xs(n), ys(n);
  for (std::int64_t i = 0; i < n; ++i) {
    xs[i] = static_cast<float>(-5.0 + 10.0 * gen.uniform());
    ys[i] = static_cast<float>(task(xs[i]));
  }
  return {from_vector(xs, {n, 1}), from_vector(ys, {n, 1})};
}

// ---- the learner ----------------------------------------------------------------------

// Three nn::Linear hold theta; forward takes the weights as an argument so the same net
// runs with theta and with any adapted theta' (a list of tensors with history).
struct Learner : nn::Module {
  std::shared_ptr<nn::Linear> l1, l2, l3;
  Learner() {
    l1 = register_module("l1", std::make_shared<nn::Linear>(1, 40));
    l2 = register_module("l2", std::make_shared<nn::Linear>(40, 40));
    l3 = register_module("l3", std::make_shared<nn::Linear>(40, 1));
  }
  std::vector<Tensor> weights() const { return {l1->weight, l1->bias, l2->weight, l2->bias, l3->weight, l3->bias}; }

  static Tensor forward(const Tensor& x, const std::vector<Tensor>& w) {
    const Tensor h1 = relu(linear(x, w[0], w[1]));
    const Tensor h2 = relu(linear(h1, w[2], w[3]));
    return linear(h2, w[4], w[5]);
  }
};

enum class Order { second, first };
const char* name_of(Order o) { return o == Order::second ? "second-order" : "first-order"; }

// `steps` SGD steps of size alpha on the support set, starting from theta.
//   second: each inner gradient is recorded (create_graph), so theta' is a differentiable
//           function of theta, Hessian-vector products included.
//   first:  each inner gradient is taken at a detached copy, a constant: theta' = theta - const.
// At evaluation time the two are the same numbers; `first` is used there (no graph to keep).
std::vector<Tensor> adapt(const std::vector<Tensor>& theta, const Tensor& xs, const Tensor& ys, int steps, double alpha,
                          Order order) {
  std::vector<Tensor> w = theta;
  for (int s = 0; s < steps; ++s) {
    std::vector<Tensor> at = w;
    if (order == Order::first) {
      for (Tensor& t : at) t = t.detach().requires_grad_();
    }
    const Tensor loss = mse_loss(Learner::forward(xs, at), ys);
    const std::vector<Tensor> g = grad({loss}, at, {}, {.create_graph = order == Order::second});
    // First-order: detach() says the gradient is used as a constant on purpose (a gradient
    // taken without create_graph is refused in a later backward otherwise).
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = w[i] - (order == Order::first ? g[i].detach() : g[i]) * alpha;
  }
  return w;
}

// ---- held-out evaluation ----------------------------------------------------------------

struct HeldOutTask {
  Sine task;
  Tensor xs, ys;  // the K support points
  Tensor xq, yq;  // query points
};

std::vector<HeldOutTask> held_out_tasks(std::int64_t n, std::int64_t K, std::int64_t queries, std::uint64_t seed) {
  Generator gen(seed);
  std::vector<HeldOutTask> tasks;
  for (std::int64_t i = 0; i < n; ++i) {
    HeldOutTask t;
    t.task = draw_task(gen);
    std::tie(t.xs, t.ys) = draw_points(t.task, K, gen);
    std::tie(t.xq, t.yq) = draw_points(t.task, queries, gen);
    tasks.push_back(t);
  }
  return tasks;
}

// Query MSE of every held-out task after 0 and after each count in `steps_list` of
// adaptation steps: mse[j][task], j = 0 the unadapted theta.
std::vector<std::vector<double>> evaluate(const Learner& model, const std::vector<HeldOutTask>& tasks,
                                          const std::vector<int>& steps_list, double alpha) {
  std::vector<std::vector<double>> mse(steps_list.size() + 1);
  const std::vector<Tensor> theta = model.weights();
  for (const HeldOutTask& t : tasks) {
    {
      NoGradGuard no_grad;
      mse[0].push_back(mse_loss(Learner::forward(t.xq, theta), t.yq).item());
    }
    for (std::size_t j = 0; j < steps_list.size(); ++j) {
      const std::vector<Tensor> w = adapt(theta, t.xs, t.ys, steps_list[j], alpha, Order::first);
      NoGradGuard no_grad;
      mse[j + 1].push_back(mse_loss(Learner::forward(t.xq, w), t.yq).item());
    }
  }
  return mse;
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}
// Standard error of the mean.
double sem_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1) / static_cast<double>(v.size()));
}

// ---- is the meta-gradient right? ----------------------------------------------------------

// The meta-loss of one task, L_query(adapt(theta)), against central differences along a
// random direction d, in float64 at the weights of `model`: <grad, d> of second-order MAML
// must match (d L / d theta, Hessian term included) and first-order's must not (it drops
// -alpha H_support grad L_query). A second derivative that silently came out as zero, or
// a constant, would show here as second-order agreeing no better than first-order.
struct MetaGradientCheck {
  double finite_difference = 0, second = 0, first = 0;
  double second_error() const { return std::abs(second - finite_difference) / std::abs(finite_difference); }
  double first_error() const { return std::abs(first - finite_difference) / std::abs(finite_difference); }
};

MetaGradientCheck check_meta_gradient(const Learner& model, int inner_steps, double alpha, std::uint64_t seed) {
  Generator gen(seed);
  const Sine task = draw_task(gen);
  auto [xs, ys] = draw_points(task, 10, gen);
  auto [xq, yq] = draw_points(task, 10, gen);
  xs = xs.to(f64), ys = ys.to(f64), xq = xq.to(f64), yq = yq.to(f64);
  std::vector<Tensor> theta, d;
  for (const Tensor& w : model.weights()) {
    theta.push_back(w.detach().to(f64).requires_grad_());
    d.push_back(randn(w.shape(), f64, &gen));
  }
  const auto meta_loss = [&](const std::vector<Tensor>& th, Order order) {
    return mse_loss(Learner::forward(xq, adapt(th, xs, ys, inner_steps, alpha, order)), yq);
  };
  MetaGradientCheck c;
  const double eps = 1e-6;
  std::vector<Tensor> plus, minus;
  for (std::size_t i = 0; i < theta.size(); ++i) {
    plus.push_back((theta[i] + d[i] * eps).detach().requires_grad_());
    minus.push_back((theta[i] - d[i] * eps).detach().requires_grad_());
  }
  c.finite_difference = (meta_loss(plus, Order::first).item() - meta_loss(minus, Order::first).item()) / (2 * eps);
  for (const Order order : {Order::second, Order::first}) {
    const std::vector<Tensor> g = grad({meta_loss(theta, order)}, theta);
    double dot = 0;
    for (std::size_t i = 0; i < g.size(); ++i) dot += sum(g[i] * d[i]).item();
    (order == Order::second ? c.second : c.first) = dot;
  }
  return c;
}

// ---- the figure -------------------------------------------------------------------------

std::vector<double> grid(std::int64_t n) {
  std::vector<double> xs(n);
  for (std::int64_t i = 0; i < n; ++i) xs[i] = -5.0 + 10.0 * static_cast<double>(i) / static_cast<double>(n - 1);
  return xs;
}

std::vector<double> predict(const std::vector<Tensor>& w, const std::vector<double>& xs) {
  NoGradGuard no_grad;
  const Tensor x = from_vector(xs, {static_cast<std::int64_t>(xs.size()), 1}, w[0].dtype());
  return Learner::forward(x, w).to_vector<double>();
}

void write_figure(const Learner& model, const HeldOutTask& t, int inner_steps, int more_steps, double alpha,
                  Order order, const std::string& path) {
  const std::vector<double> xs = grid(200);
  std::vector<double> truth;
  for (double x : xs) truth.push_back(t.task(x));
  const double dy = 0.05 * (t.task.amplitude + 1);  // marker half-height, in y units
  const std::vector<Tensor> theta = model.weights();
  training::LinePlot plot{fmt::format("MAML ({}): a held-out task, A = {:.2f}, phase = {:.2f}", name_of(order),
                                      t.task.amplitude, t.task.phase),
                          "x", "y"};
  plot.add_series("truth", xs, truth, "#000000");
  // The support points as "+" marks: two short strokes each, a NaN between strokes so the
  // plot's polyline breaks there.
  std::vector<double> mx, my;
  const auto sx = t.xs.to_vector<double>(), sy = t.ys.to_vector<double>();
  const double nan = std::nan("");
  for (std::size_t i = 0; i < sx.size(); ++i) {
    mx.insert(mx.end(), {sx[i] - 0.12, sx[i] + 0.12, nan, sx[i], sx[i], nan});
    my.insert(my.end(), {sy[i], sy[i], nan, sy[i] - dy, sy[i] + dy, nan});
  }
  plot.add_series(fmt::format("K = {} support points", sx.size()), mx, my, "#d62728");
  plot.add_series("before adaptation (theta)", xs, predict(theta, xs), "#9e9e9e");
  plot.add_series(fmt::format("after {} step{}", inner_steps, inner_steps == 1 ? "" : "s"), xs,
                  predict(adapt(theta, t.xs, t.ys, inner_steps, alpha, Order::first), xs), "#1f77b4");
  plot.add_series(fmt::format("after {} steps", more_steps), xs,
                  predict(adapt(theta, t.xs, t.ys, more_steps, alpha, Order::first), xs), "#2ca02c");
  plot.write_svg(path);
}

// ---- meta-training ----------------------------------------------------------------------

struct Options {
  int steps = 20000, meta_batch = 25, inner_steps = 1, eval_steps = 10;
  std::int64_t K = 10, eval_tasks = 600, queries = 100;
  double inner_lr = 0.01, meta_lr = 1e-3;
  std::uint64_t seed = 1;
  bool first_only = false, second_only = false, check = false;
  double check_ratio = 0.5;
  int threads = 1;
  std::string out = "out/maml";
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Meta-trains a learner from the weights seeded by o.seed on the task stream seeded by
// o.seed + 1: the two orders start equal and see the same tasks and points.
std::unique_ptr<Learner> meta_train(const Options& o, Order order) {
  manual_seed(o.seed);
  auto model = std::make_unique<Learner>();
  optim::Adam opt(model->parameters(), {.lr = o.meta_lr});
  Generator tasks(o.seed + 1);
  const auto t0 = std::chrono::steady_clock::now();
  double recent = 0;
  for (int step = 1; step <= o.steps; ++step) {
    opt.zero_grad();
    double total = 0;
    for (int b = 0; b < o.meta_batch; ++b) {
      const Sine task = draw_task(tasks);
      const auto [xs, ys] = draw_points(task, o.K, tasks);
      const auto [xq, yq] = draw_points(task, o.K, tasks);
      const std::vector<Tensor> w = adapt(model->weights(), xs, ys, o.inner_steps, o.inner_lr, order);
      // Each task's backward adds its share of the mean into theta's .grad() and frees its
      // graph (the inner gradient's recorded history included).
      const Tensor loss = mse_loss(Learner::forward(xq, w), yq) / static_cast<double>(o.meta_batch);
      loss.backward();
      total += loss.item();
    }
    opt.step();
    recent = step == 1 ? total : 0.98 * recent + 0.02 * total;
    if (step % std::max(1, o.steps / 10) == 0 || step == o.steps) {
      fmt::print("  {} step {:5d}: post-adaptation query MSE {:.3f} (running mean), {:.1f} s\n", name_of(order), step,
                 recent, seconds_since(t0));
      std::fflush(stdout);
    }
  }
  return model;
}

int run(const Options& o) {
  set_num_threads(o.threads);
  std::filesystem::create_directories(o.out);
  std::vector<Order> orders;
  if (!o.first_only) orders.push_back(Order::second);
  if (!o.second_only) orders.push_back(Order::first);
  fmt::print("MAML, sine regression: K = {}, {} inner SGD step{} (alpha {}), Adam {} on {} tasks a step, {} steps\n",
             o.K, o.inner_steps, o.inner_steps == 1 ? "" : "s", o.inner_lr, o.meta_lr, o.meta_batch, o.steps);
  // Held-out tasks from their own seed: never in any training stream.
  const std::vector<HeldOutTask> held_out = held_out_tasks(o.eval_tasks, o.K, o.queries, o.seed + 1000003);
  const std::vector<int> steps_list{o.inner_steps, o.eval_steps};
  // The figure's task: the first with a large amplitude (on a small one, any flat fit looks close).
  std::size_t figure_task = 0;
  while (figure_task + 1 < held_out.size() && held_out[figure_task].task.amplitude < 3) ++figure_task;

  struct Result {
    Order order;
    std::vector<std::vector<double>> mse;  // [0]: before, [1]: after inner_steps, [2]: after eval_steps
  };
  std::vector<Result> results;
  MetaGradientCheck gradient_check;
  {
    manual_seed(o.seed);
    const Learner initial;  // the weights both orders start from
    gradient_check = check_meta_gradient(initial, o.inner_steps, o.inner_lr, o.seed + 17);
    fmt::print("meta-gradient along a random direction (float64, one task, the initial weights): central differences "
               "{:.10g}; second-order {:.10g} (relative error {:.1e}); first-order {:.10g} ({:.1e})\n",
               gradient_check.finite_difference, gradient_check.second, gradient_check.second_error(),
               gradient_check.first, gradient_check.first_error());
  }
  for (const Order order : orders) {
    const auto model = meta_train(o, order);
    results.push_back({order, evaluate(*model, held_out, steps_list, o.inner_lr)});
    const std::string svg = (std::filesystem::path(o.out) /
                             (order == Order::second ? "maml_second_order.svg" : "maml_first_order.svg")).string();
    write_figure(*model, held_out[figure_task], o.inner_steps, o.eval_steps, o.inner_lr, order, svg);
    fmt::print("wrote {}\n", svg);
  }

  fmt::print("held-out tasks: {} (K = {} support points, MSE on {} query points each); mean +- standard error\n",
             o.eval_tasks, o.K, o.queries);
  fmt::print("  {:<13} {:>18} {:>18} {:>18}\n", "", "before adapting", fmt::format("after {} step{}", o.inner_steps, o.inner_steps == 1 ? "" : "s"),
             fmt::format("after {} steps", o.eval_steps));
  for (const Result& r : results) {
    fmt::print("  {:<13} {:>10.4f} +- {:<5.3f} {:>10.4f} +- {:<5.3f} {:>10.4f} +- {:<5.3f}\n", name_of(r.order),
               mean_of(r.mse[0]), sem_of(r.mse[0]), mean_of(r.mse[1]), sem_of(r.mse[1]), mean_of(r.mse[2]),
               sem_of(r.mse[2]));
  }
  if (results.size() == 2) {
    // Paired over the same tasks: the spread of the difference, not of each MSE, is what
    // says whether second-order is better.
    for (std::size_t j = 1; j <= 2; ++j) {
      std::vector<double> diff;
      int wins = 0;
      for (std::size_t i = 0; i < held_out.size(); ++i) {
        diff.push_back(results[1].mse[j][i] - results[0].mse[j][i]);
        wins += diff.back() > 0;
      }
      fmt::print("  after {} step{}: first-order minus second-order MSE {:+.4f} +- {:.4f} ({:+.1f}% of first-order); "
                 "second-order lower on {} of {} tasks\n",
                 steps_list[j - 1], steps_list[j - 1] == 1 ? "" : "s", mean_of(diff), sem_of(diff),
                 100.0 * mean_of(diff) / mean_of(results[1].mse[j]), wins, held_out.size());
    }
  }
  if (!o.check) return 0;
  bool ok = gradient_check.second_error() < 1e-6 && gradient_check.first_error() > 1e-4;
  fmt::print("check {}: the second-order meta-gradient matches central differences ({:.1e} < 1e-6) and the first-order "
             "one, without the Hessian term, does not ({:.1e} > 1e-4)\n",
             ok ? "ok" : "FAILED", gradient_check.second_error(), gradient_check.first_error());
  for (const Result& r : results) {
    const double before = mean_of(r.mse[0]), after = mean_of(r.mse[1]), after_more = mean_of(r.mse[2]);
    // An untrained theta gains nothing from 10 steps at alpha 0.01 (4.64 after vs 4.55
    // before, seed 1): a large drop needs the meta-learned starting point.
    const bool pass = after < before && after_more < o.check_ratio * before;
    fmt::print("check {}: {}: held-out MSE before adapting {:.4f}, after {} step{} {:.4f} (must be lower), after {} "
               "steps {:.4f} (must be below {} x before)\n",
               pass ? "ok" : "FAILED", name_of(r.order), before, o.inner_steps, o.inner_steps == 1 ? "" : "s", after,
               o.eval_steps, after_more, o.check_ratio);
    ok = ok && pass;
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"MAML on sine-wave regression: second-order (inner gradients differentiated through with "
               "create_graph) vs first-order"};
  app.add_option("--steps", o.steps, "meta-training steps (Adam) per learner")->capture_default_str()->check(cli::count());
  app.add_option("--meta-batch", o.meta_batch, "tasks per meta step")->capture_default_str()->check(cli::count(10000));
  app.add_option("--inner-steps", o.inner_steps, "inner SGD steps on the support set while meta-training")
      ->capture_default_str()
      ->check(cli::count(100));
  app.add_option("--inner-lr", o.inner_lr, "inner SGD step size alpha")->capture_default_str()->check(cli::positive());
  app.add_option("--meta-lr", o.meta_lr, "Adam learning rate")->capture_default_str()->check(cli::positive());
  app.add_option("--k", o.K, "support (and training query) points per task")->capture_default_str()->check(cli::count(10000));
  app.add_option("--eval-tasks", o.eval_tasks, "held-out tasks scored")->capture_default_str()->check(cli::integer(2, 1000000));
  app.add_option("--eval-steps", o.eval_steps, "inner steps also scored on the held-out tasks")
      ->capture_default_str()
      ->check(cli::count(1000));
  app.add_option("--seed", o.seed, "seed of the initial weights (the task stream uses seed + 1)")
      ->capture_default_str()
      ->check(cli::seed());
  auto* fo = app.add_flag("--first-order", o.first_only, "train first-order MAML only (default: both, compared)");
  app.add_flag("--second-order", o.second_only, "train second-order MAML only")->excludes(fo);
  app.add_option("--threads", o.threads, "BLAS threads")->capture_default_str()->check(cli::count(cli::kMaxThreads));
  app.add_option("--out", o.out, "output directory (the SVG figures)")->capture_default_str()->check(cli::output_dir());
  app.add_flag("--check", o.check, "exit 1 unless every learner's held-out MSE after --inner-steps is below its MSE "
                                   "before adapting, and after --eval-steps below --check-ratio times it");
  app.add_option("--check-ratio", o.check_ratio, "threshold of --check")->capture_default_str()->check(cli::real(0, true, 1, false));
  return cli::run(app, "maml", argc, argv, [&] { return run(o); });
}
