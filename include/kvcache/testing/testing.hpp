#pragma once

// What kvcache's own tests and benches use beside the public API: the Eigen reference attention (the oracle every
// kernel is compared with) and the ISA override. Engines do not need it.

#include "kvcache/testing/isa.hpp"
#include "kvcache/testing/mla_reference.hpp"
#include "kvcache/testing/reference.hpp"
