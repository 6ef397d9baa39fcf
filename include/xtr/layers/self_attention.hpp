#pragma once
// Self-attention sublayer (x-transformers' Attention in a Decoder or Encoder):
//   [q | k | v] = h [W_q; W_k; W_v]ᵀ                        (N, H·dh + 2·G·dh) one GEMM: the three are adjacent
//   v ← v₁ + μ (v − v₁)                                      value residual, later layers (v₁: the first layer's v)
//   q, k ← l2norm per head (group) [⊙ learned scales]        qk_norm
//   q, k rotated by position                                 Rotary (xpos: and scaled)
//   o = attention(q, [mem_k; k], [mem_v; v]; causal, key mask, score bias)   (N, H·dh), 0 at padded query rows
//   o_h ← o_h · s_h                                          head_scale
//   o ← o ⊙ σ(h W_gᵀ)                                        gate_values
//   out (+)= o W_oᵀ                                           (N, D); with one head there is no W_o: out (+)= o
// Parameters (block prefix `attn_layers.layers.<i>.1.`): to_q (H·dh, D), to_k, to_v (G·dh, D), to_out (D, H·dh)
// (heads > 1), bias-less, U(±1/sqrt(fan_in)); with the options: qk_norm_q_scale (H, 1, dh), qk_norm_k_scale
// (G, 1, dh) init dh^¼; mem_k, mem_v (G, M, dh) ~ N(0, 1); head_scale_params (1, H, 1, 1) init 1; to_v_gate.weight
// (H·dh, D) init 0; to_value_residual_mix.0.weight (H, D), .bias (H). Formulas: policies/attention.hpp.
// Saved for the backward: the input, [q | k | v] as attended (after mixing, norm and rotation), o and its row
// log-sum-exps, and what each option's backward reads. Decoding appends the step's k, v to the layer's cache.
#include <cmath>
#include <cstring>
#include <string>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/attention_output.hpp"
#include "xtr/layers/kv_cache.hpp"
#include "xtr/layers/layer_inputs.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/l2_norm.hpp"

namespace xtr {

template <class Layers, class Backend>
class SelfAttention {
 public:
  using T = typename Backend::scalar;
  using Inputs = LayerInputs<Backend>;
  using Attend = kernel<Backend, ops::Attention<typename Layers::score_bias>>;
  using Rotate = kernel<Backend, ops::Rotate>;
  using Plain = kernel<Backend, ops::Linear<epilogue::Acc>>;
  using Gate = kernel<Backend, ops::Linear<epilogue::Act<act::Sigmoid, epilogue::Acc>>>;
  using Mix = kernel<Backend, ops::Linear<epilogue::Act<act::Sigmoid, epilogue::Bias<epilogue::Acc>>>>;
  using L2 = kernel<Backend, ops::Normalize<L2Norm>>;

  struct Saved {
    const T* input = nullptr;    // h (N, D)
    T* qkv = nullptr;            // (N, QKV) as attended
    T* o = nullptr;              // (N, HD) attention output
    T* lse = nullptr;            // (B, H, T)
    T* o_scaled = nullptr;       // head_scale: o · s (N, HD)
    T* gate_pre = nullptr;       // gate_values: h W_gᵀ (N, HD)
    T* gates = nullptr;          // gate_values: σ(h W_gᵀ) (N, HD)
    T* o_out = nullptr;          // what to_out reads (N, HD)
    T* qk_xhat = nullptr;        // qk_norm: (N, (H + G)·dh) normalised q and k before their gains
    T* qk_rstd = nullptr;        // qk_norm: (N, (H + G)·groups)
    T* mem = nullptr;            // num_mem_kv: rows (M, 2·KD) [k | v] as attended
    T* mem_xhat = nullptr;       // num_mem_kv with qk_norm: (M, KD)
    T* mem_rstd = nullptr;       // (M, G·groups)
    T* v_own = nullptr;          // value residual (later layers): this layer's v before the mix (N, KD)
    T* mix = nullptr;            // value residual: μ (N, mix heads)
    T* mix_pre = nullptr;        // learned μ: h W_μᵀ + b_μ
  };

