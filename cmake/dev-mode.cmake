# Only when kvcache is the top-level project: tests, benches, examples and the flags they share.
include(GNUInstallDirs)

# Warnings for our own binaries only (never on the exported target).
add_library(kvcache_dev_flags INTERFACE)
target_compile_options(kvcache_dev_flags INTERFACE -Wall -Wextra -Wshadow -Wno-unused-parameter)
if(KVCACHE_WARNINGS_AS_ERRORS)
  target_compile_options(kvcache_dev_flags INTERFACE -Werror)
endif()

# The attention kernels compiled once (cmake/kvcache_kernels.cpp) instead of in every binary's translation units:
# about four fifths of a translation unit's compile time. Targets that link kvcache_kernels get KVCACHE_EXTERN_KERNELS
# and must use the build's own flags; those built with other -m, -O or dispatch settings (static_dispatch_test, the
# -O2 benches, the benches outside Release builds) stay header-only, and the libFuzzer builds compile their own copy
# (tests/fuzz). The examples' own -O3 does not reach this library: in a Debug build their kernels are Debug too.
add_library(kvcache_kernels STATIC ${CMAKE_CURRENT_LIST_DIR}/kvcache_kernels.cpp)
target_link_libraries(kvcache_kernels PUBLIC kvcache::kvcache PRIVATE kvcache_dev_flags)
target_compile_definitions(kvcache_kernels INTERFACE KVCACHE_EXTERN_KERNELS)

if(KVCACHE_BUILD_TESTS)
  include(CTest)
  add_subdirectory(tests)
endif()
if(KVCACHE_BUILD_BENCH)
  add_subdirectory(bench)
endif()
if(KVCACHE_BUILD_EXAMPLES)
  add_subdirectory(examples)
endif()
