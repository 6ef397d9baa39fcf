// A user-defined position policy is a valid slot, but the Cpu backend has no kernel for it: it must not compile
// (never fall back silently to another position encoding).
// expect: xtr: the Cpu backend implements the positions AbsoluteLearned, Rotary and NoPosition; add a kernel for this position policy or use one of those
#include "xtr/layers/transformer_wrapper.hpp"

struct ALiBi {
  using axis = xtr::axis::position;
  static constexpr std::string_view name = "ALiBi";
};

#ifdef SHOULD_FAIL
using Net = xtr::TransformerWrapper<xtr::Decoder<ALiBi>>;
#else
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary>>;
#endif

int main() { return Net::describe().empty() ? 1 : 0; }
