#pragma once
// Text corpora for character-level models: read a file or a tree of source files, map
// bytes to token ids and back, split off a validation tail, and cut the token stream
// into B parallel streams for truncated BPTT (train_tbptt / tbptt_chunk take [B, N]).
//
//   std::string text = xg::training::read_text("src/", {.extensions = {".hpp", ".cpp"}});
//   xg::training::CharVocab vocab(text);                     // sorted distinct bytes
//   xg::Tensor ids = vocab.encode(text);                  // int64 [N]
//   auto [train, valid] = xg::training::split_tokens(ids, 0.05);   // valid = the last 5%
//   xg::Tensor streams = xg::training::batchify(train, 32);  // [32, N_train / 32]
//   extras.set_string("vocab", vocab.to_string());        // into a checkpoint ...
//   auto same = xg::training::CharVocab::from_string(info.extras.get_string("vocab"));  // ... and back
//
// A "character" is one byte: UTF-8 text is modelled byte by byte (a multi-byte character
// is several tokens), so every file maps onto at most 256 ids and decode(encode(t)) == t.
//
// Everything here reads untrusted input: a bad file, a corrupt vocabulary string or an
// out-of-range id throws an xg::Error subclass naming the function and the culprit; it
// never aborts.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../autograd/tensor.hpp"

#include "namespace.hpp"

namespace xg::training {

struct ReadTextOptions {
  // For a directory: only files whose name ends with one of these (".cpp", ".txt", or a
  // whole name like "Makefile"). Empty: every regular file. Ignored when the path is a file.
  std::vector<std::string> extensions = {};
  // Upper bound on the returned text, in bytes (IOError naming the path beyond it), so a
  // mistaken --data /  does not read a disk into memory.
  std::int64_t max_bytes = std::int64_t{1} << 30;
};

// The text of `path`:
// - a regular file: its bytes. A file that is not text (a NUL byte or invalid UTF-8) is
//   an IOError naming it and the offset of the first bad byte.
// - a directory: every regular file under it (recursively; symlinked directories are not
//   followed, unreadable subdirectories are skipped) that matches `extensions`, in sorted
//   path order, each ended with '\n' if it does not end with one, concatenated. Files that
//   are not text are skipped silently (a stray binary in a source tree is not fatal).
//   No matching text file at all is an IOError naming the directory.
// A path that does not exist or cannot be read: IOError naming it.
std::string read_text(const std::string& path, const ReadTextOptions& options = {});

// True when `bytes` has no NUL byte and is valid UTF-8 (no overlong forms, surrogates or
// code points above U+10FFFF). *bad_offset (when given) receives the first offending
// byte's offset, or -1.
bool is_text(std::string_view bytes, std::int64_t* bad_offset = nullptr);

// A byte as it should appear in a message: 'a', '\n', '\x00', '\xc3'.
std::string describe_char(unsigned char c);

// Byte <-> token id. Ids are 0 .. size()-1 in increasing byte order, so a vocabulary is
// determined by its set of bytes, and to_string() (the bytes in order) is its whole state.
class CharVocab {
 public:
  CharVocab() { build_index(); }  // empty: size() == 0
  // The distinct bytes of `text`, sorted.
  explicit CharVocab(std::string_view text);
  // The inverse of to_string(): `chars` must be strictly increasing bytes (what
  // to_string() gives), else Error naming the first offending position — a corrupt or
  // foreign string is rejected rather than silently giving another mapping.
  static CharVocab from_string(std::string_view chars);
  // The vocabulary's bytes in id order.
  std::string to_string() const { return chars_; }
  const std::string& chars() const { return chars_; }

  std::int64_t size() const { return static_cast<std::int64_t>(chars_.size()); }
  bool contains(char c) const { return id_of_[static_cast<unsigned char>(c)] >= 0; }
  // The id of c; IndexError naming the char when it is not in the vocabulary.
  std::int64_t id(char c) const;
  // The char of id; IndexError naming id and size() when out of range.
  char chr(std::int64_t id) const;

  // int64 [text.size()]. A byte not in the vocabulary: IndexError naming it and its
  // offset (e.g. a --prime text with a character the model never saw).
  Tensor encode(std::string_view text) const;
  // The same, but unknown bytes map to `fallback`'s id (for running a model over text it
  // was not trained on); fallback itself must be in the vocabulary (IndexError otherwise).
  Tensor encode(std::string_view text, char fallback) const;
  // ids: int64 of any shape, read in row-major order (DtypeError otherwise); an id outside
  // [0, size()) is an IndexError naming it.
  std::string decode(const Tensor& ids) const;
  std::string decode(const std::vector<std::int64_t>& ids) const;

  friend bool operator==(const CharVocab& a, const CharVocab& b) { return a.chars_ == b.chars_; }

 private:
  void build_index();
  std::string chars_;
  std::int16_t id_of_[256];  // byte -> id, -1 when absent (filled by build_index)
};

// Where the validation part starts: the last floor(n * valid_fraction) items are held
// out, so split_point = n - floor(n * valid_fraction). valid_fraction outside [0, 1) or
// NaN, or n < 0: Error naming split.
std::int64_t split_point(std::int64_t n, double valid_fraction);
// The text cut at split_point(text.size(), valid_fraction): {train, valid}. The held-out
// part is the END of the corpus (not a random sample), so it is text the model never saw
// in any context.
std::pair<std::string, std::string> split_text(std::string_view text, double valid_fraction);
// The same for a 1-D token tensor: {tokens[:p], tokens[p:]} (copies). Not 1-D: ShapeError.
std::pair<Tensor, Tensor> split_tokens(const Tensor& tokens, double valid_fraction);

// tokens int64 [N] -> [B, N / B]: row b is tokens[b*L : (b+1)*L] with L = N / B (the
// N mod B tail is dropped), so each row is a contiguous stretch of the text and B
// streams run through truncated BPTT side by side. Position t of all rows is one batch.
// tokens not int64 (DtypeError) or not 1-D (ShapeError), B < 1, or N < B (fewer than one
// token per stream): Error naming batchify and the shape.
Tensor batchify(const Tensor& tokens, std::int64_t batch);

}  // namespace xg::training
