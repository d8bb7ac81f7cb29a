#include "tensor.hpp"

#include <cmath>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "detail/kernels.hpp"
#include "detail/storage.hpp"
#include "detail/tape_internal.hpp"
#include "tape.hpp"

namespace xg {

namespace {
thread_local Dtype t_default_dtype = Dtype::f32;

const TensorImpl& impl_of(const char* op, const std::shared_ptr<TensorImpl>& p) {
  if (!p) throw StateError(fmt::format("{}: the tensor is undefined (default-constructed Tensor)", op));
  return *p;
}

template <class To, class From>
void convert(const void* src, void* dst, std::int64_t n) {
  const From* s = static_cast<const From*>(src);
  To* d = static_cast<To*>(dst);
  // To bool: x != 0 (NaN is true, as in PyTorch); from bool: 0 or 1.
  for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<To>(s[i]);
}

template <class To>
void convert_from(Dtype from, const void* src, void* dst, std::int64_t n) {
  switch (from) {
    case Dtype::f32: convert<To, float>(src, dst, n); break;
    case Dtype::f64: convert<To, double>(src, dst, n); break;
    case Dtype::i64: convert<To, std::int64_t>(src, dst, n); break;
    case Dtype::b8: convert<To, bool>(src, dst, n); break;
  }
}

void convert_any(Dtype from, Dtype to, const void* src, void* dst, std::int64_t n) {
  switch (to) {
    case Dtype::f32: convert_from<float>(from, src, dst, n); break;
    case Dtype::f64: convert_from<double>(from, src, dst, n); break;
    case Dtype::i64: convert_from<std::int64_t>(from, src, dst, n); break;
    case Dtype::b8: convert_from<bool>(from, src, dst, n); break;
  }
}
}  // namespace

Dtype default_dtype() { return t_default_dtype; }
void set_default_dtype(Dtype d) {
  if (!is_floating(d)) throw DtypeError("set_default_dtype: the default dtype must be float32 or float64");
  t_default_dtype = d;
}

void Tensor::throw_undefined(const char* op) {
  throw StateError(fmt::format("{}: the tensor is undefined (default-constructed Tensor)", op));
}

TensorImpl::~TensorImpl() {
  if (node != kNoNode) detail::release_output(stamp, node);
}

Tensor Tensor::empty(const Shape& shape, Dtype dtype) {
  if (!numel_fits(shape)) throw_numel_error("empty: shape", shape);
  const std::int64_t n = shape.numel();  // at most 2^60: the byte count fits size_t
  if (n > (std::int64_t{1} << 60) / static_cast<std::int64_t>(dtype_size(dtype))) {
    throw ShapeError(fmt::format("empty: shape {} of {} needs more than 2^60 bytes", shape.str(), dtype_name(dtype)));
  }
  // One allocation for the bytes, and the data starts on a 64-byte line inside it: vector
  // loops split their head and tail by address, so with malloc's 16-byte alignment the
  // rounding of reductions followed the heap's layout and the same program could print
  // different losses from run to run. (Over-allocating 48 bytes is cheaper than an aligned
  // operator new, which cost ~100 ns per op.)
  // The StorageHeader (the version counter) takes the first bytes; the data starts on the
  // next line after it.
  // Under AddressSanitizer at least kGuard poisoned bytes lie on each side of the values
  // (the block past the array holds std::allocate_shared's control block, which must
  // stay addressable): a read up to 16 floats out of bounds is reported.
  constexpr std::size_t kLine = 64;
  constexpr std::size_t kGuard = detail::kAsan ? 64 : 0;
  const std::size_t bytes = static_cast<std::size_t>(n) * dtype_size(dtype);
  const std::size_t words = (bytes + kLine + 2 * kGuard + 7) / 8;
  std::shared_ptr<double[]> buf;
  try {
    buf = std::allocate_shared_for_overwrite<double[]>(detail::StorageAllocator<double>{}, words);
  } catch (const std::bad_alloc&) {
    // Nothing was recorded yet, so the tape is as it was: the caller may catch this and go on.
    const detail::AllocSite site = detail::alloc_site;
    const char* op = site.op != nullptr && site.numel == n ? site.op : "empty";
    throw ResourceError(fmt::format("{}: out of memory: a {} {} tensor needs {} bytes ({:.3g} GiB), which the "
                                    "system refused; use a smaller batch, sequence or model, or free tensors first",
                                    op, shape.str(), dtype_name(dtype), bytes, static_cast<double>(bytes) / (1 << 30)));
  }
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.get());
  auto* header = ::new (static_cast<void*>(buf.get())) StorageHeader;
  void* data =
      reinterpret_cast<void*>((addr + sizeof(StorageHeader) + kGuard + kLine - 1) & ~std::uintptr_t{kLine - 1});
  // Under AddressSanitizer the bytes around the values are poisoned, so a kernel reading
  // past either end of a tensor is reported although the read stays inside the allocation.
  detail::poison(header + 1, static_cast<char*>(data) - reinterpret_cast<char*>(header + 1));
  detail::poison(static_cast<char*>(data) + bytes, reinterpret_cast<char*>(buf.get() + words) - (static_cast<char*>(data) + bytes));
  return Tensor(detail::make_impl(shape, dtype, std::shared_ptr<void>(std::move(buf), header), data));
}

