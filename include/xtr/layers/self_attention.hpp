#pragma once
// Self-attention sublayer (x-transformers' Attention in a Decoder or Encoder):
//   [q | k | v] = h [W_q; W_k; W_v]ᵀ                     (N, H·dh + 2·G·dh)  one GEMM: the three are adjacent
//   q, k rotated by position (Rotary)
//   o = attention(q, k, v; causal, key mask, score bias)  (N, H·dh), 0 at padded query rows
//   out (+)= o W_oᵀ                                        (N, D); with one head there is no W_o: out (+)= o
// Parameters (block prefix `attn_layers.layers.<i>.1.`): to_q (H·dh, D), to_k, to_v (G·dh, D), to_out (D, H·dh)
// (only when heads > 1), bias-less, U(±1/sqrt(fan_in)). Saved for the backward: the input h, [q | k | v] after the
// rotation, o and the row log-sum-exps. Decoding appends this step's k, v to the layer's cache and attends over it.
#include <cmath>
#include <cstring>
#include <string>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/kv_cache.hpp"
#include "xtr/layers/layer_inputs.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/rotary.hpp"

namespace xtr {

template <class Layers, class Backend>
class SelfAttention {
 public:
  using T = typename Backend::scalar;
  using Inputs = LayerInputs<Backend>;
  static constexpr bool rotary = std::is_same_v<typename Layers::position, Rotary>;
  using Attend = kernel<Backend, ops::Attention<typename Layers::score_bias>>;
  using Rotate = kernel<Backend, ops::Rotate>;

  struct Saved {
    const T* input = nullptr;  // h (N, D)
    T* qkv = nullptr;          // (N, QKV) after the rotation
    T* o = nullptr;            // (N, HD)
    T* lse = nullptr;          // (B, H, T)
  };

  void declare(ParameterStore<T>& store, const std::string& prefix, const LayersConfig& L, Index kv_heads) {
    dim_ = L.dim;
    heads_ = L.heads;
    kv_heads_ = kv_heads;
    dim_head_ = L.dim_head;
    dropout_ = L.attn_dropout;
    const Index D = dim_, HD = heads_ * dim_head_, KD = kv_heads_ * dim_head_;
    const auto bound = [](Index fan_in) { return Init::uniform_bound(1.0 / std::sqrt(double(fan_in))); };
    to_q_ = store.add(prefix + "to_q.weight", {HD, D}, bound(D));
    const ParameterId to_k = store.add(prefix + "to_k.weight", {KD, D}, bound(D));
    const ParameterId to_v = store.add(prefix + "to_v.weight", {KD, D}, bound(D));
    if (heads_ > 1) to_out_ = store.add(prefix + "to_out.weight", {D, HD}, bound(HD));
    // the fused projection relies on this layout
    require(store.entry(to_k).offset == store.entry(to_q_).offset + HD * D &&
                store.entry(to_v).offset == store.entry(to_k).offset + KD * D,
            "internal: to_q, to_k, to_v must be adjacent in the parameter buffer");
  }

  /// out (+)= attention(h); keeps what backward() needs.
  Saved forward(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    const Index N = h.rows, B = pass.batch, Tn = pass.length;
    Saved s;
    s.input = h.data;
    View<T> qkv = pass.allocate(N, qkv_width());
    s.qkv = qkv.data;
    project_qkv(pass, h, qkv);
    if constexpr (rotary) rotate(in, qkv.data, N, Tn, 0, false);
    View<T> o = pass.allocate(N, HD());
    s.o = o.data;
    s.lse = pass.arena.template allocate<T>(B * heads_ * Tn);
    Attend::forward(problem(pass, in), heads(qkv.data, 0, Tn), heads(qkv.data, HD(), Tn), heads(qkv.data, HD() + KD(), Tn),
                    {o.data, Tn * HD(), HD()}, s.lse, pass.arena);
    output(pass, o, out, accumulate);
    return s;
  }

  /// dh (+)= d attention / d h given d out; the parameters' gradients add up.
  void backward(Pass<Backend>& pass, const Inputs& in, const Saved& s, ConstView<T> dout, View<T> dh,
                bool accumulate_dh) const {
    const Index N = dout.rows, Tn = pass.length;
    View<T> dO = pass.allocate(N, HD());
    output_backward(pass, ConstView<T>(s.o, N, HD()), dout, dO);
    View<T> dqkv = pass.allocate(N, qkv_width());
    kernel<Backend, ops::Fill>::run(dqkv, T(0));
    Attend::backward(problem(pass, in), heads(s.qkv, 0, Tn), heads(s.qkv, HD(), Tn), heads(s.qkv, HD() + KD(), Tn),
                     {s.o, Tn * HD(), HD()}, s.lse, {dO.data, Tn * HD(), HD()}, heads(dqkv.data, 0, Tn),
                     heads(dqkv.data, HD(), Tn), heads(dqkv.data, HD() + KD(), Tn), {}, pass.arena);
    if constexpr (rotary) rotate(in, dqkv.data, N, Tn, 0, true);
    kernel<Backend, ops::Linear<epilogue::Acc>>::backward(dqkv, ConstView<T>(s.input, N, dim_),
                                                          pass.weights(to_q_, qkv_width()).w, {}, dh, accumulate_dh,
                                                          pass.grad(to_q_), nullptr, T(1), pass.arena);
  }

