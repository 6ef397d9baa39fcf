// Next-token training and generation need a causal stack: AutoregressiveWrapper around an Encoder must not compile.
// expect: xtr: AutoregressiveWrapper needs a causal stack: wrap a TransformerWrapper<Decoder<...>>
#include "xtr/wrappers/autoregressive_wrapper.hpp"

#ifdef SHOULD_FAIL
using Net = xtr::TransformerWrapper<xtr::Encoder<xtr::Rotary>>;
#else
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary>>;
#endif

int main() { return sizeof(xtr::AutoregressiveWrapper<Net>) > 0 ? 0 : 1; }
