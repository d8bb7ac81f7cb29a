#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

// Under AddressSanitizer, a refused allocation returns null from malloc (which xgrad turns
// into xg::ResourceError) instead of aborting the test binary; options given in
// ASAN_OPTIONS still apply on top of these.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }
