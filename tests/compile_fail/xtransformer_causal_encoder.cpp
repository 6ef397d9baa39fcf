// An XTransformer's encoder is bidirectional: XTransformer<Decoder<...>, Decoder<...>> must not compile.
// expect: xtr: XTransformer's encoder must be an Encoder<...> (bidirectional, without CrossAttend)
#include "xtr/wrappers/x_transformer.hpp"

#ifdef SHOULD_FAIL
using Model = xtr::XTransformer<xtr::Decoder<xtr::Rotary>, xtr::Decoder<xtr::Rotary>>;
#else
using Model = xtr::XTransformer<xtr::Encoder<xtr::Rotary>, xtr::Decoder<xtr::Rotary>>;
#endif

int main() { return Model::describe().empty() ? 1 : 0; }
