#pragma once
// .npy files: one tensor each, numpy's format (numpy.load opens them).
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tensor.hpp"

namespace xg {

// The most tensor memory one load_npy / load_npz call allocates by default: three
// quarters of the machine's physical memory (at least 1 GiB). A file that needs more
// could not be loaded anyway, and a forged one must fail before it costs anything.
std::uint64_t default_load_max_bytes();

struct LoadOptions {
  // Bytes of tensor memory a load may allocate in total (an int32 file counts as the
  // int64 it becomes). Beyond it: IOError naming the path, the entry and the bytes,
  // before allocating. Raise it to load a huge file on purpose.
  std::uint64_t max_bytes = default_load_max_bytes();
};

// Saving writes a temp file beside the file the path names and renames it over that
// file: a symlink (or a chain of them) is followed and kept, its target replaced (a
// dangling symlink gets its target created). A directory, FIFO, socket or device at the
// path is refused with an IOError naming it, and left untouched. Loading refuses
// anything but a regular file (a FIFO would block forever) the same way.

// Writes float32 / float64 / int64 in little-endian C order, bool as '|b1'. Throws IOError.
void save_npy(const std::string& path, const Tensor& t);
// Reads '<f4', '<f8', '<i8' (and '<i4' and '|u1', read as int64) and '|b1' (bool; a byte
// other than 0 or 1 reads as true, as in numpy) C-order arrays. Anything else,
// a truncated file or a forged header is an IOError, checked before allocating.
Tensor load_npy(const std::string& path, const LoadOptions& options = {});

// The same, to and from bytes in memory (what a .npz entry holds).
std::string npy_bytes(const Tensor& t);
Tensor npy_from_bytes(const std::string& bytes, const std::string& what = "npy");

// .npz: a zip of "<name>.npy" entries, in order (numpy.load(path) opens it; names may
// contain dots). Saving is atomic: a temp file in the same directory, fsync, rename.
// Loading validates the archive and every entry before returning; a truncated or
// corrupt file is an IOError naming the path (and the entry), never a crash.
void save_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& entries);
// Each entry's npy header is read first (only its bytes are inflated) and must agree
// with the size the zip directory states for the entry; the values are then inflated
// straight into the tensor, never past that size.
std::vector<std::pair<std::string, Tensor>> load_npz(const std::string& path, const LoadOptions& options = {});

namespace detail {
// Fault injection for tests: called by save_npz after the temp file is written and synced
// and just before it is renamed over the target, the moment at which a crash must leave
// the previous file intact. nullptr (the default) disables it.
using SaveNpzHook = void (*)(const std::string& tmp_path);
void set_save_npz_hook(SaveNpzHook hook);

// Shared by the loaders and savers of npy, npz, checkpoints and text corpora.

// Opens `path` read-only after checking it is a regular file, without blocking on a
// FIFO or a device (O_NONBLOCK, then fstat of the opened descriptor, so a file swapped
// in between is caught). IOError "<op>: '<path>' is a FIFO ..." otherwise. The caller
// closes the returned descriptor; *size gets the file's size.
int open_regular_file(const char* op, const std::string& path, std::uint64_t* size);
// The file a save to `path` replaces: symlinks followed (up to 40). Refuses a target
// that exists and is not a regular file, with an IOError naming it.
std::string resolve_save_target(const char* op, const std::string& path);

// Tensor memory left to a load (LoadOptions::max_bytes), charged before each allocation.
struct LoadBudget {
  std::uint64_t max_bytes = 0;
  std::uint64_t used = 0;
};
// Reads one .npy of `total` bytes through read(p, n), which fills exactly n bytes or
// throws. `what` prefixes every error ("load_npz: 'a.npz': entry 'w.npy'").
Tensor read_npy(std::uint64_t total, const std::function<void(char*, std::size_t)>& read, const std::string& what,
                LoadBudget& budget);
}  // namespace detail

}  // namespace xg
