// The bool dtype (b8): factories, conversions, data movement, printing, comparisons and
// logical ops, where/masked_fill/attention/loss masks, counting with sum, arithmetic
// refused with a DtypeError naming the fix, |b1 / |u1 files from numpy, and the padded
// batch helpers nn::utils::lengths_to_mask / pad_sequence.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "helpers.hpp"

#ifndef XGRAD_FIXTURES_DIR
#define XGRAD_FIXTURES_DIR "tests/fixtures"
#endif

using namespace xg;
using xgtest::check_close;
using xgtest::check_throws_msg;
using xgtest::check_values;
using xgtest::gradcheck_ok;
using xgtest::rnd;

namespace {

std::vector<std::int64_t> ints(const Tensor& t) { return t.to_vector<std::int64_t>(); }

}  // namespace

TEST_CASE("bool dtype: name, size, dtype_of<bool>, not floating") {
  CHECK(dtype_name(b8) == "bool");
  CHECK(dtype_size(b8) == 1);
  CHECK(dtype_of<bool>() == b8);
  CHECK_FALSE(is_floating(b8));
  check_throws_msg<DtypeError>([] { set_default_dtype(b8); }, {"set_default_dtype"});
}

TEST_CASE("bool factories: zeros/ones/full, from_vector of bools, item, to_vector<bool>") {
  const Tensor z = zeros({2, 3}, b8), o = ones({2, 3}, b8), f = full({2}, 0.5, b8);
  CHECK(z.dtype() == b8);
  CHECK(ints(z) == std::vector<std::int64_t>(6, 0));
  CHECK(ints(o) == std::vector<std::int64_t>(6, 1));
  CHECK(ints(f) == std::vector<std::int64_t>{1, 1});  // full(v) holds v != 0
  CHECK(ints(full({1}, 0.0, b8)) == std::vector<std::int64_t>{0});
  const Tensor v = from_vector({true, false, true});
  CHECK(v.dtype() == b8);
  CHECK(v.shape() == Shape{3});
  CHECK(v.to_vector<bool>() == std::vector<bool>{true, false, true});
  const Tensor m = from_vector(std::vector<bool>{true, false, false, true}, {2, 2});
  CHECK(m.shape() == Shape{2, 2});
  CHECK(m.data<bool>()[3]);
  CHECK(scalar(1.0, b8).item() == 1.0);
  CHECK(scalar(0.0, b8).item<bool>() == false);
  CHECK(ones_like(m).dtype() == b8);
  CHECK(eye(2, b8).to_vector<bool>() == std::vector<bool>{true, false, false, true});
  check_throws_msg<ShapeError>([] { (void)from_vector({true, false}, {3}); }, {"from_vector", "[3]"});
  check_throws_msg<DtypeError>([] { (void)rand({2}, b8); }, {"rand", "bool"});
  check_throws_msg<DtypeError>([&] { (void)m.data<float>(); }, {"data<float32>", "bool"});
}

TEST_CASE("bool to(): 0/1 into numbers, x != 0 from numbers (NaN true, -0 false)") {
  const Tensor m = from_vector({true, false, true});
  check_values(m.to(f32), {1, 0, 1}, 0, 0);
  CHECK(m.to(f64).dtype() == f64);
  CHECK(ints(m.to(i64)) == std::vector<std::int64_t>{1, 0, 1});
  const Tensor x = from_vector(std::vector<double>{0.0, -0.0, 2.5, NAN, -1e-300, INFINITY});
  CHECK(x.to(b8).to_vector<bool>() == std::vector<bool>{false, false, true, true, true, true});
  CHECK(from_vector({0, 7, -1}).to(b8).to_vector<bool>() == std::vector<bool>{false, true, true});
  CHECK(m.to(b8).is_same(m));
  // A float tensor that requires grad converts to bool without recording (no gradient).
  Tensor w = from_vector(std::vector<double>{1.0, 0.0}).requires_grad_();
  CHECK_FALSE(w.to(b8).requires_grad());
}

