#pragma once
// How tensor storage is allocated: malloc, never operator new, so that a refusal is a
// null we turn into xg::ResourceError (AddressSanitizer's operator new aborts on a huge
// request even with allocator_may_return_null=1; its malloc returns null). And the
// sanitizer hooks that let AddressSanitizer see reads into a storage's padding.
#include <cstddef>
#include <cstdlib>
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

template <class T>
struct StorageAllocator {
  using value_type = T;
  StorageAllocator() = default;
  template <class U>
  StorageAllocator(const StorageAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    void* p = std::malloc(n * sizeof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const StorageAllocator<U>&) const noexcept { return true; }
};

// Marks [p, p + n) unaddressable under AddressSanitizer; nothing otherwise. free()
// clears the marks, so a storage never needs unpoisoning before it is released.
inline void poison([[maybe_unused]] const void* p, [[maybe_unused]] std::ptrdiff_t n) noexcept {
#ifdef XG_ASAN
  if (n > 0) ASAN_POISON_MEMORY_REGION(p, static_cast<std::size_t>(n));
#endif
}

}  // namespace xg::detail
