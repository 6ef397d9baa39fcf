// A backend is a type with a scalar and a name; every op a model asks of it must have a kernel<Backend, Op>
// specialization, or the model does not compile (the instantiation trace names the backend and the op).
// expect: xtr: this backend has no kernel for this op (both are named in the kernel<Backend, Op> instantiation below); specialize kernel<Backend, Op> in the backend's folder or choose a backend that implements the op
#include "xtr/backend/reference/backend.hpp"
#include "xtr/layers/transformer_wrapper.hpp"

struct Abacus {  // a backend that implements nothing
  using scalar = float;
  static constexpr std::string_view name = "Abacus";
};

#ifdef SHOULD_FAIL
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary>, Abacus>;
#else
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary>, xtr::Reference<float>>;
#endif

int main() {
  Net net({.num_tokens = 8, .max_seq_len = 4, .layers = {.dim = 8, .depth = 1, .heads = 2, .dim_head = 4}});
  return net.forward(xtr::TokenBatch{{1, 2}}).rows() == 2 ? 0 : 1;
}
