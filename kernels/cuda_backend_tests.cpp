// The Cuda<float> backend (xtr/backend/cuda/backend.hpp) against the CPU backend: every op on the same random inputs
// through kernel<Cpu<float>, Op> and kernel<Cuda<float>, Op>, then whole models trained three AdamW steps with dropout
// on both (losses, parameters, greedy tokens). Part of xtr_cuda_tests (kernels/cuda_tests.cpp calls these); without a
// device only the no-GPU errors run.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "xtr/backend/cuda/backend.hpp"
#include "xtr/xtr.hpp"

namespace xtr::cuda::testing {

int backend_failures = 0;

namespace {

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++backend_failures;
  }
}

template <class F>
bool throws_containing(F&& f, const char* expected) {
  try {
    f();
  } catch (const Error& e) {
    if (std::strstr(e.what(), expected)) return true;
    std::printf("  message was: %s\n  expected to contain: %s\n", e.what(), expected);
  }
  return false;
}

using DecoderNet = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cuda<float>>;
TransformerConfig small_decoder() {
  return {.num_tokens = 40, .max_seq_len = 12, .emb_dropout = 0.1,
          .layers = {.dim = 32, .depth = 2, .heads = 4, .dim_head = 32, .attn_dropout = 0.1, .ff_dropout = 0.1}};
}

/// The same random values in host memory (for the CPU kernel) and in the Cuda backend's memory.
struct Pair {
  Tensor<float> cpu, gpu;
  Pair(Index rows, Index cols, std::uint64_t seed, double scale = 1.0)
      : cpu(Shape{rows, cols}), gpu(Shape{rows, cols}, Uninitialized{}, Cuda<float>::memory()) {
    const RandomStream rs{seed, 3};
    for (Index i = 0; i < cpu.size(); ++i) cpu[i] = seed == 0 ? 0.0f : float(scale * rs.normal(std::uint64_t(i)));
    std::copy_n(cpu.data(), cpu.size(), gpu.data());
  }
  View<float> c() { return {cpu.data(), cpu.shape().rows(), cpu.shape().cols()}; }
  View<float> g() { return {gpu.data(), gpu.shape().rows(), gpu.shape().cols()}; }
};

/// Compares the two sides: max |cpu − gpu| ≤ tolerance · max(1, max |cpu|).
void expect_close(const Pair& p, const std::string& what, double tolerance = 2e-5) {
  double err = 0, scale = 1;
  for (Index i = 0; i < p.cpu.size(); ++i) {
    const double a = p.cpu[i], b = p.gpu[i];
    err = std::isfinite(b) ? std::max(err, std::abs(a - b)) : INFINITY;
    scale = std::max(scale, std::abs(a));
  }
  std::printf("  %-48s scaled error %.2e\n", what.c_str(), err / scale);
  expect(err <= tolerance * scale, what + ": Cuda<float> differs from Cpu<float>");
}

template <class Norm>
void compare_norm(const char* name) {
  const Index N = 37, D = 96;
  Pair x(N, D, 1), r(N, D, 2), gain(1, D, 3, 0.1), bias(1, D, 4), h(N, D, 5), xhat(N, D, 0), rstd(1, N, 0);
  Pair dh(N, D, 6), dx(N, D, 7), dgain(1, D, 0), dbias(1, D, 0);
  const bool has_bias = Norm::subtracts_mean;
  kernel<Cpu<float>, ops::Normalize<Norm>>::forward(x.c(), r.cpu.data(), {gain.cpu.data(), 1.0f, has_bias ? bias.cpu.data() : nullptr},
                                                    h.c(), true, xhat.cpu.data(), rstd.cpu.data());
  kernel<Cuda<float>, ops::Normalize<Norm>>::forward(x.g(), r.gpu.data(), {gain.gpu.data(), 1.0f, has_bias ? bias.gpu.data() : nullptr},
                                                     h.g(), true, xhat.gpu.data(), rstd.gpu.data());
  expect_close(h, std::string(name) + " forward (residual, accumulate)");
  expect_close(xhat, std::string(name) + " x̂");
  Arena host_arena, device_arena(Cuda<float>::memory());
  kernel<Cpu<float>, ops::Normalize<Norm>>::backward(dh.c(), xhat.cpu.data(), rstd.cpu.data(),
                                                     {gain.cpu.data(), 1.0f, nullptr}, dx.c(),
                                                     {dgain.cpu.data(), has_bias ? dbias.cpu.data() : nullptr},
                                                     host_arena);
  kernel<Cuda<float>, ops::Normalize<Norm>>::backward(dh.g(), xhat.gpu.data(), rstd.gpu.data(),
                                                      {gain.gpu.data(), 1.0f, nullptr}, dx.g(),
                                                      {dgain.gpu.data(), has_bias ? dbias.gpu.data() : nullptr},
                                                      device_arena);
  expect_close(dx, std::string(name) + " dx");
  expect_close(dgain, std::string(name) + " dγ", 1e-4);
  expect_close(dbias, std::string(name) + " dβ", 1e-4);
}

