#pragma once
// Errors at the host API boundary: what was wrong, the offending value and the limit.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace xtr {

/// Every error xtr throws. The message names the value and the limit it broke.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
[[nodiscard]] std::string cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

/// Throws xtr::Error("xtr: " + parts...) when `condition` is false.
template <class... Parts>
void require(bool condition, Parts&&... parts) {
  if (!condition) throw Error(detail::cat("xtr: ", std::forward<Parts>(parts)...));
}

}  // namespace xtr
