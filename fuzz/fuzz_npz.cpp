// .npz archives (state dicts): load_npz must return entries or throw xg::Error.
#include <cstdint>

#include <xgrad/xgrad.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = xgfuzz::write_input("npz", data, size);
  try {
    for (const auto& [name, t] : xg::load_npz(path)) {
      if (name.empty() || !t.defined()) __builtin_trap();
      (void)xg::npy_bytes(t);  // reads every element
    }
  } catch (const xg::Error&) {
  }
  return 0;
}