template <class E>
void compare_linear(const char* name, double dropout = 0) {
  using S = epilogue::Shape<E>;
  const Index N = 29, W = 48, in = 40, F = epilogue::output_cols<E>(W);
  Pair x(N, in, 11), w(W, in, 12, 0.2), b(1, W, 13), out(N, F, 14), saved(N, W, 0), dout(N, F, 15);
  Pair dx(N, in, 16), dw(W, in, 17), db(1, W, 18);
  epilogue::Operands<float> oc{.bias = b.cpu.data(), .scale = 0.7f, .dropout = dropout,
                               .stream = RandomStream{5, 1}, .saved = saved.cpu.data()};
  epilogue::Operands<float> og = oc;
  og.bias = b.gpu.data();
  og.saved = saved.gpu.data();
  Arena host_arena, device_arena(Cuda<float>::memory());
  kernel<Cpu<float>, ops::Linear<E>>::forward(x.c(), ops::Weights<float>{w.c()}, out.c(), oc, host_arena);
  kernel<Cuda<float>, ops::Linear<E>>::forward(x.g(), ops::Weights<float>{w.g()}, out.g(), og, device_arena);
  expect_close(out, std::string("Linear ") + name + " forward");
  if (epilogue::saves_preactivation<E>) expect_close(saved, std::string("Linear ") + name + " pre-activation");
  kernel<Cpu<float>, ops::Linear<E>>::backward(dout.c(), x.c(), w.c(), oc, dx.c(), true, dw.cpu.data(),
                                               S::bias ? db.cpu.data() : nullptr, 0.5f, host_arena);
  kernel<Cuda<float>, ops::Linear<E>>::backward(dout.g(), x.g(), w.g(), og, dx.g(), true, dw.gpu.data(),
                                                S::bias ? db.gpu.data() : nullptr, 0.5f, device_arena);
  expect_close(dx, std::string("Linear ") + name + " dx (accumulated)");
  expect_close(dw, std::string("Linear ") + name + " dW");
  expect_close(db, std::string("Linear ") + name + " db");
}