TEST_CASE("bool data movement: clone, reshape, transpose, select, slice, stack, concat, index_select") {
  const Tensor m = from_vector({true, false, false, true, true, false}, {2, 3});
  CHECK(m.clone().to_vector<bool>() == m.to_vector<bool>());
  CHECK(reshape(m, {3, 2}).dtype() == b8);
  CHECK(transpose(m, 0, 1).to_vector<bool>() == std::vector<bool>{true, true, false, true, false, false});
  CHECK(permute(m, {1, 0}).to_vector<bool>() == std::vector<bool>{true, true, false, true, false, false});
  CHECK(select(m, 0, 1).to_vector<bool>() == std::vector<bool>{true, true, false});
  CHECK(m[0].to_vector<bool>() == std::vector<bool>{true, false, false});
  CHECK(slice(m, 1, 1, 3).to_vector<bool>() == std::vector<bool>{false, false, true, false});
  CHECK(narrow(m, 0, 1, 1).shape() == Shape{1, 3});
  CHECK(unsqueeze(m, 0).shape() == Shape{1, 2, 3});
  CHECK(flatten(m).shape() == Shape{6});
  const Tensor s = stack({m, logical_not(m)}, 0);
  CHECK(s.dtype() == b8);
  CHECK(s.shape() == Shape{2, 2, 3});
  CHECK(sum(s).item<std::int64_t>() == 6);
  const Tensor c = concat({m, m}, 1);
  CHECK(c.shape() == Shape{2, 6});
  CHECK(c.to_vector<bool>() ==
        std::vector<bool>{true, false, false, true, false, false, true, true, false, true, true, false});
  CHECK(index_select(m, 1, from_vector({2, 0})).to_vector<bool>() == std::vector<bool>{false, true, false, true});
  CHECK(split(m, 2, 1).size() == 2);
  // broadcast_to moves data too: a [2,1] bool column over 3 columns, an int64 row over 2 rows.
  CHECK(broadcast_to(from_vector({true, false}, {2, 1}), Shape{2, 3}).to_vector<bool>() ==
        std::vector<bool>{true, true, true, false, false, false});
  CHECK(ints(broadcast_to(from_vector({4, 5}), Shape{2, 2})) == std::vector<std::int64_t>{4, 5, 4, 5});
  CHECK(broadcast_to(m, Shape{2, 2, 3}).dtype() == b8);
  check_throws_msg<DtypeError>([&] { (void)concat({m, m.to(f32)}, 0); }, {"concat"});
}

TEST_CASE("bool printing: True / False as PyTorch") {
  CHECK(to_string(from_vector({true, false})) == "tensor([ True, False], dtype=bool, shape=[2])");
  CHECK(to_string(from_vector({false, false}, {1, 2})) == "tensor([[False, False]], dtype=bool, shape=[1,2])");
  CHECK(to_string(scalar(1.0, b8)) == "tensor(True, dtype=bool, shape=[])");
}