std::int64_t Tensor::size(int dim) const {
  const Shape& s = shape();
  return s[wrap_dim("size", dim, s.size())];
}

double Tensor::item() const {
  const TensorImpl& t = impl_of("item", impl_);
  if (t.shape.numel() != 1) {
    throw ShapeError(fmt::format("item: tensor of shape {} has {} elements; item() needs exactly one",
                                 t.shape.str(), t.shape.numel()));
  }
  switch (t.dtype) {
    case Dtype::f32: return *static_cast<const float*>(t.data);
    case Dtype::f64: return *static_cast<const double*>(t.data);
    case Dtype::i64: return static_cast<double>(*static_cast<const std::int64_t*>(t.data));
    case Dtype::b8: return *static_cast<const bool*>(t.data) ? 1.0 : 0.0;
  }
  return 0.0;
}

namespace {
template <class T>
T* checked_data(const std::shared_ptr<TensorImpl>& impl) {
  using V = std::remove_const_t<T>;
  const TensorImpl& t = impl_of("data", impl);
  if (t.dtype != dtype_of<V>()) {
    throw DtypeError(fmt::format("data<{}>: the tensor is {}", dtype_name(dtype_of<V>()), dtype_name(t.dtype)));
  }
  if constexpr (!std::is_const_v<T>) t.header().bump();
  return static_cast<T*>(t.data);
}
}  // namespace

template <class T>
T* Tensor::data() {
  return checked_data<T>(impl_);
}
template <class T>
const T* Tensor::data() const {
  return checked_data<const T>(impl_);
}
template float* Tensor::data<float>();
template double* Tensor::data<double>();
template std::int64_t* Tensor::data<std::int64_t>();
template const float* Tensor::data<const float>();
template const double* Tensor::data<const double>();
template const std::int64_t* Tensor::data<const std::int64_t>();
template const float* Tensor::data<float>() const;
template const double* Tensor::data<double>() const;
template const std::int64_t* Tensor::data<std::int64_t>() const;
template const float* Tensor::data<const float>() const;
template const double* Tensor::data<const double>() const;
template const std::int64_t* Tensor::data<const std::int64_t>() const;
template bool* Tensor::data<bool>();
template const bool* Tensor::data<const bool>();
template const bool* Tensor::data<bool>() const;
template const bool* Tensor::data<const bool>() const;