void compare_attention_op(bool bias_table) {
  const Index B = 2, H = 4, KV = 2, dh = 32, T = 45;
  Pair q(B * T, H * dh, 21), k(B * T, KV * dh, 22), v(B * T, KV * dh, 23), o(B * T, H * dh, 0), lse(1, B * H * T, 0);
  Pair dout(B * T, H * dh, 24), dq(B * T, H * dh, 0), dk(B * T, KV * dh, 0), dv(B * T, KV * dh, 0);
  Pair table(H, 2 * T - 1, 25), dtable(H, 2 * T - 1, 0);
  std::vector<std::uint8_t> host_mask(std::size_t(B * T), 1);
  for (Index t = T - 5; t < T; ++t) host_mask[std::size_t(T + t)] = 0;  // batch row 1: 5 padded keys
  Tensor<std::uint8_t> mask(Shape{B * T}, Cuda<float>::memory());
  std::copy(host_mask.begin(), host_mask.end(), mask.data());
  auto problem = [&](bool gpu) {
    ops::AttentionProblem<float> p;
    p.batch = B, p.heads = H, p.kv_heads = KV, p.dim_head = dh, p.q_len = T, p.k_len = T, p.causal = true;
    p.scale = float(1.0 / std::sqrt(double(dh)));
    p.key_mask = gpu ? mask.data() : host_mask.data();
    p.key_mask_stride = T;
    p.dropout = 0.1;
    p.dropout_stream = RandomStream{9, 2};
    if (bias_table) {
      p.bias = gpu ? table.gpu.data() : table.cpu.data();
      p.bias_zero = T - 1;
      p.bias_stride = 2 * T - 1;
    }
    return p;
  };
  const auto heads = [&](float* data, Index width) { return ops::HeadsView<float>{data, T * width, width}; };
  Arena host_arena, device_arena(Cuda<float>::memory());
  kernel<Cpu<float>, ops::Attention<NoScoreBias>>::forward(problem(false), heads(q.cpu.data(), H * dh),
                                                          heads(k.cpu.data(), KV * dh), heads(v.cpu.data(), KV * dh),
                                                          heads(o.cpu.data(), H * dh), lse.cpu.data(), host_arena);
  kernel<Cuda<float>, ops::Attention<NoScoreBias>>::forward(problem(true), heads(q.gpu.data(), H * dh),
                                                           heads(k.gpu.data(), KV * dh), heads(v.gpu.data(), KV * dh),
                                                           heads(o.gpu.data(), H * dh), lse.gpu.data(), device_arena);
  const std::string name = bias_table ? "Attention (bias table, dropout, GQA, padding)" : "Attention (dropout, GQA)";
  expect_close(o, name + " O");
  kernel<Cpu<float>, ops::Attention<NoScoreBias>>::backward(
      problem(false), heads(q.cpu.data(), H * dh), heads(k.cpu.data(), KV * dh), heads(v.cpu.data(), KV * dh),
      heads(o.cpu.data(), H * dh), lse.cpu.data(), heads(dout.cpu.data(), H * dh), heads(dq.cpu.data(), H * dh),
      heads(dk.cpu.data(), KV * dh), heads(dv.cpu.data(), KV * dh), {bias_table ? dtable.cpu.data() : nullptr},
      host_arena);
  kernel<Cuda<float>, ops::Attention<NoScoreBias>>::backward(
      problem(true), heads(q.gpu.data(), H * dh), heads(k.gpu.data(), KV * dh), heads(v.gpu.data(), KV * dh),
      heads(o.gpu.data(), H * dh), lse.gpu.data(), heads(dout.gpu.data(), H * dh), heads(dq.gpu.data(), H * dh),
      heads(dk.gpu.data(), KV * dh), heads(dv.gpu.data(), KV * dh), {bias_table ? dtable.gpu.data() : nullptr},
      device_arena);
  expect_close(dq, name + " dQ", 5e-5);
  expect_close(dk, name + " dK", 5e-5);
  expect_close(dv, name + " dV", 5e-5);
  if (bias_table) expect_close(dtable, name + " d table", 1e-4);
}

/// One decoding step over a KV cache laid out (batch, kv_heads, capacity, dim_head): each head's rows together
/// (ops::HeadsView::head_stride), as layers/kv_cache.hpp keeps them.
void compare_cached_attention() {
  const Index B = 2, H = 4, KV = 2, dh = 64, capacity = 40, live = 23;
  Pair q(B, H * dh, 61), k(B * KV * capacity, dh, 62), v(B * KV * capacity, dh, 63), o(B, H * dh, 0);
  auto problem = [&] {
    ops::AttentionProblem<float> p;
    p.batch = B, p.heads = H, p.kv_heads = KV, p.dim_head = dh, p.q_len = 1, p.k_len = live;
    p.q_offset = live - 1, p.causal = true, p.scale = float(1.0 / std::sqrt(double(dh)));
    return p;
  };
  const auto cache = [&](float* data) {
    return ops::HeadsView<const float>{data, KV * capacity * dh, dh, capacity * dh};
  };
  Arena host_arena, device_arena(Cuda<float>::memory());
  kernel<Cpu<float>, ops::Attention<NoScoreBias>>::forward(problem(), {q.cpu.data(), H * dh, H * dh},
                                                          cache(k.cpu.data()), cache(v.cpu.data()),
                                                          {o.cpu.data(), H * dh, H * dh}, nullptr, host_arena);
  kernel<Cuda<float>, ops::Attention<NoScoreBias>>::forward(problem(), {q.gpu.data(), H * dh, H * dh},
                                                           cache(k.gpu.data()), cache(v.gpu.data()),
                                                           {o.gpu.data(), H * dh, H * dh}, nullptr, device_arena);
  expect_close(o, "Attention over a KV cache (head-major layout, GQA)");
}

