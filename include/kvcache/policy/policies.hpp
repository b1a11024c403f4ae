#pragma once

// Every policy, for users who want them all.

#include "kvcache/policy/dmc.hpp"
#include "kvcache/policy/fastgen.hpp"
#include "kvcache/policy/full.hpp"
#include "kvcache/policy/h2o.hpp"
#include "kvcache/policy/l2_norm.hpp"
#include "kvcache/policy/policy.hpp"
#include "kvcache/policy/select.hpp"
#include "kvcache/policy/snapkv.hpp"
#include "kvcache/policy/streaming_llm.hpp"
#include "kvcache/policy/vatp.hpp"
