# Only when kvcache is the top-level project: tests, benches, examples and the flags they share.
include(GNUInstallDirs)

# Warnings for our own binaries only (never on the exported target).
add_library(kvcache_dev_flags INTERFACE)
target_compile_options(kvcache_dev_flags INTERFACE -Wall -Wextra -Wshadow -Wno-unused-parameter)
if(KVCACHE_WARNINGS_AS_ERRORS)
  target_compile_options(kvcache_dev_flags INTERFACE -Werror)
endif()

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