void compare_small_ops() {
  const Index N = 33, C = 64, heads = 4;
  Arena host_arena, device_arena(Cuda<float>::memory());
  {
    Pair x(N, C, 31), y(N, C, 32);
    kernel<Cpu<float>, ops::Axpby>::run(x.c(), y.c(), 0.3f, -1.5f);
    kernel<Cuda<float>, ops::Axpby>::run(x.g(), y.g(), 0.3f, -1.5f);
    expect_close(y, "Axpby");
    std::copy_n(y.cpu.data(), y.cpu.size(), y.gpu.data());  // equal inputs (the multiply-adds may round differently)
    kernel<Cpu<float>, ops::Dropout>::run(y.c(), 0.3, RandomStream{4, 4});
    kernel<Cuda<float>, ops::Dropout>::run(y.g(), 0.3, RandomStream{4, 4});
    expect_close(y, "Dropout (the same mask)", 0);
    kernel<Cpu<float>, ops::Fill>::run(View<float>(y.cpu.data(), N, C / 2, C), 2.5f);
    kernel<Cuda<float>, ops::Fill>::run(View<float>(y.gpu.data(), N, C / 2, C), 2.5f);
    expect_close(y, "Fill (strided)", 0);
  }
  {
    Pair x(N, C, 33), s(1, heads, 34), y(N, C, 0), dy(N, C, 35), dx(N, C, 0), ds(1, heads, 36);
    kernel<Cpu<float>, ops::ScaleHeads>::forward(x.c(), s.cpu.data(), heads, y.c());
    kernel<Cuda<float>, ops::ScaleHeads>::forward(x.g(), s.gpu.data(), heads, y.g());
    expect_close(y, "ScaleHeads forward");
    kernel<Cpu<float>, ops::ScaleHeads>::backward(dy.c(), x.c(), s.cpu.data(), heads, dx.c(), ds.cpu.data());
    kernel<Cuda<float>, ops::ScaleHeads>::backward(dy.g(), x.g(), s.gpu.data(), heads, dx.g(), ds.gpu.data());
    expect_close(dx, "ScaleHeads dx");
    expect_close(ds, "ScaleHeads ds", 1e-4);
  }
  {
    Pair a(N, C, 37), b(N, C, 38), y(N, C, 0), dy(N, C, 39), da(N, C, 40), db(N, C, 0), mu(N, heads, 41, 0.3),
        dmu(N, heads, 0);
    kernel<Cpu<float>, ops::Multiply>::forward(a.c(), b.c(), y.c());
    kernel<Cuda<float>, ops::Multiply>::forward(a.g(), b.g(), y.g());
    expect_close(y, "Multiply forward");
    kernel<Cpu<float>, ops::Multiply>::backward(dy.c(), a.c(), b.c(), da.c(), db.c());
    kernel<Cuda<float>, ops::Multiply>::backward(dy.g(), a.g(), b.g(), da.g(), db.g());
    expect_close(da, "Multiply da");
    expect_close(db, "Multiply db");
    kernel<Cpu<float>, ops::MixHeads>::forward(a.c(), b.c(), mu.cpu.data(), heads, heads, y.c());
    kernel<Cuda<float>, ops::MixHeads>::forward(a.g(), b.g(), mu.gpu.data(), heads, heads, y.g());
    expect_close(y, "MixHeads forward");
    kernel<Cpu<float>, ops::MixHeads>::backward(dy.c(), a.c(), b.c(), mu.cpu.data(), heads, heads, da.c(), db.c(),
                                                dmu.cpu.data());
    kernel<Cuda<float>, ops::MixHeads>::backward(dy.g(), a.g(), b.g(), mu.gpu.data(), heads, heads, da.g(), db.g(),
                                                 dmu.gpu.data());
    expect_close(da, "MixHeads da");
    expect_close(db, "MixHeads db");
    expect_close(dmu, "MixHeads dμ", 1e-4);
    kernel<Cpu<float>, ops::Activation<act::Silu>>::forward(a.c(), y.c());
    kernel<Cuda<float>, ops::Activation<act::Silu>>::forward(a.g(), y.g());
    expect_close(y, "Activation<Silu> forward");
    kernel<Cpu<float>, ops::Activation<act::Gelu>>::backward(dy.c(), a.c(), da.c(), true);
    kernel<Cuda<float>, ops::Activation<act::Gelu>>::backward(dy.g(), a.g(), da.g(), true);
    expect_close(da, "Activation<Gelu> backward (accumulate)");
  }
  {
    const Index V = 50, D = 24, T_len = 11, rows = 2 * T_len;
    Pair table(V, D, 42), positions(T_len + 3, D, 43), x(rows, D, 0), dtable(V, D, 0), dpositions(T_len + 3, D, 0);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(rows));
    for (Index i = 0; i < rows; ++i) ids[std::size_t(i)] = std::int32_t((i * 7) % V);  // repeats: scatter-adds meet
    kernel<Cpu<float>, ops::Embedding>::forward(ids.data(), rows, T_len, 3, table.c(), positions.cpu.data(), 0.5f,
                                                x.c());
    kernel<Cuda<float>, ops::Embedding>::forward(ids.data(), rows, T_len, 3, table.g(), positions.gpu.data(), 0.5f,
                                                 x.g());
    expect_close(x, "Embedding forward (host ids)");
    Pair dx(rows, D, 44);
    kernel<Cpu<float>, ops::Embedding>::backward(ids.data(), rows, T_len, dx.c(), dtable.cpu.data(),
                                                 dpositions.cpu.data(), 0.5f);
    kernel<Cuda<float>, ops::Embedding>::backward(ids.data(), rows, T_len, dx.g(), dtable.gpu.data(),
                                                  dpositions.gpu.data(), 0.5f);
    expect_close(dtable, "Embedding dE");
    expect_close(dpositions, "Embedding dP");
  }
  {
    const Index rows = 21, V = 300;
    Pair logits(rows, V, 45, 3.0), dlogits(rows, V, 0);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
    for (Index i = 0; i < rows; ++i) targets[std::size_t(i)] = i % 5 == 4 ? -100 : std::int32_t((i * 37) % V);
    const double lc = kernel<Cpu<float>, ops::SoftmaxCrossEntropy>::run(logits.c(), targets.data(), -100,
                                                                          dlogits.cpu.data(), 0.5f);
    const double lg = kernel<Cuda<float>, ops::SoftmaxCrossEntropy>::run(logits.g(), targets.data(), -100,
                                                                           dlogits.gpu.data(), 0.5f);
    std::printf("  %-48s %.7f vs %.7f\n", "SoftmaxCrossEntropy loss", lc, lg);
    expect(std::abs(lc - lg) <= 1e-5 * std::max(1.0, std::abs(lc)), "SoftmaxCrossEntropy loss");
    expect_close(dlogits, "SoftmaxCrossEntropy dlogits (ignored rows 0)");
  }
  {
    const Index n = 10'001;
    Pair w(1, n, 46), g(1, n, 47), m(1, n, 48, 0.1), v(1, n, 49, 0.1);
    for (Index i = 0; i < n; ++i) v.cpu[i] = v.gpu[i] = std::abs(v.cpu[i]);
    const kernel<Cpu<float>, ops::AdamWUpdate>::Coefficients cc{1e-3f, 0.99f, 1e-8f, 0.9f, 0.999f, 0.1f, 0.001f, 0.3f};
    const kernel<Cuda<float>, ops::AdamWUpdate>::Coefficients cg{1e-3f, 0.99f, 1e-8f, 0.9f, 0.999f, 0.1f, 0.001f, 0.3f};
    kernel<Cpu<float>, ops::AdamWUpdate>::step(w.cpu.data(), g.cpu.data(), m.cpu.data(), v.cpu.data(), n, cc);
    kernel<Cuda<float>, ops::AdamWUpdate>::step(w.gpu.data(), g.gpu.data(), m.gpu.data(), v.gpu.data(), n, cg);
    expect_close(w, "AdamWUpdate w");
    expect_close(m, "AdamWUpdate m");
    expect_close(v, "AdamWUpdate v");
  }
  {
    const ops::RotarySpec spec{.dim = 16, .theta = 10000, .xpos_scale_base = 512};
    const Index rows = 26, dh = 32, width = 3 * heads * dh;
    auto host_table = kernel<Cpu<float>, ops::Rotate>::make_table(spec, 8);
    auto device_table = kernel<Cuda<float>, ops::Rotate>::make_table(spec, 8);
    kernel<Cpu<float>, ops::Rotate>::ensure(host_table, 40);  // growth past the first size
    kernel<Cuda<float>, ops::Rotate>::ensure(device_table, 40);
    Pair qkv(rows, width, 50);
    for (bool key : {false, true}) {
      float* c = qkv.cpu.data() + (key ? heads * dh : 0);
      float* g = qkv.gpu.data() + (key ? heads * dh : 0);
      kernel<Cpu<float>, ops::Rotate>::apply(host_table, c, rows, width, heads, dh, 13, 5, false, key);
      kernel<Cuda<float>, ops::Rotate>::apply(device_table, g, rows, width, heads, dh, 13, 5, false, key);
    }
    expect_close(qkv, "Rotate q and k (xpos, partial rotary dim)");
  }
}

