// The kernels compiled once for the consumer (the other translation units build with KVCACHE_EXTERN_KERNELS).
#define KVCACHE_INSTANTIATE_KERNELS
#include <kvcache/kvcache.hpp>
