// .npy bytes: npy_from_bytes must return a tensor or throw xg::Error, never crash,
// never allocate what the header claims before checking the bytes are there.
#include <cstdint>
#include <string>

#include <xgrad/xgrad.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const xg::Tensor t = xg::npy_from_bytes(bytes, "fuzz");
    // A tensor that loaded must be whole: touch every element, and round-trip it.
    if (t.numel() > 0 && xg::npy_bytes(t).size() < static_cast<std::size_t>(t.numel())) __builtin_trap();
  } catch (const xg::Error&) {
  }
  return 0;
}