  void declare(ParameterStore<T>& store, const std::string& prefix, const LayersConfig& L, Index kv_heads) {
    dim_ = L.dim;
    heads_ = L.heads;
    kv_heads_ = kv_heads;
    dim_head_ = L.dim_head;
    dropout_ = L.attn_dropout;
    options_ = L.attention;
    const Index D = dim_, HD = heads_ * dim_head_, KD = kv_heads_ * dim_head_;
    const auto bound = [](Index fan_in) { return Init::uniform_bound(1.0 / std::sqrt(double(fan_in))); };
    to_q_ = store.add(prefix + "to_q.weight", {HD, D}, bound(D));
    const ParameterId to_k = store.add(prefix + "to_k.weight", {KD, D}, bound(D));
    const ParameterId to_v = store.add(prefix + "to_v.weight", {KD, D}, bound(D));
    // the fused projection relies on this layout
    require(store.entry(to_k).offset == store.entry(to_q_).offset + HD * D &&
                store.entry(to_v).offset == store.entry(to_k).offset + KD * D,
            "internal: to_q, to_k, to_v must be adjacent in the parameter buffer");
    if (options_.qk_norm && options_.qk_norm_dim_scale) {
      const double s = std::pow(double(dim_head_), 0.25);
      q_scale_ = store.add(prefix + "qk_norm_q_scale", {heads_, 1, dim_head_}, Init::fill(s));
      k_scale_ = store.add(prefix + "qk_norm_k_scale", {kv_heads_, 1, dim_head_}, Init::fill(s));
    }
    if (options_.num_mem_kv > 0) {
      mem_k_ = store.add(prefix + "mem_k", {kv_heads_, options_.num_mem_kv, dim_head_}, Init::normal_std(1.0));
      mem_v_ = store.add(prefix + "mem_v", {kv_heads_, options_.num_mem_kv, dim_head_}, Init::normal_std(1.0));
    }
    if (options_.gate_values) gate_ = store.add(prefix + "to_v_gate.weight", {HD, D}, Init::fill(0));
    out_.declare(store, prefix, D, heads_, dim_head_);
    if (options_.head_scale) head_scale_ = store.add(prefix + "head_scale_params", {1, heads_, 1, 1}, Init::fill(1));
  }
  /// Value residual: this layer mixes the first layer's values into its own (x-transformers: every self-attention
  /// layer but the first); with a learned mix it owns `to_value_residual_mix.0`.
  void declare_value_mix(ParameterStore<T>& store, const std::string& prefix) {
    mixes_values_ = true;
    if (options_.learned_value_residual_mix) {
      const auto bound = Init::uniform_bound(1.0 / std::sqrt(double(dim_)));
      mix_w_ = store.add(prefix + "to_value_residual_mix.0.weight", {heads_, dim_}, bound);
      mix_b_ = store.add(prefix + "to_value_residual_mix.0.bias", {heads_}, bound);
    }
  }
  [[nodiscard]] bool mixes_values() const { return mixes_values_; }

  /// out (+)= attention(h); keeps what backward() needs.
  Saved forward(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    const Index N = h.rows, B = pass.batch, Tn = pass.length;
    Saved s;
    s.input = h.data;
    View<T> qkv = pass.allocate(N, qkv_width());
    s.qkv = qkv.data;
    prepare(pass, in, h, qkv, Tn, pass.position, &s);
    View<T> o = pass.allocate(N, HD());
    s.o = o.data;
    s.lse = pass.arena.template allocate<T>(B * heads_ * Tn);
    ops::AttentionProblem<T> p = problem(pass, in);
    memory(pass, p, &s);
    Attend::forward(p, heads(qkv.data, 0, Tn), heads(qkv.data, HD(), Tn), heads(qkv.data, HD() + KD(), Tn),
                    {o.data, Tn * HD(), HD()}, s.lse, pass.arena);
    finish(pass, h, o, out, accumulate, &s);
    return s;
  }

