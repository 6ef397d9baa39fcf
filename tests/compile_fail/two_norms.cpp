// A layer stack has one norm slot: Decoder<LayerNorm, RMSNorm> must not compile.
// expect: xtr: a layer stack takes one norm; keep one of LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm
#include "xtr/layers/attention_layers.hpp"

#ifdef SHOULD_FAIL
using Stack = xtr::Decoder<xtr::LayerNorm, xtr::RMSNorm>;
#else
using Stack = xtr::Decoder<xtr::RMSNorm>;
#endif

int main() { return Stack::describe().empty() ? 1 : 0; }
