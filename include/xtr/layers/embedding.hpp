#pragma once
// Token (and absolute position) embedding, the first sublayer of a TransformerWrapper:
//   x = E[tok] + dim^-½ · P[t + offset]                                   (B·T, D)
//   l2norm_embed:   x = l2norm(E[tok]) + l2norm(P[t + offset])           (init N(0, 1e-5) for both tables)
//   then + sum_embeds, then post_emb_norm: x = LayerNorm(x) ⊙ γ (γ the gain itself), then dropout(emb_dropout)
// Parameters: `token_emb.emb.weight` (V, D) ~ N(0, 2/D) (or a tied second name of another model's), with absolute
// positions `pos_emb.emb.weight` (max_seq_len, D) ~ N(0, 1); `post_emb_norm.gamma` (D). The backward scatters d x
// into both tables (through the norms).
#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <type_traits>

#include "xtr/backend/ops.hpp"
#include "xtr/layers/norm.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/l2_norm.hpp"
#include "xtr/policies/layer_norm.hpp"

namespace xtr {

/// What the embedding has: absolute positions, l2-normalised tables, a norm after the sum.
struct EmbeddingOptions {
  bool absolute = true;
  bool l2norm = false;
  bool post_norm = false;
};

template <class Backend>
class Embedding {
 public:
  using T = typename Backend::scalar;
  using K = kernel<Backend, ops::Embedding>;
  using L2 = kernel<Backend, ops::Normalize<L2Norm>>;

  struct Saved {
    T* token = nullptr;                 // l2norm: E[tok] (B·T, D) gathered, normalised in place
    T* token_xhat = nullptr;            // l2norm: and what its norm backward reads
    T* token_rstd = nullptr;
    T* position = nullptr;              // l2norm with positions: P[t] (T, D), likewise
    T* position_xhat = nullptr;
    T* position_rstd = nullptr;
    typename NormLayer<LayerNorm, Backend>::Saved post;  // post_emb_norm
  };

  /// Registers `<prefix>token_emb.emb.weight` (or an alias of `tied`), with absolute positions
  /// `<prefix>pos_emb.emb.weight`, with post_norm `<prefix>post_emb_norm.gamma`.
  void declare(ParameterStore<T>& store, const std::string& prefix, Index num_tokens, Index max_seq_len, Index dim,
               std::optional<ParameterId> tied, EmbeddingOptions options) {
    dim_ = dim;
    options_ = options;
    if (tied) {
      const auto& e = store.entry(*tied);
      require(e.shape == Shape{num_tokens, dim}, "a tied token embedding must have shape ", Shape{num_tokens, dim}.str(),
              " (num_tokens ", num_tokens, ", dim ", dim, "), '", e.name, "' has ", e.shape.str());
      token_ = store.alias(prefix + "token_emb.emb.weight", *tied);
    } else {
      const double std = options.l2norm ? 1e-5 : std::sqrt(2.0 / double(dim));
      token_ = store.add(prefix + "token_emb.emb.weight", {num_tokens, dim}, Init::normal_std(std));
    }
    if (options.absolute)
      position_ = store.add(prefix + "pos_emb.emb.weight", {max_seq_len, dim},
                            Init::normal_std(options.l2norm ? 1e-5 : 1.0));
    if (options.post_norm) post_norm_.declare(store, prefix + "post_emb_norm", dim, {.unit_offset = false});
  }
  [[nodiscard]] ParameterId token() const { return token_; }
  /// The absolute position table (invalid without absolute positions).
  [[nodiscard]] ParameterId position() const { return position_; }