TEST_CASE("comparisons return bool: ne/ge/le, scalar forms, bool against bool, broadcasting") {
  const Tensor a = from_vector(std::vector<double>{1.0, 2.0, 3.0, NAN});
  const Tensor b = from_vector(std::vector<double>{2.0}, Shape{1});
  CHECK(ne(a, b).dtype() == b8);
  check_values(ne(a, b), {1, 0, 1, 1}, 0, 0);  // NaN != x is true
  check_values(ge(a, b), {0, 1, 1, 0}, 0, 0);
  check_values(le(a, b), {1, 1, 0, 0}, 0, 0);
  check_values(eq(a, 2.0), {0, 1, 0, 0}, 0, 0);
  check_values(ne(a, 2.0), {1, 0, 1, 1}, 0, 0);
  check_values(ge(a, 2.0), {0, 1, 1, 0}, 0, 0);
  check_values(le(a, 2.0), {1, 1, 0, 0}, 0, 0);
  // float32 against a number compares in float32, as gt/lt do.
  check_values(ge(from_vector(std::vector<float>{0.1f}), 0.1), {1.0});
  check_values(le(from_vector(std::vector<float>{0.1f}), 0.1), {1.0});
  // [2,1] x [3] broadcasts to [2,3].
  const Tensor col = from_vector(std::vector<std::int64_t>{1, 3}, {2, 1});
  const Tensor row = from_vector({1, 2, 3});
  const Tensor g = ge(col, row);
  CHECK(g.shape() == Shape{2, 3});
  CHECK(g.to_vector<bool>() == std::vector<bool>{true, false, false, true, true, true});
  const Tensor p = from_vector({true, false, true}), q = from_vector({true, true, false});
  CHECK(eq(p, q).to_vector<bool>() == std::vector<bool>{true, false, false});
  CHECK(gt(p, q).to_vector<bool>() == std::vector<bool>{false, false, true});
  CHECK(eq(p, 1.0).to_vector<bool>() == std::vector<bool>{true, false, true});
  check_throws_msg<DtypeError>([&] { (void)eq(p, p.to(f32)); }, {"eq", "bool", "float32"});
  check_throws_msg<ShapeError>([&] { (void)le(a, from_vector({1.0, 2.0})); }, {"le"});
  check_throws_msg<StateError>([] { (void)ge(Tensor(), 0.0); }, {"ge"});
}

TEST_CASE("logical_and / logical_or / logical_not on truth values of any dtype, broadcast") {
  const Tensor p = from_vector({true, false, true, false}), q = from_vector({true, true, false, false});
  CHECK(logical_and(p, q).to_vector<bool>() == std::vector<bool>{true, false, false, false});
  CHECK(logical_or(p, q).to_vector<bool>() == std::vector<bool>{true, true, true, false});
  CHECK(logical_not(p).to_vector<bool>() == std::vector<bool>{false, true, false, true});
  // Numbers: nonzero (NaN included) is true; mixed dtypes are fine.
  const Tensor x = from_vector(std::vector<double>{0.0, NAN, -2.0, 0.0});
  CHECK(logical_and(x, p).to_vector<bool>() == std::vector<bool>{false, false, true, false});
  CHECK(logical_not(x).to_vector<bool>() == std::vector<bool>{true, false, false, true});
  CHECK(logical_or(from_vector({0, 0}), from_vector({false}, {1})).to_vector<bool>() ==
        std::vector<bool>{false, false});
  check_throws_msg<ShapeError>([&] { (void)logical_and(p, from_vector({true, false})); }, {"logical_and"});
  check_throws_msg<StateError>([] { (void)logical_not(Tensor()); }, {"logical_not"});
}

TEST_CASE("where / masked_fill take a bool cond and mask (and the old number masks); gradients flow") {
  const Tensor cond = from_vector({true, false, true, false}, {2, 2});
  const Tensor a = rnd({2, 2}), b = rnd({2, 2}, -1.0, 1.0, 2);
  const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>();
  check_values(where(cond, a, b), {av[0], bv[1], av[2], bv[3]}, 0, 0);
  // The same as the float mask earlier code passed.
  check_close(where(cond, a, b), where(cond.to(f64), a, b), 0, 0);
  check_values(masked_fill(a, cond, -5.0), {-5.0, av[1], -5.0, av[3]}, 0, 0);
  check_close(masked_fill(a, cond, -5.0), masked_fill(a, cond.to(i64), -5.0), 0, 0);
  // A bool row mask broadcasts over the rows.
  const Tensor rowmask = from_vector({false, true});
  check_values(masked_fill(a, rowmask, 0.0), {av[0], 0.0, av[2], 0.0}, 0, 0);
  gradcheck_ok([&](const std::vector<Tensor>& v) { return where(cond, v[0], v[1]); }, {rnd({2, 2}), rnd({1, 2})});
  gradcheck_ok([&](const std::vector<Tensor>& v) { return masked_fill(v[0], rowmask, 1.5); }, {rnd({3, 2})});
  gradcheck_ok([&](const std::vector<Tensor>& v) { return where(gt(v[0], 0.0), v[0], mul(v[0], 0.1)); },
               {rnd({4, 3}, 0.05, 1.0)});
  // Long enough for the vectorised body and its tail: the same as the number-mask path,
  // in both float dtypes.
  for (Dtype dt : {f32, f64}) {
    const Tensor x = rnd({1037}).to(dt), z = rnd({1037}, -1.0, 1.0, 5).to(dt);
    const Tensor bm = gt(rnd({1037}, -1.0, 1.0, 9), 0.0);
    check_close(where(bm, x, z), where(bm.to(dt), x, z), 0, 0);
    check_close(masked_fill(x, bm, 7.0), masked_fill(x, bm.to(i64), 7.0), 0, 0);
  }
  // where's values are floating: bool values are a DtypeError naming the fix.
  check_throws_msg<DtypeError>([&] { (void)where(cond, cond, cond); }, {"where", "bool", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)masked_fill(cond, cond, 1.0); }, {"masked_fill", "bool"});
}