  /// dh (+)= d attention / d h given d out; the parameters' gradients add up.
  void backward(Pass<Backend>& pass, const Inputs& in, const Saved& s, ConstView<T> dout, View<T> dh,
                bool accumulate_dh) const {
    const Index N = dout.rows, Tn = pass.length;
    const ConstView<T> h(s.input, N, dim_);
    if (!accumulate_dh && (gates() || mixes_values_)) {  // several contributions add into dh
      kernel<Backend, ops::Fill>::run(dh, T(0));
      accumulate_dh = true;
    }
    // the output side, in reverse: to_out, the gates, the head scale
    View<T> dO = pass.allocate(N, HD());
    out_.backward(pass, ConstView<T>(s.o_out, N, HD()), dout, dO);
    if (gates()) {
      const ConstView<T> before(options_.head_scale ? s.o_scaled : s.o, N, HD());
      View<T> dgates = pass.allocate(N, HD()), dbefore = pass.allocate(N, HD());
      kernel<Backend, ops::Multiply>::backward(dO, before, ConstView<T>(s.gates, N, HD()), dbefore, dgates);
      epilogue::Operands<T> o;
      o.saved = s.gate_pre;
      Gate::backward(dgates, h, pass.weights(gate_).w, o, dh, true, pass.grad(gate_), nullptr, T(1), pass.arena);
      dO = dbefore;
    }
    if (options_.head_scale)
      kernel<Backend, ops::ScaleHeads>::backward(dO, ConstView<T>(s.o, N, HD()), pass.value(head_scale_), heads_, dO,
                                                 pass.grad(head_scale_));
    // the attention
    View<T> dqkv = pass.allocate(N, qkv_width());
    kernel<Backend, ops::Fill>::run(dqkv, T(0));
    ops::AttentionProblem<T> p = problem(pass, in);
    memory(pass, p, nullptr, &s);
    ops::AttentionExtraGradients<T> extra;
    View<T> dmem;
    if (p.mem_len > 0) {
      dmem = pass.allocate(p.mem_len, 2 * KD());
      kernel<Backend, ops::Fill>::run(dmem, T(0));
      extra.mem_k = dmem.data;
      extra.mem_v = dmem.data + KD();
    }
    extra.bias = in.score_bias_grad;
    Attend::backward(p, heads(s.qkv, 0, Tn), heads(s.qkv, HD(), Tn), heads(s.qkv, HD() + KD(), Tn),
                     {s.o, Tn * HD(), HD()}, s.lse, {dO.data, Tn * HD(), HD()}, heads(dqkv.data, 0, Tn),
                     heads(dqkv.data, HD(), Tn), heads(dqkv.data, HD() + KD(), Tn), extra, pass.arena);
    if (p.mem_len > 0) memory_backward(pass, s, dmem);
    // the input side, in reverse: rotation, qk-norm, value mix, projection
    if (in.rotary) rotate(in, dqkv.data, N, Tn, pass.position, true);
    if (options_.qk_norm) qk_norm_backward(pass, s, dqkv.data, N);
    View<T> dv(dqkv.data + HD() + KD(), N, KD(), qkv_width());
    if (mixes_values_ && in.first_values) value_mix_backward(pass, in, s, h, dv, dh);
    if (in.first_values_grad && !mixes_values_ && options_.value_residual)  // the first layer: what later layers sent
      kernel<Backend, ops::Axpby>::run(ConstView<T>(in.first_values_grad, N, KD()), dv, T(1), T(1));
    Plain::backward(dqkv, h, pass.weights(to_q_, qkv_width()).w, {}, dh, accumulate_dh, pass.grad(to_q_), nullptr,
                    T(1), pass.arena);
  }

