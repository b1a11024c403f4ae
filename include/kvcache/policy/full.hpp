#pragma once

// Full: keeps every row. The baseline every policy is compared with.

#include <span>
#include <string_view>

#include "kvcache/policy/policy.hpp"

namespace kvcache {

struct Full {
  static constexpr std::string_view kName = "full";
  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.compress_after_prefill = false;
    n.evict_during_decode = false;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t) const noexcept { return {}; }
  [[nodiscard]] Priority rank(const RankInput&) const noexcept { return Priority::by_age(); }  // never asked
};

}  // namespace kvcache
