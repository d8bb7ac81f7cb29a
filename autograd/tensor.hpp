#pragma once
// xg::Tensor: a cheap shared handle to a value, its dtype and shape, an optional .grad(),
// and the link to the tape node that produced it (see tape.hpp for how that link is used).
// Copying a Tensor aliases it, like torch::Tensor. Values are row-major and contiguous.
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "../backend/error.hpp"
#include "shape.hpp"

namespace xg {

class TensorImpl;

// Options of Tensor::backward, as PyTorch's: create_graph records the backward itself (so
// gradients can be differentiated again); retain_graph keeps the walked graph for another
// backward and defaults to create_graph.
struct BackwardOptions {
  std::optional<bool> retain_graph = std::nullopt;
  bool create_graph = false;
};

class Tensor {
 public:
  // An undefined tensor (defined() == false); most calls on it throw StateError.
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Uninitialised storage of the given shape; the building block of every op.
  static Tensor empty(const Shape& shape, Dtype dtype);

  bool defined() const { return impl_ != nullptr; }
  inline const Shape& shape() const;
  inline int ndim() const;
  inline std::int64_t numel() const;
  // Size of one dimension; negative dims count from the end.
  std::int64_t size(int dim) const;
  inline Dtype dtype() const;

  // The value of a one-element tensor, converted to double.
  double item() const;
  template <class T> T item() const { return static_cast<T>(item()); }

  // Raw element access (row-major). T must match dtype() (DtypeError otherwise).
  // Writing through data() is not recorded (it is how optimizers update parameters), but
  // it is seen: data<T>() on a non-const tensor, and data_ptr(), count as a write and bump
  // version(), so a backward that saved these values refuses to use them (StateError).
  // Read with data<const T>() or through a const Tensor&: that does not bump.
  template <class T> T* data();
  template <class T> const T* data() const;
  inline void* data_ptr();
  inline const void* data_ptr() const;
  // How many times the values were (possibly) written in place since the storage was
  // made: PyTorch's _version. Shared by every view and detach() of the same storage.
  inline std::uint32_t version() const;
  // Counts a write made some other way: through a pointer kept from earlier, across other
  // ops. Call it after each such write; until then the engine may still use what it knew
  // (a backward's saved values, a parameter's packed panels in matmul and linear).
  inline void bump_version();
  // Copy of the values, converted to T.
  template <class T> std::vector<T> to_vector() const;

  // A copy with its own storage and no history (clone of a tensor that requires grad
  // is recorded: its gradient flows back).
  Tensor clone() const;
  // Same storage, no history: the cut for truncated BPTT.
  Tensor detach() const;
  // Converted copy, recorded (the gradient is converted back). Same dtype: returns *this.
  Tensor to(Dtype dtype) const;