TEST_CASE("sum of a bool tensor counts its true elements as int64, over all or some dims") {
  const Tensor m = from_vector({true, false, true, true, true, false}, {2, 3});
  const Tensor all = sum(m);
  CHECK(all.dtype() == i64);
  CHECK(all.ndim() == 0);
  CHECK(all.item<std::int64_t>() == 4);
  CHECK(m.sum().item<std::int64_t>() == 4);
  const Tensor rows = sum(m, {1});
  CHECK(rows.dtype() == i64);
  CHECK(ints(rows) == std::vector<std::int64_t>{2, 2});
  CHECK(ints(sum(m, {0}, true)) == std::vector<std::int64_t>{2, 1, 1});
  CHECK(sum(m, {0}, true).shape() == Shape{1, 3});
  CHECK(sum(zeros({0, 4}, b8)).item<std::int64_t>() == 0);
  // Accuracy without converting: the count of eq(argmax, target).
  const Tensor logits = from_vector(std::vector<float>{0.1f, 2.0f, 0.3f, 1.5f, 0.2f, 0.1f}, {2, 3});
  CHECK(sum(eq(argmax(logits, 1), from_vector({1, 2}))).item<std::int64_t>() == 1);
  // mean of bool is arithmetic: refused as PyTorch does.
  check_throws_msg<DtypeError>([&] { (void)mean(m); }, {"mean", "bool", ".to(xg::f32)"});
}

TEST_CASE("arithmetic with a bool operand is a DtypeError naming the op, both dtypes and the fix") {
  const Tensor x = from_vector(std::vector<float>{1.0f, 2.0f});
  const Tensor m = from_vector({true, false});
  const std::vector<std::string> both = {"float32 [2]", "bool [2]", ".to(xg::f32)", "where/masked_fill"};
  auto with = [](const char* op, std::vector<std::string> n) {
    n.insert(n.begin(), op);
    return n;
  };
  check_throws_msg<DtypeError>([&] { (void)add(x, m); }, with("add", both));
  check_throws_msg<DtypeError>([&] { (void)sub(m, x); }, with("sub", {"bool [2]", "float32 [2]", ".to(xg::f32)"}));
  check_throws_msg<DtypeError>([&] { (void)mul(x, m); }, with("mul", both));
  check_throws_msg<DtypeError>([&] { (void)div(x, m); }, with("div", both));
  check_throws_msg<DtypeError>([&] { (void)(x * m); }, with("mul", both));
  check_throws_msg<DtypeError>([&] { (void)add(m, m); }, {"add", "bool [2] and bool [2]", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)maximum(x, m); }, {"maximum", "bool", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)matmul(reshape(x, {1, 2}), reshape(m, {2, 1})); },
                               {"matmul", "float32 [1,2]", "bool [2,1]", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)add(m, 1.0); }, {"add", "bool [2]", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)mul(m, 2.0); }, {"mul", "bool [2]", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)rsub(1.0, m); }, {"bool [2]", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)neg(m); }, {"bool [2]", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)exp(m); }, {"exp", "bool [2]", ".to(xg::f32)"});
  check_throws_msg<DtypeError>([&] { (void)tanh(m); }, {"tanh", "bool"});
  check_throws_msg<DtypeError>([&] { (void)sigmoid(m); }, {"sigmoid", "bool"});
  check_throws_msg<DtypeError>([&] { (void)softmax(m, 0); }, {"softmax", "bool"});
  check_throws_msg<DtypeError>([&] { (void)max(m); }, {"max", "bool"});
  check_throws_msg<DtypeError>([&] { (void)linear(reshape(m, {1, 2}), ones({3, 2})); }, {"linear", "bool"});
  // In place too: a bool handle is never silently promoted.
  Tensor y = x.clone();
  check_throws_msg<DtypeError>([&] { y += m; }, {"bool", ".to(xg::f32)"});
  // The fix named in the messages works.
  check_values(add(x, m.to(f32)), {2.0, 2.0}, 0, 0);
}

