#pragma once
// char_rnn --documents: a --data directory read as separate documents (one per file), each
// a sequence of its own, rather than one concatenated stream.
//
// B slots each hold one document and the position reached in it. A step takes from every
// slot the next chunk of up to seq-len characters of its document, pads the chunks to the
// longest, and runs the LSTM with their lengths (nn::LSTM stops each row at its length, so
// the state carried to the next step is the one after that row's last real character);
// the loss is temporal_cross_entropy with the same lengths, so padding never counts. A
// slot whose document is used up takes the next document of a shuffled order and its
// state row is set to zero: the recurrent state never crosses from one document into
// another, and a document's first character is always predicted from a zero state.
//
// --check adds a boundary audit: every step records where each row's chunk came from
// (document, offset) and whether its state was carried, and the audit fails unless every
// row is one stretch of one document, continuing exactly where the same slot's previous
// chunk of that document ended, or starting that document at offset 0 from a state row that
// is exactly zero. On the first steps it also reruns every row alone (batch 1, no padding)
// from its own state row: its logits must equal the padded batch's, so no other row (nor
// the padding) reached it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <xgrad/xgrad.hpp>

#include "char_model.hpp"

namespace char_rnn {

struct Document {
  std::string path;  // relative to the --data directory, for messages
  std::string text;
};

// Every regular text file under `dir` (recursively, sorted by path, only names ending in
// one of `extensions` when given), one Document each. Files that are not text are skipped,
// as read_text skips them in a directory. No document of 2 chars or more: IOError.
inline std::vector<Document> read_documents(const std::string& dir, const std::vector<std::string>& extensions) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    throw xg::IOError(fmt::format("--documents: --data {} is not a directory; give a directory with one "
                                  "document per file",
                                  dir));
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    const bool match = extensions.empty() || std::any_of(extensions.begin(), extensions.end(), [&](const std::string& x) {
                         return name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0;
                       });
    if (match) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<Document> docs;
  std::int64_t total = 0;
  for (const auto& f : files) {
    // As read_text's bound: a mistaken --data / must not read a disk into memory.
    std::error_code ec;
    total += static_cast<std::int64_t>(fs::file_size(f, ec));
    if (total > (std::int64_t{1} << 30))
      throw xg::IOError(fmt::format("--documents: the files under {} exceed 1 GiB (at {}); give a smaller "
                                    "directory or --ext", dir, f.string()));
    std::ifstream in(f, std::ios::binary);
    if (!in.is_open())
      throw xg::IOError(fmt::format("--documents: cannot read {}; fix its permissions or remove it from --data",
                                    f.string()));
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    // One char cannot be both an input and a target: such a file teaches nothing.
    if (text.size() < 2 || !xg::training::is_text(text)) continue;
    docs.push_back({fs::relative(f, dir).string(), std::move(text)});
  }
  if (docs.empty())
    throw xg::IOError(fmt::format("--documents: no text file of 2 chars or more under {}{}; check --data and --ext",
                                  dir, extensions.empty() ? "" : " with the --ext endings"));
  return docs;
}

// Where each row of one step's batch came from (the boundary audit's record).
struct RowSource {
  std::int64_t doc = -1;
  std::int64_t start = 0;   // offset of the row's first input char in the document
  std::int64_t length = 0;  // input chars (targets are the next `length` chars)
  bool carried = false;     // the state row was carried from this slot's previous chunk
};

// B slots over a list of documents, each slot reading its document chunk by chunk.
class DocumentBatcher {
 public:
  DocumentBatcher(const std::vector<xg::Tensor>& docs, std::int64_t batch, std::int64_t seq_len, std::uint64_t seed)
      : docs_(docs), seq_len_(seq_len), gen_(seed), slot_doc_(batch, -1), slot_pos_(batch, 0) {}

  struct Batch {
    xg::Tensor inputs, targets;  // int64 [B, T], T = the longest chunk, padded with id 0
    xg::Tensor lengths;          // int64 [B], each in [1, T]
    xg::Tensor keep;             // [1, B, 1] in `dtype`: 1 = carry the state row, 0 = a new document
    std::vector<RowSource> rows;
  };

