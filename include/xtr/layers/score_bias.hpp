#pragma once
// The score bias of a stack (x-transformers' `attn_layers.rel_pos`, one module shared by every self-attention layer):
// once per forward, a table (heads, width) with bias(h, i, j) = table[h · width + (j − i − q_offset) + zero] for
// q_len queries at positions q_offset.. and k_len keys at positions 0..; the attention kernels add it to the scores.
// The formulas are the policies' (policies/score_bias.hpp): ALiBi's slopes, T5's buckets of a learned table, the
// dynamic position bias's MLP of the distance. The backward takes Σ over layers of d table and adds into the
// parameters. An AnyScoreBias slot picks one at run time.
#include <cmath>
#include <string>
#include <vector>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/norm.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/any.hpp"

namespace xtr {

template <class Slot, class Backend>
class ScoreBiasLayer {
 public:
  using T = typename Backend::scalar;

  /// A table and what the backward reads.
  struct Saved {
    T* table = nullptr;  // (heads, width)
    Index width = 0, zero = 0, q_len = 0, k_len = 0, q_offset = 0;
    // dynamic position bias: the MLP's input and per-layer activations (rows 2·k_len − 1)
    T* input = nullptr;
    std::vector<T*> pre, normed, hidden;  // per hidden layer: z = Linear(·), LayerNorm(z), SiLU(·)
    std::vector<typename NormLayer<LayerNorm, Backend>::Saved> norms;
    T* out = nullptr;  // (rows, heads)
  };

  void declare(ParameterStore<T>& store, const std::string& prefix, const LayersConfig& L, bool causal) {
    kind_ = resolve_policy<Slot>(L.policies.score_bias, "layers.policies.score_bias");
    heads_ = L.heads;
    dim_head_ = L.dim_head;
    causal_ = causal;
    alibi_ = L.alibi;
    t5_ = L.rel_pos_bias;
    dpb_ = L.dynamic_pos_bias;
    visit_policy<Slot>(kind_, [&]<class P>() {
      const std::string name = prefix + "attn_layers.rel_pos.";
      if constexpr (std::is_same_v<P, RelativePositionBias>) {
        table_ = store.add(name + "relative_attention_bias.weight", {t5_.num_buckets, heads_}, Init::normal_std(1.0));
      } else if constexpr (std::is_same_v<P, DynamicPositionBias>) {
        const Index d = L.dim / 4;
        require(d >= 1, "layers.dim ", L.dim, " < 4 leaves the dynamic position bias's MLP (width dim / 4) empty");
        for (Index l = 0; l < dpb_.mlp_depth; ++l) {
          const Index in = l == 0 ? 1 : d;
          const std::string block = name + "mlp." + std::to_string(l) + ".";
          const auto bound = Init::uniform_bound(1.0 / std::sqrt(double(in)));
          Hidden h;
          h.weight = store.add(block + "0.weight", {d, in}, bound);
          h.bias = store.add(block + "0.bias", {d}, bound);
          if (dpb_.norm) {  // the first: x-transformers' LayerNorm (`gamma`, the gain itself); later: nn.LayerNorm
            if (l == 0) {
              h.gain = store.add(block + "1.gamma", {d}, Init::fill(1));
            } else {
              h.gain = store.add(block + "1.weight", {d}, Init::fill(1));
              h.beta = store.add(block + "1.bias", {d}, Init::fill(0));
            }
          }
          hidden_.push_back(h);
        }
        const auto bound = Init::uniform_bound(1.0 / std::sqrt(double(d)));
        out_w_ = store.add(name + "mlp." + std::to_string(dpb_.mlp_depth) + ".weight", {heads_, d}, bound);
        out_b_ = store.add(name + "mlp." + std::to_string(dpb_.mlp_depth) + ".bias", {heads_}, bound);
        width_ = d;
      }
    });
  }

  /// Whether the stack has a score bias.
  [[nodiscard]] bool active() const {
    return visit_policy<Slot>(kind_, []<class P>() { return P::has_table; });
  }
  [[nodiscard]] std::string_view policy() const { return policy_name<Slot>(kind_); }
  /// Whether x-transformers runs this score bias beside custom (rotary) positions (the policy's with_rotary).
  [[nodiscard]] bool with_rotary() const {
    return visit_policy<Slot>(kind_, []<class P>() { return P::with_rotary; });
  }