  /// One decoding step of n new rows per sequence (pass.length = n, pass.position = the cache's position): appends
  /// their keys and values to layer `in.layer` of the cache (of T, or halves: KVFormat::f16) and attends over the live
  /// rows; out (+)= the result. `first_values` receives this layer's values when it is the value residual's first layer.
  void decode(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    KVCache<T>& cache = *in.cache;
    const Index B = pass.batch, n = pass.length, N = B * n;
    View<T> qkv = pass.allocate(N, qkv_width());
    prepare(pass, in, h, qkv, n, pass.position, nullptr);
    ops::AttentionProblem<T> p = problem(pass, in);
    p.k_len = cache.length + n;
    p.q_offset = cache.length;
    p.key_mask = pass.self_key_mask;  // left-padded sequences: (batch, k_len), else null
    p.key_mask_stride = p.k_len;
    p.query_mask = pass.mask;         // and (batch, n)
    p.query_mask_stride = n;
    p.causal = true;
    memory(pass, p, nullptr);
    View<T> o = pass.allocate(N, HD());
    const std::size_t layer = std::size_t(in.layer);
    if (cache.format == KVFormat::f16) {
      if constexpr (ops::HalfKeyValues<Attend, T>) {
        attend_cached(pass, cache, p, qkv, o, cache.k_half[layer], cache.v_half[layer], in.layer);
      } else {
        require(false, "internal: an f16 KV cache on ", Backend::name, " (use_kv_format refuses it)");
      }
    } else {
      attend_cached(pass, cache, p, qkv, o, cache.k[layer], cache.v[layer], in.layer);
    }
    finish(pass, h, o, out, accumulate, nullptr);
  }

  [[nodiscard]] Index kv_width() const { return KD(); }

 private:
  /// The new rows' keys and values (in qkv) written into the cache's tensors K and V (of T, or halves: each value
  /// rounded to the nearest, a value beyond the half range refused), then attention over the live rows into o.
  template <class E>
  void attend_cached(Pass<Backend>& pass, const KVCache<T>& cache, const ops::AttentionProblem<T>& p,
                     View<T> qkv, View<T> o, Tensor<E>& K, Tensor<E>& V, Index layer) const {
    const Index B = pass.batch, n = pass.length, dh = dim_head_, run = cache.capacity * dh;
    const Index row0 = cache.start + cache.length;  // where the new keys go
    for (Index b = 0; b < B; ++b)  // K, V (batch, kv_heads, capacity, dim_head)
      for (Index t = 0; t < n; ++t) {
        const T* row = qkv.row(b * n + t);
        for (Index g = 0; g < kv_heads_; ++g) {
          const T* key = row + HD() + g * dh;
          const T* value = row + HD() + KD() + g * dh;
          E* k_out = KVCache<T>::head_rows(K, b, g) + (row0 + t) * dh;
          E* v_out = KVCache<T>::head_rows(V, b, g) + (row0 + t) * dh;
          if constexpr (std::is_same_v<E, T>) {
            std::copy_n(key, dh, k_out);
            std::copy_n(value, dh, v_out);
          } else {
            for (const auto& [x, y] : {std::pair{key, k_out}, std::pair{value, v_out}}) {
              const Index bad = Attend::to_halves(x, dh, y);
              require(bad == dh, "layer ", layer, ": a ", x == key ? "key" : "value", " of ", double(x[bad]),
                      " is outside the f16 KV cache's range (±", double(detail::kHalfMax),
                      "): use KVFormat::f32");
            }
          }
        }
      }
    Attend::forward(p, heads(qkv.data, 0, n), {K.data() + cache.start * dh, kv_heads_ * run, dh, run},
                    {V.data() + cache.start * dh, kv_heads_ * run, dh, run}, {o.data, n * HD(), HD()}, nullptr,
                    pass.arena);
  }

  [[nodiscard]] Index HD() const { return heads_ * dim_head_; }
  [[nodiscard]] Index KD() const { return kv_heads_ * dim_head_; }
  [[nodiscard]] Index qkv_width() const { return HD() + 2 * KD(); }
  [[nodiscard]] bool gates() const { return options_.gate_values; }
  [[nodiscard]] Index groups() const { return options_.qk_norm_groups; }
  [[nodiscard]] Index mix_heads() const { return options_.learned_value_residual_mix ? heads_ : kv_heads_; }
  /// Columns [col, col + ...) of a (B·T, QKV) buffer as a heads operand.
  [[nodiscard]] ops::HeadsView<T> heads(T* qkv, Index col, Index T_len) const {
    return {qkv + col, T_len * qkv_width(), qkv_width()};
  }