  Batch next(xg::Dtype dtype) {
    const auto B = static_cast<std::int64_t>(slot_doc_.size());
    Batch b;
    b.rows.resize(static_cast<std::size_t>(B));
    std::vector<xg::Tensor> in, tg;
    std::vector<std::int64_t> lengths(static_cast<std::size_t>(B));
    std::vector<double> keep(static_cast<std::size_t>(B));
    for (std::int64_t s = 0; s < B; ++s) {
      auto& doc = slot_doc_[s];
      auto& pos = slot_pos_[s];
      bool carried = doc >= 0 && pos + 1 < docs_[doc].numel();
      if (!carried) {
        doc = take();
        pos = 0;
      }
      const std::int64_t n = docs_[doc].numel();
      const std::int64_t len = std::min(seq_len_, n - 1 - pos);
      in.push_back(xg::slice(docs_[doc], 0, pos, pos + len));
      tg.push_back(xg::slice(docs_[doc], 0, pos + 1, pos + 1 + len));
      lengths[s] = len;
      keep[s] = carried ? 1.0 : 0.0;
      b.rows[s] = {doc, pos, len, carried};
      pos += len;
    }
    b.inputs = xg::nn::utils::pad_sequence(in, /*batch_first=*/true, 0.0);
    b.targets = xg::nn::utils::pad_sequence(tg, /*batch_first=*/true, 0.0);
    b.lengths = xg::from_vector(lengths);
    b.keep = xg::from_vector(keep, {1, B, 1}).to(dtype);
    return b;
  }

  std::int64_t epoch() const { return epoch_; }

 private:
  // The next document of the current shuffled pass over all of them.
  std::int64_t take() {
    if (cursor_ == order_.size()) {
      if (!order_.empty()) ++epoch_;
      order_.resize(docs_.size());
      for (std::size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<std::int64_t>(i);
      for (std::size_t i = order_.size(); i > 1; --i)
        std::swap(order_[i - 1], order_[static_cast<std::size_t>(gen_.uniform() * static_cast<double>(i)) % i]);
      cursor_ = 0;
    }
    return order_[cursor_++];
  }

  const std::vector<xg::Tensor>& docs_;
  std::int64_t seq_len_;
  xg::Generator gen_;
  std::vector<std::int64_t> slot_doc_, slot_pos_;
  std::vector<std::int64_t> order_;
  std::size_t cursor_ = 0;
  std::int64_t epoch_ = 0;
};

// The boundary audit of one step (see the top of this file): `prev` is the previous
// step's record (empty on the first step), `state_h` the state rows the step started from
// (after the reset; undefined = zeros). Throws xg::StateError naming the row on a breach.
inline void audit_rows(const std::vector<RowSource>& rows, const std::vector<RowSource>& prev,
                       const std::vector<xg::Tensor>& docs, const xg::Tensor& batch_inputs,
                       const xg::Tensor& state_h, std::int64_t step) {
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const RowSource& s = rows[r];
    const auto where = [&] { return fmt::format("--documents --check: step {}, row {} (document {}, offset {})", step, r, s.doc, s.start); };
    if (s.length < 1 || s.start + s.length + 1 > docs[s.doc].numel())
      throw xg::StateError(fmt::format("{}: length {} runs past the document's end", where(), s.length));
    const std::vector<std::int64_t> got = xg::slice(xg::select(batch_inputs, 0, static_cast<std::int64_t>(r)), 0, 0, s.length).to_vector<std::int64_t>();
    const std::vector<std::int64_t> want = xg::slice(docs[s.doc], 0, s.start, s.start + s.length).to_vector<std::int64_t>();
    if (got != want) throw xg::StateError(fmt::format("{}: the row's chars are not that stretch of the document", where()));
    if (s.carried) {
      if (prev.empty() || prev[r].doc != s.doc || prev[r].start + prev[r].length != s.start)
        throw xg::StateError(fmt::format("{}: the state was carried from another document or another place", where()));
    } else {
      if (s.start != 0) throw xg::StateError(fmt::format("{}: a fresh state in the middle of a document", where()));
      if (state_h.defined()) {
        const double m = xg::max(xg::abs(xg::select(state_h, 1, static_cast<std::int64_t>(r)))).item();
        if (m != 0.0) throw xg::StateError(fmt::format("{}: a new document starts from a state with |h| up to {}", where(), m));
      }
    }
  }
}

}  // namespace char_rnn
