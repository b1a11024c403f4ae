#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kvcache {

/// The one exception type of the library. It is thrown at configuration time (constructors, reserve, validated
/// calls such as append and remove) with a sentence that names the offending value; hot paths never throw.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error("kvcache: " + what) {}
};

namespace detail {
/// Builds the message from its parts and throws. Out of line so that the checks it serves stay small.
template <class... Parts>
[[noreturn]] __attribute__((noinline, cold)) void throw_error(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(os.str());
}
}  // namespace detail

}  // namespace kvcache

/// Throws kvcache::Error built from the remaining arguments when cond is false; the message is only formatted on
/// failure, so a check costs one branch on the good path.
#define KVCACHE_REQUIRE(cond, ...)                 \
  do {                                             \
    if (!(cond)) [[unlikely]]                      \
      ::kvcache::detail::throw_error(__VA_ARGS__); \
  } while (0)
