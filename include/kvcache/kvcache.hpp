#pragma once

// kvcache: KV-cache storage, attention kernels, eviction policies and KVCache<Policy> for C++ inference engines.
// Include this umbrella, or one family header. The test oracles are in kvcache/testing/testing.hpp.

#include "kvcache/attention/decode.hpp"
#include "kvcache/attention/mla.hpp"
#include "kvcache/attention/prefill.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/core/budget.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"
#include "kvcache/core/executor.hpp"
#include "kvcache/core/rope.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/policy/policies.hpp"
#include "kvcache/simd/convert.hpp"
#include "kvcache/simd/isa.hpp"
#include "kvcache/storage/block_pool.hpp"
#include "kvcache/storage/sliding_window.hpp"
#include "kvcache/storage/slot_storage.hpp"
#include "kvcache/version.hpp"
