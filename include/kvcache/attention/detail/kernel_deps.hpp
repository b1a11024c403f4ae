#pragma once

// Everything the generic kernel bodies (*.ipp) use, included before any target region or namespace opens.

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kvcache/attention/detail/tiles.hpp"
#include "kvcache/core/dtype.hpp"
#include "kvcache/core/head_rows.hpp"
#include "kvcache/core/macros.hpp"