  /// [q | k | v] from h, then the value mix, the qk norm and the rotation (saving what the backward needs).
  void prepare(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> qkv, Index T_len, Index offset,
               Saved* s) const {
    const Index N = h.rows;
    Plain::forward(h, pass.weights(to_q_, qkv_width()), qkv, {}, pass.arena);
    View<T> v(qkv.data + HD() + KD(), N, KD(), qkv_width());
    if (in.values_out) *in.values_out = {v.data, N, KD(), qkv_width()};  // the value residual's first layer
    if (mixes_values_ && in.first_values) {  // v ← v₁ + μ (v − v₁)
      View<T> own = pass.allocate(N, KD());
      kernel<Backend, ops::Axpby>::run(v, own, T(1), T(0));
      View<T> mu = pass.allocate(N, mix_heads());
      if (options_.learned_value_residual_mix) {
        epilogue::Operands<T> o;
        o.bias = pass.value(mix_b_);
        if (s) o.saved = s->mix_pre = pass.arena.template allocate<T>(N * heads_);
        Mix::forward(h, pass.weights(mix_w_), mu, o, pass.arena);
      } else {
        kernel<Backend, ops::Fill>::run(mu, T(0.5));
      }
      kernel<Backend, ops::MixHeads>::forward(ConstView<T>(in.first_values, N, KD(), in.first_values_ld), own, mu.data,
                                              mix_heads(), mix_heads(), v);
      if (s) {
        s->v_own = own.data;
        s->mix = mu.data;
      }
    }
    if (options_.qk_norm) {
      T* xhat = s ? s->qk_xhat = pass.arena.template allocate<T>(N * (HD() + KD())) : nullptr;
      T* rstd = s ? s->qk_rstd = pass.arena.template allocate<T>(N * (heads_ + kv_heads_) * groups()) : nullptr;
      qk_norm(pass, qkv.data, qkv_width(), N, xhat, rstd, heads_ + kv_heads_);
    }
    if (in.rotary) rotate(in, qkv.data, N, T_len, offset, false);
  }

  /// l2norm of each (head, group) of the first `count` heads (q's, then k's) of rows `ld` apart, in place, with the
  /// dim-scale gains; x̂ into xhat ((N, count·dh), group-major), r into rstd.
  void qk_norm(Pass<Backend>& pass, T* x, Index ld, Index N, T* xhat, T* rstd, Index count) const {
    const Index gw = dim_head_ / groups();
    for (Index head = 0; head < count; ++head)
      for (Index g = 0; g < groups(); ++g) {
        const Index slot = head * groups() + g;
        View<T> part(x + head * dim_head_ + g * gw, N, gw, ld);
        L2::forward(part, nullptr, {gain_of(pass, head, g), T(0)}, part, false, xhat ? xhat + slot * N * gw : nullptr,
                    rstd ? rstd + slot * N : nullptr);
      }
  }
  void qk_norm_backward(Pass<Backend>& pass, const Saved& s, T* dqkv, Index N) const {
    const Index gw = dim_head_ / groups();
    View<T> grad = pass.allocate(N, gw);
    for (Index head = 0; head < heads_ + kv_heads_; ++head)
      for (Index g = 0; g < groups(); ++g) {
        const Index slot = head * groups() + g;
        View<T> part(dqkv + head * dim_head_ + g * gw, N, gw, qkv_width());
        kernel<Backend, ops::Axpby>::run(part, grad, T(1), T(0));
        kernel<Backend, ops::Fill>::run(part, T(0));
        L2::backward(grad, s.qk_xhat + slot * N * gw, s.qk_rstd + slot * N, {gain_of(pass, head, g), T(0)},
                     View<T>(part.data, N, gw, qkv_width()), {gain_grad_of(pass, head, g)}, pass.arena);
      }
  }
  /// The dim-scale gain of q head `head` (or k head head − H), group g; null without dim scale.
  [[nodiscard]] const T* gain_of(const Pass<Backend>& pass, Index head, Index g) const {
    if (!options_.qk_norm_dim_scale) return nullptr;
    const Index gw = dim_head_ / groups();
    return head < heads_ ? pass.value(q_scale_) + head * dim_head_ + g * gw
                         : pass.value(k_scale_) + (head - heads_) * dim_head_ + g * gw;
  }
  [[nodiscard]] T* gain_grad_of(const Pass<Backend>& pass, Index head, Index g) const {
    if (!options_.qk_norm_dim_scale) return nullptr;
    const Index gw = dim_head_ / groups();
    return head < heads_ ? pass.grad(q_scale_) + head * dim_head_ + g * gw
                         : pass.grad(k_scale_) + (head - heads_) * dim_head_ + g * gw;
  }

