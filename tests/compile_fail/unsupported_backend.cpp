// The CPU backend computes in float or double: TransformerWrapper<..., Cpu<int>> must not compile.
// expect: xtr: TransformerWrapper computes in float or double: use Cpu<float>, Cpu<double>, Reference<float> or Reference<double>
#include "xtr/layers/transformer_wrapper.hpp"

#ifdef SHOULD_FAIL
using Backend = xtr::Cpu<int>;
#else
using Backend = xtr::Cpu<double>;
#endif

int main() { return sizeof(xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary>, Backend>) > 0 ? 0 : 1; }
