// .npz archives: a zip of "<name>.npy" entries, the container numpy.savez writes.
//
// The zip layer is libzip's; each entry's bytes are npy_bytes / npy_from_bytes. Saving
// builds the archive under a temp name beside the target and renames it over the target
// only once it is complete and on disk. Loading trusts nothing in the file: libzip's
// consistency checks (ZIP_CHECKCONS) compare the central directory with the local
// headers, every entry's stated size is bounded before we allocate for it, every entry
// is read to its end so libzip verifies the CRC, and the .npy header of each entry is
// validated by npy_from_bytes against the bytes present.
#include "io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace xg {

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string zip_code_text(int code) {
  zip_error_t err;
  zip_error_init_with_code(&err, code);
  std::string text = zip_error_strerror(&err);
  zip_error_fini(&err);
  return text;
}

// The directory holding `path`, for the fsync that makes a rename durable.
std::string parent_dir(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

void check_entry_name(const std::string& path, const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name.find('\0') != std::string::npos) {
    throw Error(fmt::format("save_npz: '{}': invalid entry name '{}' (non-empty, no '/' or NUL)", path, name));
  }
}

// What libzip writes for an archive with no entries is nothing at all (zip_close removes
// the file), but numpy.savez() with no arrays writes an empty archive: just the 22-byte
// end-of-central-directory record. We write the same so that save/load round-trips.
constexpr char kEmptyZip[22] = {'P', 'K', 5, 6};

void write_empty_zip(const std::string& tmp, const std::string& path) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) throw IOError(fmt::format("save_npz: cannot create a temp file for '{}': {}", path, errno_text()));
  const ssize_t w = ::write(fd, kEmptyZip, sizeof kEmptyZip);
  const int saved = errno;
  ::close(fd);
  if (w != static_cast<ssize_t>(sizeof kEmptyZip)) {
    errno = w < 0 ? saved : ENOSPC;
    throw IOError(fmt::format("save_npz: writing '{}' failed: {}", path, errno_text()));
  }
}

// Writes the archive to `tmp` (which must not exist yet). Throws IOError.
void write_zip(const std::string& tmp, const std::string& path,
               const std::vector<std::pair<std::string, Tensor>>& entries, const std::vector<std::string>& blobs) {
  int code = 0;
  zip_t* za = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_EXCL, &code);
  if (!za) throw IOError(fmt::format("save_npz: '{}': cannot create the archive: {}", path, zip_code_text(code)));
  auto fail = [&](const std::string& what) {
    const std::string msg = fmt::format("save_npz: '{}': {}: {}", path, what, zip_strerror(za));
    zip_discard(za);
    throw IOError(msg);
  };
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string entry = entries[i].first + ".npy";
    // The blobs outlive zip_close, so libzip may point at them instead of copying.
    zip_source_t* src = zip_source_buffer(za, blobs[i].data(), blobs[i].size(), 0);
    if (!src) fail(fmt::format("entry '{}'", entry));
    const zip_int64_t idx = zip_file_add(za, entry.c_str(), src, ZIP_FL_ENC_GUESS);
    if (idx < 0) {
      zip_source_free(src);
      fail(fmt::format("entry '{}'", entry));
    }
    // Stored like np.savez: the values are mostly incompressible floats, and a stored
    // archive can be read without inflating.
    if (zip_set_file_compression(za, static_cast<zip_uint64_t>(idx), ZIP_CM_STORE, 0) != 0) {
      fail(fmt::format("entry '{}'", entry));
    }
  }
  // zip_close writes everything; on failure the archive is still open and must be freed.
  if (zip_close(za) != 0) fail("writing the archive failed");
}

// fsync of a file we have closed (zip_close does not sync).
void sync_file(const std::string& file, const std::string& path) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IOError(fmt::format("save_npz: '{}': cannot reopen the temp file: {}", path, errno_text()));
  const int r = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (r != 0) {
    errno = saved;
    throw IOError(fmt::format("save_npz: fsync of '{}' failed: {}", path, errno_text()));
  }
}

// An RAII handle for an open archive or entry.
struct ZipCloser {
  void operator()(zip_t* za) const { zip_discard(za); }
  void operator()(zip_file_t* f) const { zip_fclose(f); }
};

// Entry sizes beyond this are rejected before allocating. Deflate compresses at most
// about 1032:1 (a 258-byte match per ~2 bits), so no genuine entry is larger than ~1032
// times the whole file: a forged size (a zip bomb or a flipped size field) is caught
// here instead of by a huge allocation. numpy.savez_compressed of a large all-zero array
// reaches 1026:1, so the margin is needed.
constexpr std::uint64_t kMaxRatio = 1100;
constexpr std::uint64_t kMaxEntryBytes = std::uint64_t{1} << 34;
// Entries up to this size are read into one allocation of their stated size.
constexpr std::uint64_t kEagerBytes = std::uint64_t{64} << 20;

std::atomic<detail::SaveNpzHook> save_hook{nullptr};

}  // namespace

void detail::set_save_npz_hook(SaveNpzHook hook) { save_hook.store(hook); }

