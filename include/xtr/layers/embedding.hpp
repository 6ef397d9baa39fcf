#pragma once
// Token (and absolute position) embedding, the first sublayer of a TransformerWrapper:
//   x = E[tok] (+ dim^-0.5 · P[t + offset]) (+ sum_embeds),  then dropout(emb_dropout)            (B·T, D)
// Parameters: `token_emb.emb.weight` (V, D) ~ N(0, 2/D) (or a tied second name of another model's), with
// AbsoluteLearned `pos_emb.emb.weight` (max_seq_len, D) ~ N(0, 1). The backward scatters d x into both tables.
#include <cmath>
#include <optional>
#include <string>
#include <type_traits>

#include "xtr/backend/ops.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/absolute_learned.hpp"

namespace xtr {

template <class Position, class Backend>
class Embedding {
 public:
  using T = typename Backend::scalar;
  using K = kernel<Backend, ops::Embedding>;
  static constexpr bool absolute = std::is_same_v<Position, AbsoluteLearned>;

  /// Registers `<prefix>token_emb.emb.weight` (or an alias of `tied`) and, with absolute positions,
  /// `<prefix>pos_emb.emb.weight`.
  void declare(ParameterStore<T>& store, const std::string& prefix, Index num_tokens, Index max_seq_len, Index dim,
               std::optional<ParameterId> tied) {
    dim_ = dim;
    if (tied) {
      const auto& e = store.entry(*tied);
      require(e.shape == Shape{num_tokens, dim}, "a tied token embedding must have shape ", Shape{num_tokens, dim}.str(),
              " (num_tokens ", num_tokens, ", dim ", dim, "), '", e.name, "' has ", e.shape.str());
      token_ = store.alias(prefix + "token_emb.emb.weight", *tied);
    } else {
      token_ = store.add(prefix + "token_emb.emb.weight", {num_tokens, dim}, Init::normal_std(std::sqrt(2.0 / double(dim))));
    }
    if constexpr (absolute) position_ = store.add(prefix + "pos_emb.emb.weight", {max_seq_len, dim}, Init::normal_std(1.0));
  }
  [[nodiscard]] ParameterId token() const { return token_; }

  /// x (N, D) for ids (N = batch · T_len) at positions t + offset; adds sum_embeds (N, D) when given, then dropout.
  void forward(Pass<Backend>& pass, const std::int32_t* ids, Index T_len, Index offset, const T* sum_embeds,
               double dropout, View<T> x) const {
    K::forward(ids, x.rows, T_len, offset, table(pass), pass.value(position_), position_scale(), x);
    if (sum_embeds) kernel<Backend, ops::Axpby>::run(ConstView<T>(sum_embeds, x.rows, x.cols), x, T(1), T(1));
    kernel<Backend, ops::Dropout>::run(x, pass.rate(dropout), pass.dropout_stream(0));
  }
  /// d x → dE, dP; dx is turned into d (E[tok] + P + sum_embeds) in place (the dropout mask applied).
  void backward(Pass<Backend>& pass, const std::int32_t* ids, Index T_len, double dropout, View<T> dx) const {
    kernel<Backend, ops::Dropout>::run(dx, pass.rate(dropout), pass.dropout_stream(0));
    K::backward(ids, dx.rows, T_len, dx, pass.grad(token_), pass.grad(position_), position_scale());
  }

 private:
  [[nodiscard]] ConstView<T> table(const Pass<Backend>& pass) const {
    const auto& e = pass.params.entry(token_);
    return {pass.value(token_), e.shape[0], e.shape[1]};
  }
  [[nodiscard]] T position_scale() const { return T(1.0 / std::sqrt(double(dim_))); }

  Index dim_ = 0;
  ParameterId token_, position_;
};

}  // namespace xtr