struct ModelRun {
  std::vector<double> losses;
  std::vector<float> first_gradients, params;
  TokenBatch generated;
};

template <class Net>
ModelRun train_and_generate(const TransformerConfig& config) {
  AutoregressiveWrapper<Net> model{Net{config}};
  AdamW<float, typename Net::backend_type> opt(model.parameters(), {.lr = 1e-3});
  ModelRun r;
  for (int step = 0; step < 3; ++step) {
    TokenBatch batch(3, config.max_seq_len + 1);
    const RandomStream rs{77, std::uint64_t(step)};
    for (Index i = 0; i < batch.batch * batch.length; ++i)
      batch.data[std::size_t(i)] = std::int32_t(rs.below(std::uint64_t(i), std::uint64_t(config.num_tokens)));
    const auto loss = model(batch);
    r.losses.push_back(loss.item());
    loss.backward();
    if (step == 0) {
      const auto& grads = model.parameters().grads();
      r.first_gradients.assign(grads.data(), grads.data() + grads.size());
    }
    opt.step();
    opt.zero_grad();
  }
  const auto& values = model.parameters().values();
  r.params.assign(values.data(), values.data() + values.size());
  model.eval();
  r.generated = model.generate(TokenBatch{{1, 2, 3}, {4, 5, 6}}, 12, {.temperature = 0});  // past max_seq_len
  return r;
}