  /// The memory keys and values as attended: rows (M, [k | v]) from the (G, M, dh) parameters, k l2-normed with qk_norm.
  void memory(Pass<Backend>& pass, ops::AttentionProblem<T>& p, Saved* s, const Saved* saved = nullptr) const {
    const Index M = options_.num_mem_kv;
    if (M == 0) return;
    T* mem = nullptr;
    if (saved) {
      mem = saved->mem;
    } else {
      mem = pass.arena.template allocate<T>(M * 2 * KD());
      const T* k = pass.value(mem_k_);
      const T* v = pass.value(mem_v_);
      for (Index g = 0; g < kv_heads_; ++g)
        for (Index m = 0; m < M; ++m) {
          std::copy_n(k + (g * M + m) * dim_head_, dim_head_, mem + m * 2 * KD() + g * dim_head_);
          std::copy_n(v + (g * M + m) * dim_head_, dim_head_, mem + m * 2 * KD() + KD() + g * dim_head_);
        }
      if (options_.qk_norm) {
        T* xhat = s ? s->mem_xhat = pass.arena.template allocate<T>(M * KD()) : nullptr;
        T* rstd = s ? s->mem_rstd = pass.arena.template allocate<T>(M * kv_heads_ * groups()) : nullptr;
        const Index gw = dim_head_ / groups();
        for (Index g = 0; g < kv_heads_; ++g)
          for (Index gr = 0; gr < groups(); ++gr) {
            const Index slot = g * groups() + gr;
            View<T> part(mem + g * dim_head_ + gr * gw, M, gw, 2 * KD());
            L2::forward(part, nullptr, {gain_of(pass, heads_ + g, gr), T(0)}, part, false,
                        xhat ? xhat + slot * M * gw : nullptr, rstd ? rstd + slot * M : nullptr);
          }
      }
      if (s) s->mem = mem;
    }
    p.mem_len = M;
    p.mem_k = mem;
    p.mem_v = mem + KD();
    p.mem_ld = 2 * KD();
  }
  /// d rows (M, [dk | dv]) → the (G, M, dh) parameters' gradients (through the k norm with qk_norm).
  void memory_backward(Pass<Backend>& pass, const Saved& s, View<T> dmem) const {
    const Index M = options_.num_mem_kv;
    if (options_.qk_norm) {
      const Index gw = dim_head_ / groups();
      View<T> grad = pass.allocate(M, gw);
      for (Index g = 0; g < kv_heads_; ++g)
        for (Index gr = 0; gr < groups(); ++gr) {
          const Index slot = g * groups() + gr;
          View<T> part(dmem.data + g * dim_head_ + gr * gw, M, gw, 2 * KD());
          kernel<Backend, ops::Axpby>::run(part, grad, T(1), T(0));
          kernel<Backend, ops::Fill>::run(part, T(0));
          L2::backward(grad, s.mem_xhat + slot * M * gw, s.mem_rstd + slot * M, {gain_of(pass, heads_ + g, gr), T(0)},
                       part, {gain_grad_of(pass, heads_ + g, gr)}, pass.arena);
        }
    }
    T* dk = pass.grad(mem_k_);
    T* dv = pass.grad(mem_v_);
    for (Index g = 0; g < kv_heads_; ++g)
      for (Index m = 0; m < M; ++m)
        for (Index d = 0; d < dim_head_; ++d) {
          dk[(g * M + m) * dim_head_ + d] += dmem(m, g * dim_head_ + d);
          dv[(g * M + m) * dim_head_ + d] += dmem(m, KD() + g * dim_head_ + d);
        }
  }