  /// One decoding step of n new rows per sequence (pass.length = n, pass.position = the cache's position): appends
  /// their keys and values to layer `in.layer` of the cache and attends over the live rows; out (+)= the result.
  void decode(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    KVCache<T>& cache = *in.cache;
    const Index B = pass.batch, n = pass.length, N = B * n, KDw = KD();
    View<T> qkv = pass.allocate(N, qkv_width());
    project_qkv(pass, h, qkv);
    if constexpr (rotary) rotate(in, qkv.data, N, n, pass.position, false);
    const Index row0 = cache.start + cache.length;  // where the new keys go
    Tensor<T>& K = cache.k[std::size_t(in.layer)];
    Tensor<T>& V = cache.v[std::size_t(in.layer)];
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < n; ++t) {
        const T* row = qkv.row(b * n + t);
        std::copy_n(row + HD(), KDw, K.data() + (b * cache.capacity + row0 + t) * KDw);
        std::copy_n(row + HD() + KDw, KDw, V.data() + (b * cache.capacity + row0 + t) * KDw);
      }
    ops::AttentionProblem<T> p = problem(pass, in);
    p.k_len = cache.length + n;
    p.q_offset = cache.length;
    p.key_mask = p.query_mask = nullptr;
    p.causal = true;
    View<T> o = pass.allocate(N, HD());
    Attend::forward(p, heads(qkv.data, 0, n), {K.data() + cache.start * KDw, cache.capacity * KDw, KDw},
                    {V.data() + cache.start * KDw, cache.capacity * KDw, KDw}, {o.data, n * HD(), HD()}, nullptr,
                    pass.arena);
    output(pass, o, out, accumulate);
  }

  [[nodiscard]] Index kv_width() const { return KD(); }

 private:
  [[nodiscard]] Index HD() const { return heads_ * dim_head_; }
  [[nodiscard]] Index KD() const { return kv_heads_ * dim_head_; }
  [[nodiscard]] Index qkv_width() const { return HD() + 2 * KD(); }
  /// Columns [col, col + ...) of a (B·T, QKV) buffer as a heads operand.
  [[nodiscard]] ops::HeadsView<T> heads(T* qkv, Index col, Index T_len) const {
    return {qkv + col, T_len * qkv_width(), qkv_width()};
  }

  void project_qkv(Pass<Backend>& pass, ConstView<T> h, View<T> qkv) const {
    kernel<Backend, ops::Linear<epilogue::Acc>>::forward(h, pass.weights(to_q_, qkv_width()), qkv, {}, pass.arena);
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
    p.scale = T(1.0 / std::sqrt(double(dim_head_)));
    p.key_mask = p.query_mask = pass.mask;
    p.key_mask_stride = p.query_mask_stride = pass.length;
    p.dropout = pass.rate(dropout_);
    if (p.dropout > 0) p.dropout_stream = pass.dropout_stream(std::uint64_t(3 * in.layer + 1));
    return p;
  }

  /// out (+)= o W_oᵀ, or out (+)= o without an output projection (one head).
  void output(Pass<Backend>& pass, ConstView<T> o, View<T> out, bool accumulate) const {
    if (heads_ > 1) {
      if (accumulate) {
        kernel<Backend, ops::Linear<epilogue::AddTo<epilogue::Acc>>>::forward(o, pass.weights(to_out_), out, {}, pass.arena);
      } else {
        kernel<Backend, ops::Linear<epilogue::Acc>>::forward(o, pass.weights(to_out_), out, {}, pass.arena);
      }
    } else {
      kernel<Backend, ops::Axpby>::run(o, out, T(1), accumulate ? T(1) : T(0));
    }
  }
  /// d o from d out; dW_o += d outᵀ o.
  void output_backward(Pass<Backend>& pass, ConstView<T> o, ConstView<T> dout, View<T> dO) const {
    if (heads_ > 1) {
      kernel<Backend, ops::Linear<epilogue::Acc>>::backward(dout, o, pass.weights(to_out_).w, {}, dO, false,
                                                            pass.grad(to_out_), nullptr, T(1), pass.arena);
    } else {
      kernel<Backend, ops::Axpby>::run(dout, dO, T(1), T(0));
    }
  }

  Index dim_ = 0, heads_ = 0, kv_heads_ = 0, dim_head_ = 0;
  double dropout_ = 0;
  ParameterId to_q_, to_out_;
};

}  // namespace xtr