template <class Layers>
void compare_model(const char* name, const TransformerConfig& config) {
  const auto cpu = train_and_generate<TransformerWrapper<Layers, Cpu<float>>>(config);
  const auto gpu = train_and_generate<TransformerWrapper<Layers, Cuda<float>>>(config);
  double loss_err = 0, grad_err = 0, grad_scale = 1e-30, param_err = 0;
  for (std::size_t i = 0; i < cpu.losses.size(); ++i)
    loss_err = std::max(loss_err, std::abs(cpu.losses[i] - gpu.losses[i]));
  for (std::size_t i = 0; i < cpu.first_gradients.size(); ++i) {
    grad_err = std::max(grad_err, double(std::abs(cpu.first_gradients[i] - gpu.first_gradients[i])));
    grad_scale = std::max(grad_scale, double(std::abs(cpu.first_gradients[i])));
  }
  for (std::size_t i = 0; i < cpu.params.size(); ++i)
    param_err = std::max(param_err, double(std::abs(cpu.params[i] - gpu.params[i])));
  std::printf("  %-48s losses %.2e, first gradients %.2e (scaled), parameters %.2e\n", name, loss_err,
              grad_err / grad_scale, param_err);
  expect(loss_err <= 1e-4, std::string(name) + ": training losses on Cuda<float> and Cpu<float> differ");
  expect(grad_err <= 1e-4 * grad_scale, std::string(name) + ": the first step's gradients differ");
  // Adam moves a parameter by about lr a step whatever its gradient's size, so a gradient within rounding of 0 may
  // step either way on the two backends: the parameters after 3 steps agree to a few lr, not to rounding.
  expect(param_err <= 6e-3, std::string(name) + ": parameters after 3 AdamW steps differ");
  expect(cpu.generated.data == gpu.generated.data, std::string(name) + ": greedy tokens differ");
}

}  // namespace

