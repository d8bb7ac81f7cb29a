#pragma once
// Runtime element types. f32 is what training runs in; f64 is what gradcheck runs in;
// i64 holds indices (token ids, class targets) and is never differentiable. b8 ("bool",
// one byte per element, C++ bool) holds masks and what comparisons return; it takes no
// part in arithmetic (convert with .to(xg::f32)) and is never differentiable.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace xg {

enum class Dtype : std::uint8_t { f32, f64, i64, b8 };

inline constexpr Dtype f32 = Dtype::f32;
inline constexpr Dtype f64 = Dtype::f64;
inline constexpr Dtype i64 = Dtype::i64;
inline constexpr Dtype b8 = Dtype::b8;

constexpr std::string_view dtype_name(Dtype d) {
  switch (d) {
    case Dtype::f32: return "float32";
    case Dtype::f64: return "float64";
    case Dtype::i64: return "int64";
    case Dtype::b8: return "bool";
  }
  return "?";
}

constexpr std::size_t dtype_size(Dtype d) { return d == Dtype::f32 ? 4 : d == Dtype::b8 ? 1 : 8; }
constexpr bool is_floating(Dtype d) { return d == Dtype::f32 || d == Dtype::f64; }

template <class T> constexpr Dtype dtype_of();
template <> constexpr Dtype dtype_of<float>() { return Dtype::f32; }
template <> constexpr Dtype dtype_of<double>() { return Dtype::f64; }
template <> constexpr Dtype dtype_of<std::int64_t>() { return Dtype::i64; }
template <> constexpr Dtype dtype_of<bool>() { return Dtype::b8; }

// The floating dtype factories use when none is given (per thread, like the tape).
Dtype default_dtype();
void set_default_dtype(Dtype d);

// Scoped default dtype: `DefaultDtypeGuard g(xg::f64);` builds a float64 model.
class DefaultDtypeGuard {
 public:
  explicit DefaultDtypeGuard(Dtype d) : prev_(default_dtype()) { set_default_dtype(d); }
  ~DefaultDtypeGuard() { set_default_dtype(prev_); }
  DefaultDtypeGuard(const DefaultDtypeGuard&) = delete;
  DefaultDtypeGuard& operator=(const DefaultDtypeGuard&) = delete;

 private:
  Dtype prev_;
};

}  // namespace xg