TEST_CASE("requires_grad on a bool tensor is a DtypeError (only floating tensors have gradients)") {
  Tensor m = from_vector({true, false});
  check_throws_msg<DtypeError>([&] { m.requires_grad_(); }, {"requires_grad_", "bool"});
  CHECK_FALSE(m.requires_grad());
  m.requires_grad_(false);  // turning it off is fine
  // Comparisons of tensors that require grad record nothing.
  Tensor w = rnd({3}).requires_grad_();
  const Tensor c = gt(w, 0.0);
  CHECK(c.dtype() == b8);
  CHECK_FALSE(c.requires_grad());
  CHECK(c.is_leaf());
}

TEST_CASE("npy: bool saves as |b1 and loads back; numpy's |b1 mask and |u1 array load with exact values") {
  xgtest::TempDir dir;
  const Tensor m = from_vector({true, false, false, true, true, false}, {3, 2});
  save_npy(dir.file("m.npy"), m);
  const std::string bytes = npy_bytes(m);
  CHECK(bytes.find("'descr': '|b1'") != std::string::npos);
  const Tensor back = load_npy(dir.file("m.npy"));
  CHECK(back.dtype() == b8);
  CHECK(back.shape() == Shape{3, 2});
  CHECK(back.to_vector<bool>() == m.to_vector<bool>());
  CHECK(npy_from_bytes(bytes).to_vector<bool>() == m.to_vector<bool>());

  const std::string fx = std::string(XGRAD_FIXTURES_DIR) + "/npy/";
  const Tensor mask = load_npy(fx + "b1_mask_2x4.npy");
  CHECK(mask.dtype() == b8);
  CHECK(mask.shape() == Shape{2, 4});
  CHECK(mask.to_vector<bool>() == std::vector<bool>{true, true, true, false, true, false, false, false});
  // The mask numpy saved is the one lengths_to_mask builds.
  CHECK(nn::utils::lengths_to_mask({3, 1}, 4).to_vector<bool>() == mask.to_vector<bool>());
  const Tensor u = load_npy(fx + "u1_5.npy");
  CHECK(u.dtype() == i64);
  CHECK(ints(u) == std::vector<std::int64_t>{0, 1, 7, 200, 255});
}

TEST_CASE("npy: a |b1 byte other than 0/1 reads as true (as numpy), never as an invalid bool") {
  std::string bytes = npy_bytes(from_vector({false, true, false, false}));
  // The values are the last four bytes: forge 2 and 255 where numpy wrote 0.
  bytes[bytes.size() - 4] = 2;
  bytes[bytes.size() - 1] = static_cast<char>(255);
  const Tensor t = npy_from_bytes(bytes, "forged");
  CHECK(t.to_vector<bool>() == std::vector<bool>{true, true, false, true});
  // Normalised bytes: converting gives exactly 1, and the count is 3.
  CHECK(ints(t) == std::vector<std::int64_t>{1, 1, 0, 1});
  CHECK(sum(t).item<std::int64_t>() == 3);
  // A |b1 header whose shape needs more bytes than are present is refused as before.
  std::string cut = npy_bytes(from_vector({true, true, true}));
  cut.pop_back();
  check_throws_msg<IOError>([&] { (void)npy_from_bytes(cut, "cut.npy"); }, {"cut.npy", "|b1"});
}

