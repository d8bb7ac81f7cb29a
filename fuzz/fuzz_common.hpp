#pragma once
// Shared by the fuzz targets: the loaders under test take a path, so each input is
// written to one per-process file in /dev/shm (memory, not disk) first.
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

namespace xgfuzz {

inline const std::string& scratch_path(const char* tag) {
  static const std::string path = [&] {
    const char* dir = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return std::string(dir) + "/xgrad_fuzz_" + tag + "_" + std::to_string(::getpid());
  }();
  return path;
}

inline const std::string& write_input(const char* tag, const std::uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path(tag);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();  // the harness itself failed, not xgrad
  if (size && std::fwrite(data, 1, size, f) != size) __builtin_trap();
  std::fclose(f);
  return path;
}

}  // namespace xgfuzz
