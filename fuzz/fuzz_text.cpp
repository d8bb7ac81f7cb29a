// Text corpora: read_text on arbitrary bytes must return the text or throw xg::Error, agree
// with is_text, and the vocabulary built from what it returns must round-trip it. The same
// bytes are also tried as a stored vocabulary string (a checkpoint's "vocab" extra).
#include <cstdint>
#include <string>

#include <xgrad/xgrad.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const std::string& path = xgfuzz::write_input("text", data, size);
  bool read_ok = false;
  try {
    const std::string text = xg::training::read_text(path);
    read_ok = true;
    if (text != bytes) __builtin_trap();  // a file is returned as it is
    if (!text.empty()) {
      const xg::training::CharVocab vocab(text);
      if (vocab.decode(vocab.encode(text)) != text) __builtin_trap();
      const xg::Tensor ids = vocab.encode(text);
      const std::int64_t b = 1 + static_cast<std::int64_t>(data[0] % 8);
      if (ids.numel() >= b) (void)xg::training::batchify(ids, b);
      (void)xg::training::split_tokens(ids, 0.1);
    }
  } catch (const xg::Error&) {
  }
  if (read_ok != xg::training::is_text(bytes)) __builtin_trap();
  try {
    const auto vocab = xg::training::CharVocab::from_string(bytes);
    if (vocab.to_string() != bytes) __builtin_trap();
  } catch (const xg::Error&) {
  }
  return 0;
}