  /// The table for q_len queries at q_offset.. over k_len keys. While decoding, `memo` keeps the dynamic position
  /// bias's MLP output by distance across steps (it depends on the distance only), grown by doubling, so a step
  /// evaluates the MLP only when the distances outgrow it (x-transformers re-evaluates it every step).
  Saved forward(Pass<Backend>& pass, Index q_len, Index k_len, Index q_offset,
                std::vector<T>* memo = nullptr) const {
    Saved s;
    s.q_len = q_len;
    s.k_len = k_len;
    s.q_offset = q_offset;
    s.zero = q_offset + q_len - 1;
    s.width = s.zero + k_len;
    s.table = pass.arena.template allocate<T>(heads_ * s.width);
    visit_policy<Slot>(kind_, [&]<class P>() {
      if constexpr (std::is_same_v<P, ALiBi>) {
        const Index biased = alibi_.num_heads ? alibi_.num_heads : heads_;
        const auto slopes = ALiBi::slopes(biased);
        for (Index h = 0; h < heads_; ++h)
          for (Index t = 0; t < s.width; ++t)  // −|d| · slope in T (in float: x-transformers' one rounding)
            s.table[h * s.width + t] = h < biased ? T(-T(std::abs(t - s.zero)) * T(slopes[std::size_t(h)])) : T(0);
      } else if constexpr (std::is_same_v<P, RelativePositionBias>) {
        const T* w = pass.value(table_);
        const T scale = T(std::sqrt(double(dim_head_)));
        for (Index t = 0; t < s.width; ++t) {
          const Index bucket = t5_.bucket(s.zero - t, causal_);  // n = query − key = −(t − zero)
          for (Index h = 0; h < heads_; ++h) s.table[h * s.width + t] = w[bucket * heads_ + h] * scale;
        }
      } else if constexpr (std::is_same_v<P, DynamicPositionBias>) {
        if (!memo) {
          dynamic_forward(pass, s);
        } else {
          const Index reach = Index(memo->size()) / std::max<Index>(heads_, 1);  // rows: 2 · reach_k − 1
          if (reach < 2 * k_len - 1) {  // evaluate the MLP for twice the distances, keep its rows
            Saved wide;
            wide.k_len = std::max<Index>(2 * k_len, 64);
            dynamic_forward(pass, wide, false);
            memo->assign(wide.out, wide.out + (2 * wide.k_len - 1) * heads_);
          }
          const Index center = (Index(memo->size()) / heads_ - 1) / 2;  // the row of distance 0
          for (Index h = 0; h < heads_; ++h)
            for (Index t = 0; t < s.width; ++t) s.table[h * s.width + t] = (*memo)[(center - (t - s.zero)) * heads_ + h];
        }
      }
    });
    return s;
  }

  /// d table (heads, width) → the parameters' gradients.
  void backward(Pass<Backend>& pass, const Saved& s, const T* dtable) const {
    visit_policy<Slot>(kind_, [&]<class P>() {
      if constexpr (std::is_same_v<P, RelativePositionBias>) {
        T* dw = pass.grad(table_);
        const T scale = T(std::sqrt(double(dim_head_)));
        for (Index t = 0; t < s.width; ++t) {
          const Index bucket = t5_.bucket(s.zero - t, causal_);
          for (Index h = 0; h < heads_; ++h) dw[bucket * heads_ + h] += scale * dtable[h * s.width + t];
        }
      } else if constexpr (std::is_same_v<P, DynamicPositionBias>) {
        dynamic_backward(pass, s, dtable);
      }
    });
  }

 private:
  struct Hidden {
    ParameterId weight, bias, gain, beta;
  };
  using Act = kernel<Backend, ops::Linear<epilogue::Act<act::Silu, epilogue::Bias<epilogue::Acc>>>>;
  using Lin = kernel<Backend, ops::Linear<epilogue::Bias<epilogue::Acc>>>;
  using Silu = kernel<Backend, ops::Activation<act::Silu>>;
  using LN = kernel<Backend, ops::Normalize<LayerNorm>>;

