#pragma once
// How tensor storage is allocated: through the caching allocator of memory.cpp (see
// memory.hpp), which takes its blocks from malloc, never operator new, so that a
// refusal is a null we turn into xg::ResourceError (AddressSanitizer's operator new
// aborts on a huge request even with allocator_may_return_null=1; its malloc returns
// null). And the sanitizer hooks that let AddressSanitizer see reads into a storage's
// padding and into cached blocks.
#include <cstddef>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define XG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XG_ASAN 1
#endif
#endif
#ifdef XG_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace xg::detail {

#ifdef XG_ASAN
inline constexpr bool kAsan = true;
#else
inline constexpr bool kAsan = false;
#endif

// A block of at least `bytes` from the calling thread's cache or the system; throws
// std::bad_alloc when the system refuses.
void* storage_alloc(std::size_t bytes);
// Returns a block from storage_alloc(bytes), with the same `bytes`.
void storage_free(void* p, std::size_t bytes) noexcept;

template <class T>
struct StorageAllocator {
  using value_type = T;
  StorageAllocator() = default;
  template <class U>
  StorageAllocator(const StorageAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(storage_alloc(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { storage_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const StorageAllocator<U>&) const noexcept { return true; }
};

// A small block (at most 512 bytes: a TensorImpl with its control block) from the
// calling thread's free lists or the system; the same pair for returning it. Blocks are
// malloc's, 16-byte aligned, so one freed on another thread simply joins that thread's lists.
void* object_alloc(std::size_t bytes);
void object_free(void* p, std::size_t bytes) noexcept;

// For std::allocate_shared of the objects every tensor has (detail::make_impl).
template <class T>
struct ObjectAllocator {
  static_assert(alignof(T) <= 16, "object_alloc gives malloc's 16-byte alignment");
  using value_type = T;
  ObjectAllocator() = default;
  template <class U>
  ObjectAllocator(const ObjectAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(object_alloc(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { object_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const ObjectAllocator<U>&) const noexcept { return true; }
};

// Marks [p, p + n) unaddressable (poison) or addressable again (unpoison) under
// AddressSanitizer; nothing otherwise.
inline void poison([[maybe_unused]] const void* p, [[maybe_unused]] std::ptrdiff_t n) noexcept {
#ifdef XG_ASAN
  if (n > 0) ASAN_POISON_MEMORY_REGION(p, static_cast<std::size_t>(n));
#endif
}
inline void unpoison([[maybe_unused]] const void* p, [[maybe_unused]] std::ptrdiff_t n) noexcept {
#ifdef XG_ASAN
  if (n > 0) ASAN_UNPOISON_MEMORY_REGION(p, static_cast<std::size_t>(n));
#endif
}

}  // namespace xg::detail