TEST_CASE("npz: numpy's masks.npz (|b1 and |u1 entries) loads exactly; bool entries round-trip") {
  const auto d = load_npz(std::string(XGRAD_FIXTURES_DIR) + "/npz/masks.npz");
  REQUIRE(d.size() == 2);
  CHECK(d[0].first == "mask");
  CHECK(d[0].second.dtype() == b8);
  CHECK(d[0].second.shape() == Shape{2, 3});
  CHECK(d[0].second.to_vector<bool>() == std::vector<bool>{true, true, true, true, false, false});
  CHECK(d[1].first == "bytes");
  CHECK(d[1].second.dtype() == i64);
  CHECK(ints(d[1].second) == std::vector<std::int64_t>{0, 1, 128, 255});
  xgtest::TempDir dir;
  save_npz(dir.file("b.npz"), {{"keep", d[0].second}, {"n", scalar(3, i64)}});
  const auto back = load_npz(dir.file("b.npz"));
  CHECK(back[0].second.dtype() == b8);
  CHECK(back[0].second.to_vector<bool>() == d[0].second.to_vector<bool>());
}

TEST_CASE("attention masks: bool masks give the same weights as the float / int64 masks of earlier code") {
  Generator g(3);
  const std::int64_t B = 2, L = 4, D = 6;
  const Tensor keep = nn::utils::lengths_to_mask({4, 2});  // bool [2,4]
  const Tensor scores = randn({B, L}, f64, &g);
  check_close(masked_softmax(scores, keep), masked_softmax(scores, keep.to(f64)), 0, 0);
  CHECK(masked_softmax(scores, keep).to_vector<double>()[6] == 0.0);

  nn::AdditiveAttention add_att(3, D, 5);
  const Tensor enc = randn({B, L, D}, f32, &g), q = randn({B, 3}, f32, &g);
  auto a1 = add_att(q, enc, Tensor(), keep);
  auto a2 = add_att(q, enc, Tensor(), keep.to(f32));
  check_close(a1.weights, a2.weights, 0, 0);

  nn::DotAttention dot(nn::DotScore::scaled);
  check_close(dot(randn({B, 2, D}, f32, &g), enc, Tensor(), keep).weights.sum(), scalar(2.0 * B, f32), 1e-5);

  nn::MultiheadAttention mha(nn::MultiheadAttentionOptions{.embed_dim = D, .num_heads = 2, .batch_first = true});
  const Tensor x = randn({B, 3, D}, f32, &g);
  nn::MultiheadAttentionForwardOptions fb, fi;
  fb.key_padding_mask = logical_not(keep);  // PyTorch's convention: true = ignore
  fi.key_padding_mask = logical_not(keep).to(i64);
  fb.attn_mask = from_vector({false, false, false, true, false, false, false, true, false, false, false, true}, {3, 4});
  fi.attn_mask = fb.attn_mask.to(i64);
  const auto mb = mha(x, enc, enc, fb), mi = mha(x, enc, enc, fi);
  check_close(mb.weights, mi.weights, 0, 0);
  check_close(mb.context, mi.context, 0, 0);
  // Masked keys (padding of entry 1, and key 3 by attn_mask) get exactly zero weight.
  const std::vector<double> w = mb.weights.to_vector<double>();
  for (int l = 0; l < 3; ++l) {
    CHECK(w[static_cast<std::size_t>(l * 4 + 3)] == 0.0);
    CHECK(w[static_cast<std::size_t>(12 + l * 4 + 2)] == 0.0);
  }
}