  /// d v (mixed) → d v (own) in place, d v₁ into the first layer's accumulator, d μ into dh through the mix's Linear.
  void value_mix_backward(Pass<Backend>& pass, const Inputs& in, const Saved& s, ConstView<T> h, View<T> dv,
                          View<T> dh) const {
    const Index N = h.rows;
    View<T> dmu = pass.allocate(N, mix_heads());
    kernel<Backend, ops::MixHeads>::backward(dv, ConstView<T>(in.first_values, N, KD(), in.first_values_ld),
                                             ConstView<T>(s.v_own, N, KD()), s.mix, mix_heads(), mix_heads(),
                                             View<T>(in.first_values_grad, N, KD()), dv, dmu.data);
    if (options_.learned_value_residual_mix) {
      epilogue::Operands<T> o;
      o.bias = pass.value(mix_b_);
      o.saved = s.mix_pre;
      Mix::backward(dmu, h, pass.weights(mix_w_).w, o, dh, true, pass.grad(mix_w_), pass.grad(mix_b_), T(1),
                    pass.arena);
    }
  }

  /// After the attention: head scale, gates, output projection.
  void finish(Pass<Backend>& pass, ConstView<T> h, View<T> o, View<T> out, bool accumulate, Saved* s) const {
    const Index N = h.rows;
    View<T> cur = o;
    if (options_.head_scale) {
      View<T> scaled = pass.allocate(N, HD());
      kernel<Backend, ops::ScaleHeads>::forward(cur, pass.value(head_scale_), heads_, scaled);
      cur = scaled;
      if (s) s->o_scaled = scaled.data;
    }
    if (gates()) {
      View<T> g = pass.allocate(N, HD()), gated = pass.allocate(N, HD());
      epilogue::Operands<T> op;
      if (s) op.saved = s->gate_pre = pass.arena.template allocate<T>(N * HD());
      Gate::forward(h, pass.weights(gate_), g, op, pass.arena);
      kernel<Backend, ops::Multiply>::forward(cur, g, gated);
      cur = gated;
      if (s) s->gates = g.data;
    }
    if (s) s->o_out = cur.data;
    out_.forward(pass, cur, out, accumulate);
  }

  void rotate(const Inputs& in, T* qkv, Index rows, Index T_len, Index offset, bool inverse) const {
    Rotate::apply(*in.rotary, qkv, rows, qkv_width(), heads_, dim_head_, T_len, offset, inverse, false);
    Rotate::apply(*in.rotary, qkv + HD(), rows, qkv_width(), kv_heads_, dim_head_, T_len, offset, inverse, true);
  }

  [[nodiscard]] ops::AttentionProblem<T> problem(const Pass<Backend>& pass, const Inputs& in) const {
    ops::AttentionProblem<T> p;
    p.batch = pass.batch;
    p.heads = heads_;
    p.kv_heads = kv_heads_;
    p.dim_head = dim_head_;
    p.q_len = p.k_len = pass.length;
    p.causal = Layers::causal;
    p.scale = T(!options_.qk_norm ? 1.0 / std::sqrt(double(dim_head_))
                : options_.qk_norm_dim_scale ? 1.0 / std::sqrt(double(dim_head_))
                                             : options_.qk_norm_scale);
    p.key_mask = pass.self_key_mask ? pass.self_key_mask : pass.mask;
    p.query_mask = pass.mask;
    p.key_mask_stride = p.query_mask_stride = pass.length;
    p.dropout = pass.rate(dropout_);
    if (p.dropout > 0) p.dropout_stream = pass.dropout_stream(std::uint64_t(3 * in.layer + 1), p.heads * p.q_len * (p.mem_len + p.k_len));
    p.bias = in.score_bias;
    p.bias_stride = in.score_bias_stride;
    p.bias_zero = in.score_bias_zero;
    return p;
  }

  Index dim_ = 0, heads_ = 0, kv_heads_ = 0, dim_head_ = 0;
  double dropout_ = 0;
  MultiHeadAttention options_{};
  bool mixes_values_ = false;
  ParameterId to_q_, q_scale_, k_scale_, mem_k_, mem_v_, gate_, head_scale_, mix_w_, mix_b_;
  AttentionOutput<Backend> out_;
};

}  // namespace xtr