void save_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& entries) {
  // Validate everything before touching the file system.
  std::set<std::string> seen;
  for (const auto& [name, t] : entries) {
    check_entry_name(path, name);
    if (!seen.insert(name).second) {
      throw Error(fmt::format("save_npz: '{}': duplicate entry name '{}'", path, name));
    }
    if (!t.defined()) {
      throw StateError(fmt::format("save_npz: '{}': the tensor for '{}' is undefined", path, name));
    }
  }
  std::vector<std::string> blobs;
  blobs.reserve(entries.size());
  for (const auto& [name, t] : entries) blobs.push_back(npy_bytes(t));

  // Unique per process and call; ZIP_EXCL / O_EXCL never clobber an existing file.
  static std::atomic<std::uint64_t> counter{0};
  const std::string tmp = fmt::format("{}.tmp.{}.{}", path, ::getpid(), counter.fetch_add(1));
  try {
    if (entries.empty()) {
      write_empty_zip(tmp, path);
    } else {
      write_zip(tmp, path, entries, blobs);
    }
    sync_file(tmp, path);
    if (const auto hook = save_hook.load()) hook(tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw IOError(fmt::format("save_npz: cannot rename the temp file to '{}': {}", path, errno_text()));
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename durable. Best effort: some file systems refuse to fsync a directory,
  // and the data is already safe under one name or the other.
  const int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

std::vector<std::pair<std::string, Tensor>> load_npz(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IOError(fmt::format("load_npz: cannot open '{}': {}", path, errno_text()));
  if (!S_ISREG(st.st_mode)) throw IOError(fmt::format("load_npz: '{}' is not a regular file", path));
  const auto file_size = static_cast<std::uint64_t>(st.st_size);

  int code = 0;
  std::unique_ptr<zip_t, ZipCloser> za(zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code));
  if (!za) {
    // libzip's texts are terse ("File already exists" for a duplicate name): say what it means here.
    const char* hint = code == ZIP_ER_EXISTS  ? " (two entries have the same name)"
                       : code == ZIP_ER_NOZIP ? " (truncated, corrupt, or not a .npz at all)"
                       : code == ZIP_ER_INCONS ? " (corrupt: the directory and the entries disagree)"
                                               : "";
    throw IOError(
        fmt::format("load_npz: '{}' is not a readable .npz (zip) archive: {}{}", path, zip_code_text(code), hint));
  }
  const zip_int64_t n = zip_get_num_entries(za.get(), 0);
  if (n < 0) throw IOError(fmt::format("load_npz: '{}': {}", path, zip_strerror(za.get())));

  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(static_cast<std::size_t>(n));
  std::set<std::string> seen;
  for (zip_uint64_t i = 0; i < static_cast<zip_uint64_t>(n); ++i) {
    // Raw bytes: no CP437 -> UTF-8 guessing, so a name reads back exactly as written.
    const char* raw_name = zip_get_name(za.get(), i, ZIP_FL_ENC_RAW);
    if (!raw_name) throw IOError(fmt::format("load_npz: '{}': entry {}: {}", path, i, zip_strerror(za.get())));
    const std::string entry = raw_name;
    auto bad = [&](const std::string& why) {
      return IOError(fmt::format("load_npz: '{}': entry '{}': {}", path, entry, why));
    };
    constexpr std::string_view kExt = ".npy";
    if (entry.size() <= kExt.size() || entry.compare(entry.size() - kExt.size(), kExt.size(), kExt) != 0) {
      throw bad("not a '<name>.npy' entry (is this a .npz written by numpy.savez or xgrad?)");
    }
    std::string name = entry.substr(0, entry.size() - kExt.size());
    if (name.find('/') != std::string::npos) throw bad("names with '/' are not supported");
    if (!seen.insert(name).second) throw bad("duplicate entry name");

    zip_stat_t zs;
    zip_stat_init(&zs);
    if (zip_stat_index(za.get(), i, 0, &zs) != 0) throw bad(zip_strerror(za.get()));
    if (!(zs.valid & ZIP_STAT_SIZE)) throw bad("the archive does not state its size");
    // file_size * kMaxRatio cannot overflow: past kMaxEntryBytes only the first bound matters.
    if (zs.size > kMaxEntryBytes || (file_size < kMaxEntryBytes && zs.size > file_size * kMaxRatio)) {
      throw bad(fmt::format("the stated size of {} bytes is implausible for a {}-byte file", zs.size, file_size));
    }
    if ((zs.valid & ZIP_STAT_COMP_METHOD) && (zs.valid & ZIP_STAT_COMP_SIZE) && zs.comp_method == ZIP_CM_STORE &&
        zs.comp_size != zs.size) {
      throw bad(fmt::format("stored entry: its size ({}) and its stored size ({}) differ", zs.size, zs.comp_size));
    }

    std::unique_ptr<zip_file_t, ZipCloser> f(zip_fopen_index(za.get(), i, 0));
    if (!f) throw bad(zip_strerror(za.get()));
    // The buffer grows with the data actually read (doubling past kEagerBytes), so a
    // forged size within the bounds above costs at most twice the bytes really present,
    // not a multi-gigabyte allocation; it ends at exactly the stated size.
    std::string bytes;
    bytes.resize(static_cast<std::size_t>(std::min(zs.size, kEagerBytes)));
    zip_uint64_t got = 0;
    while (got < zs.size) {
      if (got == bytes.size()) bytes.resize(static_cast<std::size_t>(std::min(zs.size, 2 * got)));
      const zip_int64_t r = zip_fread(f.get(), bytes.data() + got, bytes.size() - got);
      if (r < 0) throw bad(zip_file_strerror(f.get()));
      if (r == 0) throw bad(fmt::format("unexpected end of data after {} of {} bytes", got, zs.size));
      got += static_cast<zip_uint64_t>(r);
    }
    // libzip checks the CRC when a read reaches the end of the entry: read once more.
    char extra = 0;
    const zip_int64_t r = zip_fread(f.get(), &extra, 1);
    if (r < 0) throw bad(zip_file_strerror(f.get()));
    if (r > 0) throw bad(fmt::format("more data than the stated {} bytes", zs.size));
    f.reset();

    out.emplace_back(std::move(name), npy_from_bytes(bytes, fmt::format("load_npz: '{}': entry '{}'", path, entry)));
  }
  return out;
}

}  // namespace xg