TEST_CASE("temporal_cross_entropy takes a bool mask: the same loss and gradient as the 0/1 float mask") {
  const Tensor mask = nn::utils::lengths_to_mask({3, 1});  // bool [2,3]
  const Tensor targets = from_vector({1, 2, 0, 3, 0, 0}, {2, 3});
  Tensor l1 = rnd({2, 3, 4}).requires_grad_();
  Tensor l2 = l1.detach().clone().requires_grad_();
  const Tensor a = nn::temporal_cross_entropy(l1, targets, mask);
  const Tensor b = nn::temporal_cross_entropy(l2, targets, mask.to(f64));
  check_close(a, b, 0, 0);
  a.backward();
  b.backward();
  check_close(l1.grad(), l2.grad(), 0, 0);
  gradcheck_ok([&](const std::vector<Tensor>& v) { return nn::temporal_cross_entropy(v[0], targets, mask); },
               {rnd({2, 3, 4})});
}

TEST_CASE("lengths_to_mask: true where t < lengths[b]; T from max(lengths) or max_len") {
  const Tensor m = nn::utils::lengths_to_mask(from_vector({2, 0, 3}));
  CHECK(m.dtype() == b8);
  CHECK(m.shape() == Shape{3, 3});
  CHECK(m.to_vector<bool>() == std::vector<bool>{true, true, false, false, false, false, true, true, true});
  const Tensor w = nn::utils::lengths_to_mask(from_vector({1, 2}), 4);
  CHECK(w.shape() == Shape{2, 4});
  CHECK(sum(w).item<std::int64_t>() == 3);
  CHECK(nn::utils::lengths_to_mask(std::vector<std::int64_t>{}).shape() == Shape{0, 0});
  CHECK(nn::utils::lengths_to_mask(from_vector({0, 0})).shape() == Shape{2, 0});
  CHECK(nn::utils::lengths_to_mask({2}, 0 + 2).to_vector<bool>() == std::vector<bool>{true, true});
}

TEST_CASE("lengths_to_mask: bad lengths are errors naming the function, the entry and the shapes") {
  check_throws_msg<ShapeError>([] { (void)nn::utils::lengths_to_mask(from_vector({2, -1})); },
                               {"lengths_to_mask", "[2]", "entry 1", "-1", ">= 0"});
  check_throws_msg<DtypeError>([] { (void)nn::utils::lengths_to_mask(from_vector(std::vector<double>{2.0})); },
                               {"lengths_to_mask", "int64", "float64 [1]", ".to(xg::i64)"});
  check_throws_msg<DtypeError>([] { (void)nn::utils::lengths_to_mask(from_vector({true})); },
                               {"lengths_to_mask", "bool"});
  check_throws_msg<ShapeError>([] { (void)nn::utils::lengths_to_mask(from_vector({1, 2}, {1, 2})); },
                               {"lengths_to_mask", "[1,2]", "1-D"});
  check_throws_msg<ShapeError>([] { (void)nn::utils::lengths_to_mask(from_vector({1, 5}), 4); },
                               {"lengths_to_mask", "entry 1", "5", "max_len = 4"});
  check_throws_msg<ShapeError>([] { (void)nn::utils::lengths_to_mask(std::vector<std::int64_t>{-3}); },
                               {"lengths_to_mask", "entry 0", "-3"});
  check_throws_msg<StateError>([] { (void)nn::utils::lengths_to_mask(Tensor()); }, {"lengths_to_mask"});
}