  // ---- methods as in LibTorch: each is the free function of ops.hpp of that name -----
  // (defined in tensor_methods.cpp, so this header stays light). Recorded like it.
  Tensor sum() const;
  Tensor sum(int dim, bool keepdim = false) const;
  Tensor sum(const std::vector<int>& dims, bool keepdim = false) const;
  // A braced list picks this one, so t.sum({}) reduces every dim (PyTorch's dim=[])
  // rather than meaning t.sum(0).
  Tensor sum(std::initializer_list<int> dims, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(int dim, bool keepdim = false) const;
  Tensor mean(const std::vector<int>& dims, bool keepdim = false) const;
  Tensor mean(std::initializer_list<int> dims, bool keepdim = false) const;
  // Both share storage with *this: tensors are always contiguous, so every reshape is a
  // view and view() never has to refuse (LibTorch's view does on non-contiguous inputs).
  Tensor reshape(const Shape& shape) const;
  Tensor view(const Shape& shape) const;
  Tensor transpose(int dim0, int dim1) const;
  // 2-D: transpose(0, 1); 0-D and 1-D: *this; more dims: ShapeError (as in PyTorch).
  Tensor t() const;
  Tensor matmul(const Tensor& other) const;
  Tensor exp() const;
  Tensor tanh() const;
  Tensor sigmoid() const;
  Tensor relu() const;
  Tensor pow(double exponent) const;
  // Index `index` along dim, which is removed. A copy, not a view as in LibTorch: writing
  // into it does not change *this (so `t[0] += 1` does not compile, see below).
  Tensor select(int dim, std::int64_t index) const;
  Tensor operator[](std::int64_t index) const;
  std::vector<Tensor> chunk(std::int64_t chunks, int dim = 0) const;

  // ---- in place: a += b, a -= b, a *= b, a /= b (b a Tensor or a number) ---------------
  // The result must have a's shape (b broadcasts to a, never the reverse: ShapeError).
  // - When autograd records the op (grad mode on, a or b requires grad), the handle `a`
  //   is rebound to the recorded result of a + b: gradients are exact, and values saved
  //   for backward are never overwritten. Other handles and views of the old `a` keep the
  //   old values (LibTorch would write through to them). A leaf that requires grad is
  //   refused (StateError), like PyTorch: rebinding would silently detach the user's
  //   handle from the parameter the model and the optimizer hold.
  // - Otherwise (NoGradGuard, or nothing requires grad) the values are written into a's
  //   storage, so every handle and view sharing it sees them, as in LibTorch: this is how
  //   parameters are updated by hand (`NoGradGuard g; w -= lr * w.grad();`). A tensor
  //   with autograd history is refused here (its graph may have saved these values).
  //   The write bumps version(), like optimizer steps and writes through data(): a
  //   pending backward that saved these values refuses them (StateError).
  // On a temporary (`t[0] += 1`, `t.reshape(s) *= 2`) they are deleted: the result would
  // be lost whenever the handle is rebound.
  Tensor& operator+=(const Tensor& other) &;
  Tensor& operator-=(const Tensor& other) &;
  Tensor& operator*=(const Tensor& other) &;
  Tensor& operator/=(const Tensor& other) &;
  Tensor& operator+=(double other) &;
  Tensor& operator-=(double other) &;
  Tensor& operator*=(double other) &;
  Tensor& operator/=(double other) &;
  Tensor& operator+=(const Tensor& other) && = delete;
  Tensor& operator-=(const Tensor& other) && = delete;
  Tensor& operator*=(const Tensor& other) && = delete;
  Tensor& operator/=(const Tensor& other) && = delete;
  Tensor& operator+=(double other) && = delete;
  Tensor& operator-=(double other) && = delete;
  Tensor& operator*=(double other) && = delete;
  Tensor& operator/=(double other) && = delete;

  // Autograd.
  inline bool requires_grad() const;
  // Marks a leaf as a parameter whose gradient accumulates into grad().
  Tensor& requires_grad_(bool on = true);
  // A leaf is a tensor not produced by a recorded op.
  bool is_leaf() const;
  // Accumulated gradient (undefined until a backward reaches this tensor).
  Tensor grad() const;
  void set_grad(const Tensor& g);
  // Drops the gradient (like PyTorch's set_to_none=true).
  void zero_grad();
  // Keep this non-leaf's gradient in grad() after backward (PyTorch's retain_grad).
  Tensor& retain_grad();
  // Backpropagates from this tensor. A tensor of more than one element needs `seed`
  // (d(loss)/d(this), same shape). The walked graph is freed unless retain_graph.
  void backward(const Tensor& seed = Tensor(), bool retain_graph = false) const;
  // loss.backward({.create_graph = true}): the backward functions record, so each grad()
  // carries history and can be differentiated again (higher-order gradients).
  void backward(const BackwardOptions& opts) const;
  void backward(const Tensor& seed, const BackwardOptions& opts) const;

  // Name of the op that produced this tensor ("leaf" otherwise).
  std::string op_name() const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  // Same underlying storage and node (aliases).
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

 private:
  const TensorImpl& checked(const char* op) const {
    if (!impl_) [[unlikely]] throw_undefined(op);
    return *impl_;
  }
  [[noreturn]] static void throw_undefined(const char* op);

  std::shared_ptr<TensorImpl> impl_;
};

inline constexpr std::uint32_t kNoNode = 0xffffffffu;

// Every storage begins with its version counter: TensorImpl::storage.get() points here,
// and the values follow on the next 64-byte line (or elsewhere, for from_blob). Bumped by
// one writer at a time in practice; relaxed load+store keeps it a plain move (no locked
// instruction on the hot path) while two racing writers still move it off the saved value.
struct StorageHeader {
  std::atomic<std::uint32_t> version{0};
  // The values are the caller's (from_blob): written without a bump, so never cached.
  bool external = false;
  void bump() { version.store(version.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
};

// What a Tensor handle points to. Users go through Tensor; ops and the tape use these
// fields directly. The shape is fixed at construction. The values may change (optimizer
// steps, writes through data(), compound assignment under NoGradGuard). So may the
// storage and dtype of a leaf: Module::to(dtype) converts a parameter through
// detail::replace_value, which swaps them here so that every handle to the parameter
// (the model's, the optimizer's, the user's) sees the converted tensor.
class TensorImpl {
 public:
  TensorImpl(const Shape& s, Dtype d, std::shared_ptr<void> storage, void* data)
      : shape(s), dtype(d), storage(std::move(storage)), data(data) {}
  ~TensorImpl();
  TensorImpl(const TensorImpl&) = delete;
  TensorImpl& operator=(const TensorImpl&) = delete;

  Shape shape;
  Dtype dtype;
  std::shared_ptr<void> storage;  // owns the bytes; points at their StorageHeader
  void* data;                     // first element
  StorageHeader& header() const { return *static_cast<StorageHeader*>(storage.get()); }
  Tensor grad;
  bool requires_grad = false;     // leaves: user-set; outputs: set by record()
  // A gradient made by backward (a .grad()): a constant whose own history is missing.
  // Ops on it are recorded so that a backward reaching it can refuse (see tape.cpp).
  bool grad_value = false;
  // History: the node that produced this tensor: its unique stamp (which also names the
  // thread whose tape holds it) and its index on that tape when it was recorded.
  std::uint64_t stamp = 0;
  std::uint32_t node = kNoNode;
  const char* op = nullptr;  // name of that node's op (kept after the tape is cleared)
};

// Bools come back as std::vector<bool> (nonzero -> true), which has no data(): declared
// here so no translation unit instantiates the generic one.
template <> std::vector<bool> Tensor::to_vector<bool>() const;

inline const Shape& Tensor::shape() const { return checked("shape").shape; }
inline int Tensor::ndim() const { return checked("ndim").shape.size(); }
inline std::int64_t Tensor::numel() const { return checked("numel").shape.numel(); }
inline Dtype Tensor::dtype() const { return checked("dtype").dtype; }
inline void* Tensor::data_ptr() {
  const TensorImpl& t = checked("data_ptr");
  t.header().bump();
  return t.data;
}
inline const void* Tensor::data_ptr() const { return checked("data_ptr").data; }
inline std::uint32_t Tensor::version() const {
  return checked("version").header().version.load(std::memory_order_relaxed);
}
inline void Tensor::bump_version() { checked("bump_version").header().bump(); }
inline bool Tensor::requires_grad() const { return checked("requires_grad").requires_grad; }

}  // namespace xg
