#pragma once
// .npy files: one tensor each, numpy's format (numpy.load opens them).
#include <string>
#include <utility>
#include <vector>

#include "tensor.hpp"

namespace xg {

// Writes float32 / float64 / int64 in little-endian C order. Throws IOError.
void save_npy(const std::string& path, const Tensor& t);
// Reads '<f4', '<f8', '<i8' (and '<i4', read as int64) C-order arrays. Anything else,
// a truncated file or a forged header is an IOError, checked before allocating.
Tensor load_npy(const std::string& path);

// The same, to and from bytes in memory (what a .npz entry holds).
std::string npy_bytes(const Tensor& t);
Tensor npy_from_bytes(const std::string& bytes, const std::string& what = "npy");

// .npz: a zip of "<name>.npy" entries, in order (numpy.load(path) opens it; names may
// contain dots). Saving is atomic: a temp file in the same directory, fsync, rename.
// Loading validates the archive and every entry before returning; a truncated or
// corrupt file is an IOError naming the path (and the entry), never a crash.
void save_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& entries);
std::vector<std::pair<std::string, Tensor>> load_npz(const std::string& path);

namespace detail {
// Fault injection for tests: called by save_npz after the temp file is written and synced
// and just before it is renamed over the target, the moment at which a crash must leave
// the previous file intact. nullptr (the default) disables it.
using SaveNpzHook = void (*)(const std::string& tmp_path);
void set_save_npz_hook(SaveNpzHook hook);
}  // namespace detail

}  // namespace xg
