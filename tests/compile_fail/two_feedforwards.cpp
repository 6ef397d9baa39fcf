// A layer stack has one feed-forward slot: Decoder<GELU, SwiGLU> must not compile.
// expect: xtr: a layer stack takes one feed-forward; keep one of GELU, GEGLU, SwiGLU, SiLU, ReLUSquared
#include "xtr/layers/attention_layers.hpp"

#ifdef SHOULD_FAIL
using Stack = xtr::Decoder<xtr::Rotary, xtr::GELU, xtr::SwiGLU>;
#else
using Stack = xtr::Decoder<xtr::Rotary, xtr::SwiGLU>;
#endif

int main() { return Stack::describe().empty() ? 1 : 0; }