/// What a machine without a GPU says to a user of Cuda<float>.
void check_backend_without_device() {
  expect(throws_containing([] { (void)Cuda<float>::memory().allocate(64); }, "no CUDA device at run time"),
         "Cuda<float>::memory() explains that there is no device");
  expect(throws_containing([] { DecoderNet net(small_decoder()); }, "no CUDA device at run time"),
         "a model on Cuda<float> explains that there is no device");
  XTransformerConfig seq2seq;
  seq2seq.dim = 16;
  seq2seq.encoder = {.num_tokens = 20, .max_seq_len = 8, .layers = {.depth = 1, .heads = 2, .dim_head = 32}};
  seq2seq.decoder = {.num_tokens = 20, .max_seq_len = 8, .layers = {.depth = 1, .heads = 2, .dim_head = 32}};
  expect(throws_containing([&] { XTransformer<Encoder<>, Decoder<>, Cuda<float>> s2s(seq2seq); },
                           "no CUDA device at run time"),
         "an XTransformer on Cuda<float> explains that there is no device");
}

/// Every op, then whole models, Cuda<float> against Cpu<float>. NEVER RUN so far (no GPU lent yet).
void compare_backend_on_device() {
  std::printf("Cuda<float> vs Cpu<float>, op by op:\n");
  compare_norm<LayerNorm>("LayerNorm");
  compare_norm<RMSNorm>("RMSNorm");
  compare_norm<ScaleNorm>("ScaleNorm");
  compare_norm<SimpleRMSNorm>("SimpleRMSNorm");
  using namespace epilogue;
  compare_linear<Acc>("Acc");
  compare_linear<Bias<Scale<Acc>>>("Bias<Scale<Acc>> (tied logits)");
  compare_linear<AddTo<Bias<Acc>>>("AddTo<Bias<Acc>>");
  compare_linear<AddTo<Scale<Acc>>>("AddTo<Scale<Acc>>");
  compare_linear<Dropout<Act<act::Gelu, Bias<Acc>>>>("Dropout<Act<Gelu, Bias<Acc>>>", 0.2);
  compare_linear<Dropout<Glu<act::Silu, Bias<Acc>>>>("Dropout<Glu<Silu, Bias<Acc>>>", 0.2);
  compare_linear<Act<act::Sigmoid, Acc>>("Act<Sigmoid, Acc>");
  compare_attention_op(false);
  compare_attention_op(true);
  compare_cached_attention();
  compare_small_ops();
  std::printf("Cuda<float> vs Cpu<float>, whole models (3 AdamW steps with dropout, greedy decoding):\n");
  compare_model<Decoder<Rotary, LayerNorm, GELU>>("Decoder<Rotary, LayerNorm, GELU>", small_decoder());
  compare_model<Decoder<AbsoluteLearned, RMSNorm, SwiGLU>>("Decoder<AbsoluteLearned, RMSNorm, SwiGLU>",
                                                           small_decoder());
  TransformerConfig alibi = small_decoder();
  alibi.layers.dim_head = 64;
  alibi.layers.heads = 2;
  compare_model<Decoder<NoPosition, LayerNorm, GELU, ALiBi>>("Decoder<NoPosition, ..., ALiBi> (dim_head 64)", alibi);
}

}  // namespace xtr::cuda::testing
