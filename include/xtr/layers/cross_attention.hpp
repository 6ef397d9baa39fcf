#pragma once
// Cross-attention sublayer (x-transformers' Attention with a context, CrossAttend):
//   q = h W_qᵀ (N, H·dh);  [k | v] = c [W_k; W_v]ᵀ (B·S, 2·G·dh) over the context c (B·S, dim_context)
//   o = attention(q, k, v; context key mask), no position encoding; 0 at padded query rows
//   out (+)= o W_oᵀ (one head: out (+)= o)
// Parameters (block prefix `attn_layers.layers.<i>.1.`): to_q (H·dh, D), to_k, to_v (G·dh, dim_context), to_out
// (D, H·dh) when heads > 1. The backward adds d loss / d context into the layer inputs' context_grad. Decoding reads
// the context's keys and values from the cache, projected once by project_context().
#include <cmath>
#include <string>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/attention_output.hpp"
#include "xtr/layers/kv_cache.hpp"
#include "xtr/layers/layer_inputs.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/score_bias.hpp"

namespace xtr {

template <class Layers, class Backend>
class CrossAttention {
 public:
  using T = typename Backend::scalar;
  using Inputs = LayerInputs<Backend>;
  using Attend = kernel<Backend, ops::Attention<NoScoreBias>>;
  using Plain = kernel<Backend, ops::Linear<epilogue::Acc>>;

  struct Saved {
    const T* input = nullptr;  // h (N, D)
    T* q = nullptr;            // (N, HD)
    T* kv = nullptr;           // (B·S, 2·KD)
    T* o = nullptr;            // (N, HD)
    T* lse = nullptr;          // (B, H, T)
  };

  void declare(ParameterStore<T>& store, const std::string& prefix, const LayersConfig& L, Index kv_heads,
               Index dim_context) {
    dim_ = L.dim;
    heads_ = L.heads;
    kv_heads_ = kv_heads;
    dim_head_ = L.dim_head;
    dim_context_ = dim_context;
    dropout_ = L.attn_dropout;
    const Index D = dim_, C = dim_context_, HD = heads_ * dim_head_, KD = kv_heads_ * dim_head_;
    const auto bound = [](Index fan_in) { return Init::uniform_bound(1.0 / std::sqrt(double(fan_in))); };
    to_q_ = store.add(prefix + "to_q.weight", {HD, D}, bound(D));
    to_k_ = store.add(prefix + "to_k.weight", {KD, C}, bound(C));
    const ParameterId to_v = store.add(prefix + "to_v.weight", {KD, C}, bound(C));
    out_.declare(store, prefix, D, heads_, dim_head_);
    require(store.entry(to_v).offset == store.entry(to_k_).offset + KD * C,
            "internal: the cross-attention's to_k, to_v must be adjacent in the parameter buffer");
  }

  Saved forward(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    const Index N = h.rows, B = pass.batch, Tn = pass.length, S = in.context_length;
    Saved s;
    s.input = h.data;
    View<T> q = pass.allocate(N, HD()), kv = pass.allocate(B * S, 2 * KD()), o = pass.allocate(N, HD());
    s.q = q.data;
    s.kv = kv.data;
    s.o = o.data;
    s.lse = pass.arena.template allocate<T>(B * heads_ * Tn);
    Plain::forward(h, pass.weights(to_q_), q, {}, pass.arena);
    Plain::forward(in.context, pass.weights(to_k_, 2 * KD()), kv, {}, pass.arena);
    Attend::forward(problem(pass, in), {q.data, Tn * HD(), HD()}, {kv.data, S * 2 * KD(), 2 * KD()},
                    {kv.data + KD(), S * 2 * KD(), 2 * KD()}, {o.data, Tn * HD(), HD()}, s.lse, pass.arena);
    out_.forward(pass, o, out, accumulate);
    return s;
  }

