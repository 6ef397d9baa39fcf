#pragma once
// Contrastive decoding (Li et al. 2022; O'Brien & Lewis 2023, appendix A algorithm 2), as x-transformers'
// contrastive_decode_fn: with expert logits e and amateur logits a of one position,
//   c_i = (1 + β) e_i − β a_i,   and c_i = −max(T) where e_i < log α + max_j e_j.
// Several amateurs apply in turn (the second contrasts the first's result, as x-transformers' loop does). An Amateur
// holds any causal TransformerWrapper (or an AutoregressiveWrapper: its net), type-erased, and opens one decoding
// session (with its own KV cache) per generate() call.
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/generation/session.hpp"

namespace xtr {

/// c = (1 + β) e − β a, masked to −max(T) where e < log α + max e (n values each; c may alias e).
template <class T, class U>
void contrastive_logits(const T* expert, const U* amateur, Index n, double alpha, double beta, T* out) {
  double m = -std::numeric_limits<double>::infinity();
  for (Index i = 0; i < n; ++i) m = std::max(m, double(expert[i]));
  const double cutoff = std::log(alpha) + m;
  for (Index i = 0; i < n; ++i) {
    const double e = double(expert[i]);
    out[i] = e < cutoff ? -std::numeric_limits<T>::max() : T((1 + beta) * e - beta * double(amateur[i]));
  }
}

/// One amateur model of contrastive decoding and its α (plausibility cutoff) and β (contrast strength).
class Amateur : public DecoderHandle {
 public:
  template <class Model>
  explicit Amateur(Model& model, double alpha = 0.1, double beta = 0.5)
      : DecoderHandle(model), alpha(alpha), beta(beta) {
    require(alpha > 0 && alpha <= 1, "contrastive decoding: alpha must be in (0, 1], got ", alpha);
    require(std::isfinite(beta) && beta >= 0, "contrastive decoding: beta must be >= 0, got ", beta);
  }
  double alpha = 0.1, beta = 0.5;
};

}  // namespace xtr