  /// MLP over the distances −(k_len − 1) .. k_len − 1 (row r: distance r − (k_len − 1) = query − key), and with
  /// `table` the table of s from it.
  void dynamic_forward(Pass<Backend>& pass, Saved& s, bool table = true) const {
    const Index rows = 2 * s.k_len - 1, d = width_;
    s.input = pass.arena.template allocate<T>(rows);
    for (Index r = 0; r < rows; ++r) {
      const float p = float(r - (s.k_len - 1));
      s.input[r] = dpb_.log_distance ? T((p > 0) - (p < 0)) * T(std::log(std::abs(p) + 1.0f)) : T(p);
    }
    ConstView<T> x(s.input, rows, 1);
    for (std::size_t l = 0; l < hidden_.size(); ++l) {
      const Hidden& h = hidden_[l];
      View<T> y = pass.allocate(rows, d);
      s.hidden.push_back(y.data);
      if (!dpb_.norm) {
        epilogue::Operands<T> o;
        o.bias = pass.value(h.bias);
        o.saved = pass.arena.template allocate<T>(rows * d);
        s.pre.push_back(o.saved);
        Act::forward(x, pass.weights(h.weight), y, o, pass.arena);
      } else {
        View<T> z = pass.allocate(rows, d), n = pass.allocate(rows, d);
        epilogue::Operands<T> o;
        o.bias = pass.value(h.bias);
        Lin::forward(x, pass.weights(h.weight), z, o, pass.arena);
        typename NormLayer<LayerNorm, Backend>::Saved ns;
        ns.xhat = pass.arena.template allocate<T>(rows * d);
        ns.rstd = pass.arena.template allocate<T>(rows);
        LN::forward(z, nullptr, norm_weights(pass, h), n, false, ns.xhat, ns.rstd);
        Silu::forward(n, y);
        s.pre.push_back(z.data);
        s.normed.push_back(n.data);
        s.norms.push_back(ns);
      }
      x = y;
    }
    View<T> out = pass.allocate(rows, heads_);
    epilogue::Operands<T> o;
    o.bias = pass.value(out_b_);
    Lin::forward(x, pass.weights(out_w_), out, o, pass.arena);
    s.out = out.data;
    if (!table) return;
    // table[h][t] = out[(k_len − 1) − (t − zero)][h]: t − zero = key − query
    for (Index h = 0; h < heads_; ++h)
      for (Index t = 0; t < s.width; ++t) s.table[h * s.width + t] = out(s.k_len - 1 - (t - s.zero), h);
  }

  void dynamic_backward(Pass<Backend>& pass, const Saved& s, const T* dtable) const {
    const Index rows = 2 * s.k_len - 1, d = width_;
    View<T> dout = pass.allocate(rows, heads_);
    kernel<Backend, ops::Fill>::run(dout, T(0));
    for (Index h = 0; h < heads_; ++h)
      for (Index t = 0; t < s.width; ++t) dout(s.k_len - 1 - (t - s.zero), h) += dtable[h * s.width + t];
    View<T> dy = pass.allocate(rows, d);
    const ConstView<T> last(s.hidden.back(), rows, d);
    epilogue::Operands<T> o;
    o.bias = pass.value(out_b_);
    Lin::backward(dout, last, pass.weights(out_w_).w, o, dy, false, pass.grad(out_w_), pass.grad(out_b_), T(1),
                  pass.arena);
    for (std::size_t l = hidden_.size(); l-- > 0;) {
      const Hidden& h = hidden_[l];
      const ConstView<T> x = l == 0 ? ConstView<T>(s.input, rows, 1) : ConstView<T>(s.hidden[l - 1], rows, d);
      View<T> dx = pass.allocate(rows, l == 0 ? 1 : d);
      epilogue::Operands<T> op;
      op.bias = pass.value(h.bias);
      if (!dpb_.norm) {
        op.saved = s.pre[l];
        Act::backward(dy, x, pass.weights(h.weight).w, op, dx, false, pass.grad(h.weight), pass.grad(h.bias), T(1),
                      pass.arena);
      } else {
        View<T> dn = pass.allocate(rows, d), dz = pass.allocate(rows, d);
        Silu::backward(dy, ConstView<T>(s.normed[l], rows, d), dn, false);
        kernel<Backend, ops::Fill>::run(dz, T(0));
        LN::backward(dn, s.norms[l].xhat, s.norms[l].rstd, norm_weights(pass, h), dz,
                     {pass.grad(h.gain), pass.grad(h.beta)}, pass.arena);
        Lin::backward(dz, x, pass.weights(h.weight).w, op, dx, false, pass.grad(h.weight), pass.grad(h.bias), T(1),
                      pass.arena);
      }
      dy = dx;
    }
  }
  ops::NormWeights<T> norm_weights(const Pass<Backend>& pass, const Hidden& h) const {
    return {pass.value(h.gain), T(0), pass.value(h.beta)};
  }

  int kind_ = 0;
  Index heads_ = 0, dim_head_ = 0, width_ = 0;
  bool causal_ = true;
  ALiBi alibi_{};
  RelativePositionBias t5_{};
  DynamicPositionBias dpb_{};
  ParameterId table_, out_w_, out_b_;
  std::vector<Hidden> hidden_;
};

}  // namespace xtr