  void backward(Pass<Backend>& pass, const Inputs& in, const Saved& s, ConstView<T> dout, View<T> dh,
                bool accumulate_dh) const {
    const Index N = dout.rows, B = pass.batch, Tn = pass.length, S = in.context_length;
    View<T> dO = pass.allocate(N, HD());
    out_.backward(pass, ConstView<T>(s.o, N, HD()), dout, dO);
    View<T> dq = pass.allocate(N, HD()), dkv = pass.allocate(B * S, 2 * KD());
    kernel<Backend, ops::Fill>::run(dq, T(0));
    kernel<Backend, ops::Fill>::run(dkv, T(0));
    Attend::backward(problem(pass, in), {s.q, Tn * HD(), HD()}, {s.kv, S * 2 * KD(), 2 * KD()},
                     {s.kv + KD(), S * 2 * KD(), 2 * KD()}, {s.o, Tn * HD(), HD()}, s.lse, {dO.data, Tn * HD(), HD()},
                     {dq.data, Tn * HD(), HD()}, {dkv.data, S * 2 * KD(), 2 * KD()},
                     {dkv.data + KD(), S * 2 * KD(), 2 * KD()}, {}, pass.arena);
    Plain::backward(dkv, in.context, pass.weights(to_k_, 2 * KD()).w, {}, View<T>(in.context_grad, B * S, dim_context_),
                    true, pass.grad(to_k_), nullptr, T(1), pass.arena);
    Plain::backward(dq, ConstView<T>(s.input, N, dim_), pass.weights(to_q_).w, {}, dh, accumulate_dh,
                    pass.grad(to_q_), nullptr, T(1), pass.arena);
  }

  /// [k | v] of the context (B·S, 2·KD) into `kv` (decoding: once per sequence).
  void project_context(Pass<Backend>& pass, ConstView<T> context, View<T> kv) const {
    Plain::forward(context, pass.weights(to_k_, 2 * KD()), kv, {}, pass.arena);
  }

  void decode(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    const KVCache<T>& cache = *in.cache;
    const Index N = h.rows, n = pass.length, S = cache.context_length;
    View<T> q = pass.allocate(N, HD()), o = pass.allocate(N, HD());
    Plain::forward(h, pass.weights(to_q_), q, {}, pass.arena);
    ops::AttentionProblem<T> p = problem(pass, in);
    p.k_len = S;
    p.key_mask = cache.context_mask.empty() ? nullptr : cache.context_mask.data();
    p.key_mask_stride = S;
    p.query_mask = nullptr;
    const T* kv = cache.context_kv[std::size_t(in.layer)].data();
    Attend::forward(p, {q.data, n * HD(), HD()}, {kv, S * 2 * KD(), 2 * KD()}, {kv + KD(), S * 2 * KD(), 2 * KD()},
                    {o.data, n * HD(), HD()}, nullptr, pass.arena);
    out_.forward(pass, o, out, accumulate);
  }

 private:
  [[nodiscard]] Index HD() const { return heads_ * dim_head_; }
  [[nodiscard]] Index KD() const { return kv_heads_ * dim_head_; }

  [[nodiscard]] ops::AttentionProblem<T> problem(const Pass<Backend>& pass, const Inputs& in) const {
    ops::AttentionProblem<T> p;
    p.batch = pass.batch;
    p.heads = heads_;
    p.kv_heads = kv_heads_;
    p.dim_head = dim_head_;
    p.q_len = pass.length;
    p.k_len = in.context_length;
    p.causal = false;
    p.scale = T(1.0 / std::sqrt(double(dim_head_)));
    p.key_mask = in.context_mask;
    p.key_mask_stride = in.context_length;
    p.query_mask = pass.mask;
    p.query_mask_stride = pass.length;
    p.dropout = pass.rate(dropout_);
    if (p.dropout > 0) p.dropout_stream = pass.dropout_stream(std::uint64_t(3 * in.depth + in.layer), p.heads * p.q_len * (p.mem_len + p.k_len));
    return p;
  }
  Index dim_ = 0, heads_ = 0, kv_heads_ = 0, dim_head_ = 0, dim_context_ = 0;
  double dropout_ = 0;
  ParameterId to_q_, to_k_;
  AttentionOutput<Backend> out_;
};

}  // namespace xtr
