// .npz archives: a zip of "<name>.npy" entries, the container numpy.savez writes.
//
// The zip layer is libzip's; each entry's bytes are npy_bytes / detail::read_npy. Saving
// builds the archive under a temp name beside the target (a symlink's target: see
// resolve_save_target) and renames it over the target only once it is complete and on
// disk. Loading trusts nothing in the file: it is opened as a regular file (never a FIFO
// or a device) and handed to libzip as that descriptor; libzip's consistency checks
// (ZIP_CHECKCONS) compare the central directory with the local headers; every entry
// name is checked before anything is inflated; of each entry only the .npy header is
// inflated first, and its shape times its item size must be exactly the size the zip
// directory states for the entry. Only then, and within LoadOptions::max_bytes, is the
// tensor allocated and the values inflated straight into it, up to that stated size and
// no further. Each entry is read to its end so libzip verifies the CRC. A bomb (a few MB
// inflating to GBs) therefore costs at most what its headers declare, and the declared
// total is refused before it is allocated.
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

std::atomic<detail::SaveNpzHook> save_hook{nullptr};

std::uint64_t le(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int k = n - 1; k >= 0; --k) v = (v << 8) | p[k];
  return v;
}

// Every entry takes a central directory record and a local header (46 + 30 bytes at least).
constexpr std::uint64_t kMinEntryBytes = 46 + 30;

// The entry count the end-of-central-directory record states (its ZIP64 form when the
// 16-bit field says 0xffff), compared with what a file of this size can hold before
// libzip sizes anything by it. An archive whose end record cannot be found is left to
// libzip to reject with its own words.
void check_stated_entries(int fd, std::uint64_t file_size, const std::string& path) {
  constexpr std::uint64_t kEnd = 22, kMaxComment = 65535;
  if (file_size < kEnd) return;
  const std::uint64_t tail_len = std::min(file_size, kEnd + kMaxComment);
  std::vector<unsigned char> tail(static_cast<std::size_t>(tail_len));
  if (::pread(fd, tail.data(), tail.size(), static_cast<off_t>(file_size - tail_len)) !=
      static_cast<ssize_t>(tail.size())) {
    return;
  }
  // The last record whose comment runs exactly to the end of the file: a comment may
  // itself hold the signature.
  std::size_t at = tail.size() - kEnd + 1;
  bool found = false;
  while (!found && at > 0) {
    --at;
    found = std::memcmp(tail.data() + at, "PK\5\6", 4) == 0 && at + kEnd + le(tail.data() + at + 20, 2) == tail.size();
  }
  if (!found) return;
  std::uint64_t count = le(tail.data() + at + 10, 2);
  const std::uint64_t end_offset = file_size - tail_len + at;
  if (count == 0xffff && end_offset >= 20) {
    unsigned char loc[20], rec[56];
    if (::pread(fd, loc, sizeof loc, static_cast<off_t>(end_offset - 20)) == 20 &&
        std::memcmp(loc, "PK\6\7", 4) == 0) {
      const std::uint64_t rec_offset = le(loc + 8, 8);
      if (rec_offset <= file_size - sizeof rec &&
          ::pread(fd, rec, sizeof rec, static_cast<off_t>(rec_offset)) == static_cast<ssize_t>(sizeof rec) &&
          std::memcmp(rec, "PK\6\6", 4) == 0) {
        count = std::max(le(rec + 24, 8), le(rec + 32, 8));
      }
    }
  }
  if (count > file_size / kMinEntryBytes) {
    throw IOError(fmt::format("load_npz: '{}': the archive claims {} entries, more than a {}-byte file can hold "
                              "(at least {} bytes each): corrupt or forged",
                              path, count, file_size, kMinEntryBytes));
  }
}

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

  const std::string target = detail::resolve_save_target("save_npz", path);
  // Unique per process and call; ZIP_EXCL / O_EXCL never clobber an existing file.
  static std::atomic<std::uint64_t> counter{0};
  const std::string tmp = fmt::format("{}.tmp.{}.{}", target, ::getpid(), counter.fetch_add(1));
  try {
    if (entries.empty()) {
      write_empty_zip(tmp, path);
    } else {
      write_zip(tmp, path, entries, blobs);
    }
    sync_file(tmp, path);
    if (const auto hook = save_hook.load()) hook(tmp);
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
      throw IOError(fmt::format("save_npz: cannot rename the temp file to '{}': {}", target, errno_text()));
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename durable. Best effort: some file systems refuse to fsync a directory,
  // and the data is already safe under one name or the other.
  const int dfd = ::open(parent_dir(target).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

std::vector<std::pair<std::string, Tensor>> load_npz(const std::string& path, const LoadOptions& options) {
  std::uint64_t file_size = 0;
  const int fd = detail::open_regular_file("load_npz", path, &file_size);
  try {
    check_stated_entries(fd, file_size, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  int code = 0;
  // The descriptor, not the path: what was checked is what libzip reads.
  std::unique_ptr<zip_t, ZipCloser> za(zip_fdopen(fd, ZIP_CHECKCONS, &code));
  if (!za) {
    ::close(fd);  // zip_fdopen leaves it open on failure
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
  // Again as libzip counted them (a second end record, a comment holding "PK\5\6").
  if (static_cast<std::uint64_t>(n) > file_size / kMinEntryBytes) {
    throw IOError(fmt::format("load_npz: '{}': the archive claims {} entries, more than a {}-byte file can hold "
                              "(corrupt or forged)",
                              path, n, file_size));
  }

  // Names first: nothing is inflated from an archive with a bad name anywhere.
  std::vector<std::string> names;
  names.reserve(static_cast<std::size_t>(n));
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
    names.push_back(std::move(name));
  }

  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(static_cast<std::size_t>(n));
  detail::LoadBudget budget{options.max_bytes, 0};
  for (zip_uint64_t i = 0; i < static_cast<zip_uint64_t>(n); ++i) {
    const std::string entry = names[i] + ".npy";
    const std::string what = fmt::format("load_npz: '{}': entry '{}'", path, entry);
    auto bad = [&](const std::string& why) { return IOError(fmt::format("{}: {}", what, why)); };

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
    // read_npy asks for the header, then for exactly the values its shape declares, and
    // the shape must account for the stated size: the inflater never runs past it.
    zip_uint64_t got = 0;
    auto read = [&](char* p, std::size_t want) {
      while (want > 0) {
        const zip_int64_t r = zip_fread(f.get(), p, want);
        if (r < 0) throw bad(zip_file_strerror(f.get()));
        if (r == 0) throw bad(fmt::format("unexpected end of data after {} of {} bytes", got, zs.size));
        got += static_cast<zip_uint64_t>(r);
        p += r;
        want -= static_cast<std::size_t>(r);
      }
    };
    Tensor t = detail::read_npy(zs.size, read, what, budget);
    // libzip checks the CRC when a read reaches the end of the entry: read once more.
    char extra = 0;
    const zip_int64_t r = zip_fread(f.get(), &extra, 1);
    if (r < 0) throw bad(zip_file_strerror(f.get()));
    if (r > 0) throw bad(fmt::format("more data than the stated {} bytes", zs.size));
    f.reset();
    out.emplace_back(names[i], std::move(t));
  }
  return out;
}

}  // namespace xg
