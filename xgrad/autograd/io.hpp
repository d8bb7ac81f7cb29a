#pragma once
// .npy files: one tensor each, numpy's format (numpy.load opens them).
#include <string>

#include "xgrad/autograd/tensor.hpp"

namespace xg {

// Writes float32 / float64 / int64 in little-endian C order. Throws IOError.
void save_npy(const std::string& path, const Tensor& t);
// Reads '<f4', '<f8', '<i8' (and '<i4', read as int64) C-order arrays. Anything else,
// a truncated file or a forged header is an IOError, checked before allocating.
Tensor load_npy(const std::string& path);

// The same, to and from bytes in memory (what a .npz entry holds).
std::string npy_bytes(const Tensor& t);
Tensor npy_from_bytes(const std::string& bytes, const std::string& what = "npy");

}  // namespace xg