  /// x (N, D) for ids (N = batch · T_len) at positions t + offset; adds sum_embeds (N, D) when given, then the post
  /// norm and dropout. With `row_start` (per sequence; left padding, x-transformers' seq_start_pos) the absolute
  /// position of row b's token t is t + offset − row_start[b]; its padding (t + offset < row_start[b]) takes
  /// positions from 0 (it is masked everywhere: only finiteness matters).
  Saved forward(Pass<Backend>& pass, const std::int32_t* ids, Index T_len, Index offset, const T* sum_embeds,
                double dropout, View<T> x, bool save, const Index* row_start = nullptr) const {
    Saved s;
    const Index N = x.rows;
    if (row_start && options_.absolute) {
      require(!options_.l2norm, "left-padded (ragged) sequences with l2norm_embed and absolute positions are not "
              "supported");
      for (Index b = 0; b < N / T_len; ++b) {
        const Index pad = std::clamp<Index>(row_start[b] - offset, 0, T_len);  // padded rows of this sequence
        if (pad > 0)
          K::forward(ids + b * T_len, pad, pad, 0, table(pass), pass.value(position_), position_scale(),
                     x.middle_rows(b * T_len, pad));
        if (pad < T_len)
          K::forward(ids + b * T_len + pad, T_len - pad, T_len - pad, offset + pad - row_start[b], table(pass),
                     pass.value(position_), position_scale(), x.middle_rows(b * T_len + pad, T_len - pad));
      }
    } else if (!options_.l2norm) {
      K::forward(ids, N, T_len, offset, table(pass), pass.value(position_), position_scale(), x);
    } else {  // x = l2norm(E[tok]) + l2norm(P[t]): gather, normalise each, add
      K::forward(ids, N, T_len, offset, table(pass), nullptr, T(0), x);
      normalise(pass, x, save ? &s.token_xhat : nullptr, save ? &s.token_rstd : nullptr);
      if (options_.absolute) {
        View<T> p = pass.allocate(T_len, dim_);
        kernel<Backend, ops::Axpby>::run(ConstView<T>(pass.value(position_) + offset * dim_, T_len, dim_), p, T(1), T(0));
        normalise(pass, p, save ? &s.position_xhat : nullptr, save ? &s.position_rstd : nullptr);
        for (Index b = 0; b < N / T_len; ++b)
          kernel<Backend, ops::Axpby>::run(p, x.middle_rows(b * T_len, T_len), T(1), T(1));
        s.position = p.data;
      }
    }
    if (sum_embeds) kernel<Backend, ops::Axpby>::run(ConstView<T>(sum_embeds, N, x.cols), x, T(1), T(1));
    if (options_.post_norm) s.post = post_norm_.forward(pass, x, nullptr, x, false, save);
    kernel<Backend, ops::Dropout>::run(x, pass.rate(dropout), pass.dropout_stream(0, T_len * dim_));
    return s;
  }
  /// d x → dE, dP; on return dx holds d (E[tok] + P + sum_embeds) (the dropout mask and the post norm applied).
  void backward(Pass<Backend>& pass, const Saved& s, const std::int32_t* ids, Index T_len, double dropout,
                View<T> dx) const {
    const Index N = dx.rows;
    kernel<Backend, ops::Dropout>::run(dx, pass.rate(dropout), pass.dropout_stream(0, T_len * dim_));
    if (options_.post_norm) {
      View<T> d = pass.allocate(N, dim_);
      kernel<Backend, ops::Fill>::run(d, T(0));
      post_norm_.backward(pass, s.post, dx, d);
      kernel<Backend, ops::Axpby>::run(d, dx, T(1), T(0));
    }
    if (!options_.l2norm) {
      K::backward(ids, N, T_len, dx, pass.grad(token_), pass.grad(position_), position_scale());
      return;
    }
    View<T> de = pass.allocate(N, dim_);
    kernel<Backend, ops::Fill>::run(de, T(0));
    L2::backward(dx, s.token_xhat, s.token_rstd, {nullptr, T(0)}, de, {nullptr}, pass.arena);
    K::backward(ids, N, T_len, de, pass.grad(token_), nullptr, T(0));
    if (options_.absolute) {  // Σ_b dx[b] through the position norm into P[0..T)
      View<T> dp = pass.allocate(T_len, dim_), sum = pass.allocate(T_len, dim_);
      kernel<Backend, ops::Fill>::run(sum, T(0));
      for (Index b = 0; b < N / T_len; ++b)
        kernel<Backend, ops::Axpby>::run(dx.middle_rows(b * T_len, T_len), sum, T(1), T(1));
      kernel<Backend, ops::Fill>::run(dp, T(0));
      L2::backward(sum, s.position_xhat, s.position_rstd, {nullptr, T(0)}, dp, {nullptr}, pass.arena);
      kernel<Backend, ops::Axpby>::run(dp, View<T>(pass.grad(position_), T_len, dim_), T(1), T(1));
    }
  }

 private:
  /// x ← l2norm(x) per row, keeping x̂ and r when asked.
  void normalise(Pass<Backend>& pass, View<T> x, T** xhat, T** rstd) const {
    T* xh = xhat ? *xhat = pass.arena.template allocate<T>(x.rows * x.cols) : nullptr;
    T* r = rstd ? *rstd = pass.arena.template allocate<T>(x.rows) : nullptr;
    L2::forward(x, nullptr, {nullptr, T(0)}, x, false, xh, r);
  }
  [[nodiscard]] ConstView<T> table(const Pass<Backend>& pass) const {
    const auto& e = pass.params.entry(token_);
    return {pass.value(token_), e.shape[0], e.shape[1]};
  }
  [[nodiscard]] T position_scale() const { return T(1.0 / std::sqrt(double(dim_))); }

  Index dim_ = 0;
  EmbeddingOptions options_{};
  ParameterId token_, position_;
  NormLayer<LayerNorm, Backend> post_norm_;
};

}  // namespace xtr
