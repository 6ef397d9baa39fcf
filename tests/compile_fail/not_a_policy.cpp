// Every argument of Decoder<...> is a policy: Decoder<int> must not compile.
// expect: xtr: every argument of Decoder<...>/Encoder<...>/CrossAttender<...> must be a policy: a position encoding, a norm, a feed-forward, an attention type or CrossAttend
#include "xtr/layers/attention_layers.hpp"

#ifdef SHOULD_FAIL
using Stack = xtr::Decoder<int>;
#else
using Stack = xtr::Decoder<>;
#endif

int main() { return Stack::describe().empty() ? 1 : 0; }