TEST_CASE("pad_sequence: values, both layouts, padding_value, int64 and bool sequences") {
  const Tensor a = from_vector({1.0, 2.0, 3.0}, {3, 1}), b = from_vector({4.0}, {1, 1});
  const Tensor c = from_vector({5.0, 6.0}, {2, 1});
  const Tensor tm = nn::utils::pad_sequence({a, b, c});
  CHECK(tm.shape() == Shape{3, 3, 1});  // [T, B, *]
  check_values(tm, {1, 4, 5, 2, 0, 6, 3, 0, 0}, 0, 0);
  const Tensor bf = nn::utils::pad_sequence({a, b, c}, true, -1.0);
  CHECK(bf.shape() == Shape{3, 3, 1});  // [B, T, *]
  check_values(bf, {1, 2, 3, 4, -1, -1, 5, 6, -1}, 0, 0);
  // 1-D sequences give [T, B] / [B, T]; an empty sequence is all padding.
  const Tensor one = nn::utils::pad_sequence({from_vector({1, 2}), from_vector(std::vector<std::int64_t>{})}, true);
  CHECK(one.dtype() == i64);
  CHECK(one.shape() == Shape{2, 2});
  CHECK(ints(one) == std::vector<std::int64_t>{1, 2, 0, 0});
  const Tensor masks = nn::utils::pad_sequence({from_vector({true}), from_vector({true, true})}, true);
  CHECK(masks.dtype() == b8);
  CHECK(masks.to_vector<bool>() == std::vector<bool>{true, false, true, true});
  // The batch of lengths and the padded batch agree.
  CHECK(sum(eq(reshape(ne(bf, -1.0), {3, 3}), nn::utils::lengths_to_mask({3, 1, 2}))).item<std::int64_t>() == 9);
}

TEST_CASE("pad_sequence: float64 gradcheck over several shapes, layouts and lengths (1, equal, all different)") {
  const std::vector<std::vector<Shape>> cases = {
      {{3, 2}, {1, 2}, {2, 2}},        // all lengths differ
      {{2, 3}, {2, 3}},                // equal lengths: no padding
      {{1}, {4}, {1}},                 // 1-D, length-1 sequences
      {{2, 2, 2}, {3, 2, 2}},          // trailing dims [2, 2]
      {{0, 2}, {2, 2}},                // an empty sequence
  };
  for (const auto& shapes : cases) {
    std::vector<Tensor> inputs;
    for (std::size_t i = 0; i < shapes.size(); ++i) inputs.push_back(rnd(shapes[i], -1.0, 1.0, 10 + i));
    for (bool batch_first : {false, true}) {
      INFO("first shape " << shapes[0].str() << ", batch_first " << batch_first);
      gradcheck_ok([batch_first](const std::vector<Tensor>& v) { return nn::utils::pad_sequence(v, batch_first, 0.5); },
                   inputs);
    }
  }
  // The padding gets no gradient; each sequence gets its own rows of g.
  Tensor a = rnd({2, 1}).requires_grad_(), b = rnd({1, 1}).requires_grad_();
  const Tensor y = nn::utils::pad_sequence({a, b}, true);  // [2, 2, 1]
  y.backward(from_vector({1.0, 2.0, 3.0, 4.0}, {2, 2, 1}));
  check_values(a.grad(), {1, 2}, 0, 0);
  check_values(b.grad(), {3}, 0, 0);
}

TEST_CASE("pad_sequence: bad input is an error naming the function and the shapes") {
  check_throws_msg<ShapeError>([] { (void)nn::utils::pad_sequence({}); }, {"pad_sequence", "empty list"});
  check_throws_msg<ShapeError>([] { (void)nn::utils::pad_sequence({rnd({2, 3}), rnd({2, 4})}); },
                               {"pad_sequence", "sequence 1", "[2,4]", "[2,3]"});
  check_throws_msg<ShapeError>([] { (void)nn::utils::pad_sequence({rnd({2, 3}), rnd({2})}); },
                               {"pad_sequence", "sequence 1", "[2]", "[2,3]"});
  check_throws_msg<DtypeError>([] { (void)nn::utils::pad_sequence({rnd({2, 3}), rnd({1, 3}).to(f32)}); },
                               {"pad_sequence", "sequence 1", "float32 [1,3]", "float64 [2,3]"});
  check_throws_msg<ShapeError>([] { (void)nn::utils::pad_sequence({scalar(1.0)}); }, {"pad_sequence", "0-d"});
  check_throws_msg<StateError>([] { (void)nn::utils::pad_sequence({rnd({1}), Tensor()}); },
                               {"pad_sequence", "sequence 1"});
}
