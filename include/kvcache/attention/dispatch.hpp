#pragma once

// The attention family's dispatch: kvcache::kernels::<isa>::FN for the ISA of the call, the AMX leaf included.
// Public calls resolve the ISA once (active_isa()) and stay on it for the whole layer step.

#include "kvcache/attention/detail/kernels.hpp"
#include "kvcache/attention/kernels/amx.hpp"
#include "kvcache/attention/kernels/vnni.hpp"
#include "kvcache/simd/dispatch.hpp"

#define KVCACHE_DISPATCH_ATTENTION(ISA, FN, ARGS) KVCACHE_DISPATCH_WITH_AMX(ISA, kvcache::kernels, FN, ARGS)
