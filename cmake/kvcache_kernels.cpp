// The attention kernels compiled once, for every ISA (core/macros.hpp, "Compiled kernels"). The project's tests,
// examples and benches link this object and build with KVCACHE_EXTERN_KERNELS; an engine can do the same with a
// translation unit of these two lines.
#define KVCACHE_INSTANTIATE_KERNELS
#include <kvcache/kvcache.hpp>
