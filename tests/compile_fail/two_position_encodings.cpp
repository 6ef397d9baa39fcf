// A layer stack has one position-encoding slot: Decoder<Rotary, AbsoluteLearned> must not compile.
// expect: xtr: a layer stack takes one position encoding; keep one of AbsoluteLearned, Rotary, NoPosition
#include "xtr/layers/attention_layers.hpp"

#ifdef SHOULD_FAIL
using Stack = xtr::Decoder<xtr::Rotary, xtr::AbsoluteLearned>;
#else
using Stack = xtr::Decoder<xtr::Rotary>;
#endif

int main() { return Stack::describe().empty() ? 1 : 0; }