template <class T>
std::vector<T> Tensor::to_vector() const {
  const TensorImpl& t = impl_of("to_vector", impl_);
  std::vector<T> out(static_cast<std::size_t>(t.shape.numel()));
  convert_any(t.dtype, dtype_of<T>(), t.data, out.data(), t.shape.numel());
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<std::int64_t> Tensor::to_vector<std::int64_t>() const;
// std::vector<bool> packs bits (no data()): converted element by element.
template <>
std::vector<bool> Tensor::to_vector<bool>() const {
  const TensorImpl& t = impl_of("to_vector", impl_);
  const std::int64_t n = t.shape.numel();
  std::vector<bool> out(static_cast<std::size_t>(n));
  if (t.dtype == Dtype::b8) {
    const bool* p = static_cast<const bool*>(t.data);
    for (std::int64_t i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = p[i];
  } else {
    const std::vector<double> v = to_vector<double>();
    for (std::int64_t i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = v[static_cast<std::size_t>(i)] != 0.0 || std::isnan(v[static_cast<std::size_t>(i)]);
  }
  return out;
}

Tensor Tensor::clone() const {
  const TensorImpl& t = impl_of("clone", impl_);
  Tensor y = empty(t.shape, t.dtype);
  std::memcpy(y.data_ptr(), t.data, static_cast<std::size_t>(t.shape.numel()) * dtype_size(t.dtype));
  if (needs_record({this})) {
    // d clone = identity
    record("clone", y, {this}, [](const Tensor& g, GradSlots& dx) { dx[0] = g; });
  }
  return y;
}

Tensor Tensor::detach() const {
  const TensorImpl& t = impl_of("detach", impl_);
  return Tensor(detail::make_impl(t.shape, t.dtype, t.storage, t.data));
}

Tensor Tensor::to(Dtype dtype) const {
  const TensorImpl& t = impl_of("to", impl_);
  if (dtype == t.dtype) return *this;
  Tensor y = empty(t.shape, dtype);
  convert_any(t.dtype, dtype, t.data, y.data_ptr(), t.shape.numel());
  if (is_floating(dtype) && needs_record({this})) {
    const Dtype from = t.dtype;
    // d to(x) = g converted back to x's dtype
    record("to", y, {this}, [from](const Tensor& g, GradSlots& dx) { dx[0] = g.to(from); });
  }
  return y;
}


Tensor& Tensor::requires_grad_(bool on) {
  TensorImpl& t = const_cast<TensorImpl&>(impl_of("requires_grad_", impl_));
  if (t.node != kNoNode) {
    throw StateError(fmt::format(
        "requires_grad_: this tensor was produced by '{}' and already has a gradient history; "
        "only leaves can be marked (use detach().requires_grad_() for a new leaf)",
        op_name()));
  }
  if (on && !is_floating(t.dtype)) {
    throw DtypeError(fmt::format("requires_grad_: only float32/float64 tensors can require grad, got {} {}",
                                 dtype_name(t.dtype), t.shape.str()));
  }
  t.requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const { return impl_of("is_leaf", impl_).node == kNoNode; }

Tensor Tensor::grad() const {
  const TensorImpl& t = impl_of("grad", impl_);
  std::lock_guard lock(detail::grad_lock(&t));
  return t.grad;
}

namespace {

// A gradient that is the tensor itself, or reaches it through its own .grad() chain, is a
// reference cycle: neither tensor would ever be freed. One that shares the tensor's bytes
// would change with every step that updates the tensor (and backward would accumulate
// into the tensor itself).
void check_grad_alias(const TensorImpl& t, const Tensor& g) {
  const std::size_t bytes = static_cast<std::size_t>(t.shape.numel()) * dtype_size(t.dtype);
  const TensorImpl& gi = *g.impl();
  if (bytes > 0 && gi.storage == t.storage) {
    const auto* a = static_cast<const char*>(t.data);
    const auto* b = static_cast<const char*>(gi.data);
    if (a < b + bytes && b < a + bytes) {
      throw StateError(fmt::format("set_grad: the gradient {} {} shares memory with the tensor (it is the tensor, or "
                                   "a view or detach() of it): a step would change the gradient with the tensor. "
                                   "Pass a copy: set_grad(g.clone())",
                                   dtype_name(t.dtype), t.shape.str()));
    }
  }
  // Chains built through set_grad are acyclic (this check keeps them so), so the walk ends.
  for (Tensor h = g; h.defined(); h = h.grad()) {
    if (h.impl() == &t) {
      throw StateError(fmt::format("set_grad: the gradient {} {} is the tensor itself or has it as its own .grad(): "
                                   "the two would hold each other and never be freed. Pass a copy: "
                                   "set_grad(g.detach().clone())",
                                   dtype_name(t.dtype), t.shape.str()));
    }
  }
}

}  // namespace

void Tensor::set_grad(const Tensor& g) {
  TensorImpl& t = const_cast<TensorImpl&>(impl_of("set_grad", impl_));
  if (g.defined() && (g.shape() != t.shape || g.dtype() != t.dtype)) {
    const std::string msg = fmt::format("set_grad: gradient {} {} does not match the tensor {} {}",
                                        dtype_name(g.dtype()), g.shape().str(), dtype_name(t.dtype), t.shape.str());
    if (g.shape() != t.shape) throw ShapeError(msg);
    throw DtypeError(msg);
  }
  if (g.defined()) check_grad_alias(t, g);
  Tensor old;  // released after the lock: it may be the last handle
  std::lock_guard lock(detail::grad_lock(&t));
  old = std::exchange(t.grad, g);
}

void Tensor::zero_grad() {
  TensorImpl& t = const_cast<TensorImpl&>(impl_of("zero_grad", impl_));
  Tensor old;
  std::lock_guard lock(detail::grad_lock(&t));
  old = std::exchange(t.grad, Tensor());
}

Tensor& Tensor::retain_grad() {
  TensorImpl& t = const_cast<TensorImpl&>(impl_of("retain_grad", impl_));
  if (!t.requires_grad) throw StateError("retain_grad: the tensor does not require grad");
  detail::retain_output(*this);  // the node keeps a weak handle: see Tape::retained
  return *this;
}

void Tensor::backward(const Tensor& seed, bool retain_graph) const {
  impl_of("backward", impl_);
  detail::run_backward(*this, seed, retain_graph, false);
}

void Tensor::backward(const BackwardOptions& opts) const { backward(Tensor(), opts); }

void Tensor::backward(const Tensor& seed, const BackwardOptions& opts) const {
  impl_of("backward", impl_);
  detail::run_backward(*this, seed, opts.retain_graph.value_or(opts.create_graph), opts.create_graph);
}

std::string Tensor::op_name() const {
  const TensorImpl& t = impl_of("op_name", impl_);
  return t.op ? t.op : "leaf";
}

namespace detail {

void check_defined(const char* op, const Tensor& t) {
  if (!t.defined()) throw StateError(fmt::format("{}: an input tensor is undefined (default-constructed Tensor)", op));
}

void check_floating(const char* op, const Tensor& t) {
  check_defined(op, t);
  if (t.dtype() == Dtype::b8) {
    throw DtypeError(fmt::format("{}: expected a float32 or float64 tensor, got bool {}: arithmetic on bool is not "
                                 "defined (no silent promotion); convert with .to(xg::f32), or pick values with "
                                 "where/masked_fill",
                                 op, t.shape().str()));
  }
  if (!is_floating(t.dtype())) {
    throw DtypeError(fmt::format("{}: expected a float32 or float64 tensor, got {} {}", op, dtype_name(t.dtype()),
                                 t.shape().str()));
  }
}

void check_same_float(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a);
  check_defined(op, b);
  if (a.dtype() == Dtype::b8 || b.dtype() == Dtype::b8) {
    throw DtypeError(fmt::format("{}: {} {} and {} {}: arithmetic on bool is not defined (no silent promotion); "
                                 "convert the bool operand with .to(xg::f32) (or .to(x.dtype())), or pick values "
                                 "with where/masked_fill",
                                 op, dtype_name(a.dtype()), a.shape().str(), dtype_name(b.dtype()), b.shape().str()));
  }
  check_floating(op, a);
  check_floating(op, b);
  if (a.dtype() != b.dtype()) {
    throw DtypeError(fmt::format("{}: dtypes differ: {} {} and {} {} (convert one with .to())", op,
                                 dtype_name(a.dtype()), a.shape().str(), dtype_name(b.dtype()), b.shape().str()));
  }
}

Tensor alias(const Tensor& x, const Shape& shape) {
  const TensorImpl& t = *x.impl();
  return Tensor(detail::make_impl(shape, t.dtype, t.storage, t.data));
}

void replace_value(Tensor& dst, const Tensor& src) {
  TensorImpl& d = *dst.impl();
  const TensorImpl& s = *src.impl();
  if (d.node != kNoNode || d.shape != s.shape) {
    throw StateError(fmt::format("replace_value: {} -> {}: needs a leaf of the same shape", d.shape.str(), s.shape.str()));
  }
  // Handles (and saved copies in pending graphs) of dst now read other values: both the
  // old storage (its views) and the new one move past every version saved so far.
  const std::uint32_t v = d.header().version.load(std::memory_order_relaxed) + 1;
  d.header().bump();
  if (s.header().version.load(std::memory_order_relaxed) < v) s.header().version.store(v, std::memory_order_relaxed);
  d.storage = s.storage;
  d.data = s.data;
  d.dtype = s.dtype;
  std::lock_guard lock(grad_lock(&d));
  d.grad = Tensor();
}

void add_into(Tensor& dst, const Tensor& src) {
  dispatch_float("accumulate", dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* d = dst.data<T>();
    const T* s = src.data<T>();
    const std::int64_t n = dst.numel();
    for (std::int64_t i = 0; i < n; ++i) d[i] += s[i];
  });
}

namespace {
std::int64_t dims_product(const Shape& s, int from, int to) {
  std::int64_t p = 1;
  for (int i = from; i < to; ++i) p *= s[i];
  return p;
}
}  // namespace

void add_range_into(Tensor& dst, const Tensor& src, int d, std::int64_t start) {
  const Shape& s = dst.shape();
  const std::int64_t outer = dims_product(s, 0, d), inner = dims_product(s, d + 1, s.size());
  const std::int64_t n = s[d] * inner, run = outer == 0 ? 0 : src.numel() / outer;
  dispatch_float("accumulate", dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = dst.data<T>() + start * inner;
    const T* q = src.data<const T>();
    for (std::int64_t o = 0; o < outer; ++o, p += n, q += run) {
      for (std::int64_t i = 0; i < run; ++i) p[i] += q[i];
    }
  });
}

void add_index_into(Tensor& dst, const Tensor& src, int d, const Tensor& index) {
  const Shape& s = dst.shape();
  const std::int64_t outer = dims_product(s, 0, d), inner = dims_product(s, d + 1, s.size());
  const std::int64_t n = s[d] * inner, k = index.numel();
  const std::int64_t* ip = index.data<const std::int64_t>();
  dispatch_float("accumulate", dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = dst.data<T>();
    const T* q = src.data<const T>();
    for (std::int64_t o = 0; o < outer; ++o, p += n) {
      for (std::int64_t j = 0; j < k; ++j, q += inner) {
        T* row = p + ip[j] * inner;
        for (std::int64_t i = 0; i < inner; ++i) row[i] += q[i];
      }
    }
  });
}

Tensor embed_range(const Tensor& g, const Shape& xs, int d, std::int64_t start) {
  Tensor dx = Tensor::empty(xs, g.dtype());
  const std::int64_t outer = dims_product(xs, 0, d), inner = dims_product(xs, d + 1, xs.size());
  const std::int64_t n = xs[d] * inner, len = outer == 0 ? 0 : g.numel() / outer;
  const std::int64_t head = start * inner;
  dispatch_any(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.data<const T>();
    T* p = dx.data<T>();
    for (std::int64_t o = 0; o < outer; ++o, p += n, gp += len) {
      std::fill_n(p, head, T(0));
      std::copy_n(gp, len, p + head);
      std::fill_n(p + head + len, n - head - len, T(0));
    }
    return 0;
  });
  return dx;
}

}  // namespace detail
}  // namespace xg
