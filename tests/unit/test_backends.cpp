// Backends against each other. Every op that both Cpu<T> and Reference<T> implement (backend/ops.hpp) runs on the
// same fresh random inputs through kernel<Cpu<T>, Op> and kernel<Reference<double>, Op>, in double and in float (the
// float CPU kernel against the double reference, both fed the same float-representable inputs):
//   Linear<E> for every epilogue shape the layers use (plain, bias, scale, residual add, activation or gated
//     activation with dropout), bias present and absent, dropout on and off, the saved pre-activation, α ≠ 1, dx
//     accumulated or overwritten, dz in dout's memory, row-strided operands, the bf16-weights forward (prefill and
//     decoding shapes);
//   Normalize<N> for LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm and L2Norm: unit offset, bias, an optional gain
//     left out, residual input, accumulate, in place, saving x̂ and r or not, strided rows, the backward, and rows
//     whose L2 norm is clamped to eps;
//   Rotate with partial rotary dims, xpos, interpolation, base rescale, forward and inverse, q and key, table growth;
//   Attention<NoScoreBias> built directly: causal and bidirectional, key mask (holes, tail padding, a fully masked
//     batch row), query mask, GQA, decoding offsets, dropout, memory keys with their gradients, a relative bias table
//     with its gradient, head sizes 16 and 24, lengths around the CPU kernel's 64-wide tiles;
//   Embedding, SoftmaxCrossEntropy (ignore_index, α, in place), AdamWUpdate, Fill, Dropout, Axpby, ScaleHeads,
//     Multiply, MixHeads, Activation<A>.
// Sizes are odd, and some are large enough that the CPU's row loops, per-thread partial sums and Eigen's GEMMs run
// threaded (with OMP_NUM_THREADS ≥ 2, as ctest sets).
// Then the oracle itself is proven by central differences in double: the Reference's Linear (each epilogue),
// Normalize (each norm), Rotate and Attention (memory keys, bias table, masks, dropout) backward.
// Last, whole models trained three AdamW steps with dropout on both backends end with equal parameters and decode the
// same tokens: a Decoder, an Encoder with a key mask, an XTransformer.
//
// Every comparison reports its worst entry (INFO). Operands carry NaN padding where they are strided: a stray read
// turns an output into NaN and a stray write leaves a number where the reference keeps NaN, both of which fail.
// XTR_BACKENDS_REPORT=1 prints the worst error measured per op and precision (how the tolerances below were set).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_backends {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using xtr::testing::check_gradient;
using xtr::testing::random_values;

namespace {

constexpr std::size_t sz(Index n) { return static_cast<std::size_t>(n); }
template <class T>
constexpr T nan_v = std::numeric_limits<T>::quiet_NaN();
constexpr double inf_v = std::numeric_limits<double>::infinity();

using Ref = Reference<double>;

template <class T>
constexpr const char* precision_name = std::is_same_v<T, float> ? "float" : "double";

// ---------------------------------------------------------------------------------------------------------------------
// Tolerances: max |Cpu<T> − Reference<double>| ≤ tolerance · max |reference| over each compared tensor.
//
// double: both compute the same formula in double on the same inputs and differ only in the order of their roundings
//   (Eigen's blocked, vectorised GEMMs and sums vs plain loops, the online softmax vs an explicit one). An output is a
//   sum of at most a few hundred terms, so each is off by ≲ n·2^-53 ≈ 1e-14 of the magnitudes summed; measured worst
//   (XTR_BACKENDS_REPORT=1, GCC 12 -O3 -march=native, 2 threads): 3e-14 norm backward (dγ over 300 rows), 2.4e-15
//   attention backward, 1.2e-15 Linear. 1e-12 keeps a wide margin and still catches any wrong term, which shows up at
//   1e-3 or more.
// float: Cpu<float> rounds every operation to float (2^-24 ≈ 6e-8) against a double reference; sums of ≤ 130 terms
//   and the softmax's exp/log leave ≲ 1e-6 (measured: 5.4e-7 Linear, 1.2e-6 attention backward, 5e-7 attention
//   forward, 6.3e-7 ScaleHeads). 1e-5 is the bound; attention's backward, whose dS = P ⊙ (dP − Δ) cancels, gets 2e-5
//   (as in test_kernels.cpp). Parameter gradients that sum over many rows get row_sum_tolerance (below).
// bf16 weights with ≤ 8 rows (decoding): the CPU kernel widens bfloat16 to float and accumulates in float by design
//   (the input is rounded to float too), so that path is held to the float bound in both precisions (measured 3.4e-7).
template <class T>
struct BackendTolerance;
template <>
struct BackendTolerance<double> {
  static constexpr double op = 1e-12, attention_backward = 1e-12;
};
template <>
struct BackendTolerance<float> {
  static constexpr double op = 1e-5, attention_backward = 2e-5;
};
constexpr double bf16_decoding_tolerance = BackendTolerance<float>::op;

/// The worst error seen per (op, precision), printed at exit with XTR_BACKENDS_REPORT=1.
struct Measured {
  std::map<std::string, double> worst;
  ~Measured() {
    if (!std::getenv("XTR_BACKENDS_REPORT")) return;
    for (const auto& [what, e] : worst) std::printf("  %-48s %.3g\n", what.c_str(), e);
  }
};
Measured& measured() {
  static Measured m;
  return m;
}

struct Diff {
  double worst = 0, scale = 0;  // max |got − ref| over finite entries; max |ref|
  std::size_t at = 0;
  double got_at = 0, ref_at = 0;
  bool special_mismatch = false;  // a NaN or ∞ in one that the other does not have
  [[nodiscard]] double relative() const {
    if (special_mismatch) return inf_v;
    if (worst == 0) return 0;
    return scale > 0 ? worst / scale : inf_v;
  }
};

Diff diff(const std::vector<double>& got, const std::vector<double>& ref) {
  Diff d;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    if (!std::isfinite(g) || !std::isfinite(r)) {
      const bool same = (std::isnan(g) && std::isnan(r)) || (std::isinf(g) && g == r);
      if (!same && !d.special_mismatch) {
        d.special_mismatch = true;
        d.at = i, d.got_at = g, d.ref_at = r;
      }
      continue;
    }
    d.scale = std::max(d.scale, std::abs(r));
    const double e = std::abs(g - r);
    if (e > d.worst && !d.special_mismatch) {
      d.worst = e;
      d.at = i, d.got_at = g, d.ref_at = r;
    }
  }
  return d;
}

/// got ≈ ref: max |got − ref| ≤ tol · max |ref| over the finite entries; NaN and ∞ entries (untouched NaN padding, the
/// +∞ lse of a row that sees no key) must be the same in both. The reference must not be all zeros (a comparison of
/// zeros proves nothing). `key` names the (op, precision) the error counts for in the report.
void check_close(const std::string& what, const std::vector<double>& got, const std::vector<double>& ref, double tol,
                 const std::string& key) {
  REQUIRE(got.size() == ref.size());
  const Diff d = diff(got, ref);
  std::ostringstream s;
  s.precision(10);
  if (d.special_mismatch)
    s << what << ": entry [" << d.at << "] got " << d.got_at << ", reference " << d.ref_at
      << " (a NaN or infinity in one only: a stray read or write, or a missed mask)";
  else
    s << what << ": worst entry [" << d.at << "] got " << d.got_at << ", reference " << d.ref_at << "; |diff| "
      << d.worst << " = " << d.relative() << " x max|ref| " << d.scale << " (tolerance " << tol << ")";
  INFO(s.str());
  CHECK(d.scale > 0);
  CHECK(d.relative() <= tol);
  double& w = measured().worst[key];
  w = std::max(w, d.relative());
}

/// n normal values (times `scale`, plus `shift`) rounded to T: both backends then see exactly the same inputs.
template <class T>
std::vector<double> draw(Index n, std::uint64_t seed, double scale = 1, double shift = 0) {
  auto v = random_values(n, seed, scale);
  for (auto& e : v) e = double(T(e + shift));
  return v;
}
template <class T>
std::vector<double> rounded(std::vector<double> v) {
  for (auto& e : v) e = double(T(e));
  return v;
}
template <class T>
std::vector<T> to(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = T(v[i]);
  return out;
}
template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  return {v.begin(), v.end()};
}
/// (rows, cols) values with rows `ld` apart; the padding is NaN.
template <class T>
std::vector<T> strided(const std::vector<double>& logical, Index rows, Index cols, Index ld) {
  std::vector<T> s(sz(rows * ld), nan_v<T>);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) s[sz(r * ld + c)] = T(logical[sz(r * cols + c)]);
  return s;
}

// ---------------------------------------------------------------------------------------------------------------------
// Linear<E>

using EAcc = epilogue::Acc;
using EBias = epilogue::Bias<epilogue::Acc>;
using EAddTo = epilogue::AddTo<epilogue::Acc>;
using EAddToBias = epilogue::AddTo<epilogue::Bias<epilogue::Acc>>;
using EGelu = epilogue::Dropout<epilogue::Act<act::Gelu, EBias>>;
using ESilu = epilogue::Dropout<epilogue::Act<act::Silu, EBias>>;
using EReluSquared = epilogue::Dropout<epilogue::Act<act::ReluSquared, EBias>>;
using EGeglu = epilogue::Dropout<epilogue::Glu<act::Gelu, EBias>>;
using ESwiglu = epilogue::Dropout<epilogue::Glu<act::Silu, EBias>>;
using EReluSquaredGlu = epilogue::Dropout<epilogue::Glu<act::ReluSquared, EBias>>;
using EBiasScale = epilogue::Bias<epilogue::Scale<epilogue::Acc>>;  // to_logits (tied embeddings: dim^-½)
using EAddToBiasScale = epilogue::AddTo<EBiasScale>;               // the CPU's scratch path for out += s·z + b
using ESigmoid = epilogue::Act<act::Sigmoid, epilogue::Acc>;        // attention gates
using ESigmoidBias = epilogue::Act<act::Sigmoid, EBias>;            // value-residual mix
using ESiluBias = epilogue::Act<act::Silu, EBias>;                  // the dynamic position bias MLP

struct LinearCase {
  Index rows = 37, in = 19, out = 29;  // out: width of z = x Wᵀ (gated: 2·F)
  bool bias = false;
  double dropout = 0;
  Index pad = 0;  // x, out, dout and dx rows are cols + pad apart
  double scale = 0.37;  // Scale<…>: s
  bool bf16 = false, keep_saved = true, accumulate_dx = false, dz_in_dout = false;
  double alpha = 0.7;
  [[nodiscard]] std::string str() const {
    std::ostringstream s;
    s << "N=" << rows << " in=" << in << " out=" << out << (bias ? " bias" : " no-bias") << " dropout=" << dropout
      << " pad=" << pad << (bf16 ? " bf16" : "") << (keep_saved ? "" : " no-saved")
      << (accumulate_dx ? " accumulate-dx" : "") << (dz_in_dout ? " dz-in-dout" : "") << " alpha=" << alpha;
    return s.str();
  }
};

struct LinearInputs {
  std::vector<double> x, w, b, out0, dout, dx0, dw0, db0;
};

template <class T, class E>
LinearInputs linear_inputs(const LinearCase& c, std::uint64_t seed) {
  const Index N = c.rows, I = c.in, W = c.out, F = epilogue::output_cols<E>(W);
  return {draw<T>(N * I, seed), draw<T>(W * I, seed + 1, 0.5), draw<T>(W, seed + 2, 0.5),
          draw<T>(N * F, seed + 3), draw<T>(N * F, seed + 4), draw<T>(N * I, seed + 5),
          draw<T>(W * I, seed + 6), draw<T>(W, seed + 7)};
}

RandomStream linear_stream() { return RandomStream{2024, 9}.fork(3); }

struct LinearForward {
  std::vector<double> out, saved;
};

/// out ← E(x Wᵀ) on backend B: the whole strided output buffer and the pre-activation it kept.
template <class B, class E>
LinearForward linear_forward(const LinearCase& c, const LinearInputs& in) {
  using T = typename B::scalar;
  const Index N = c.rows, I = c.in, W = c.out, F = epilogue::output_cols<E>(W);
  auto x = strided<T>(in.x, N, I, I + c.pad);
  auto w = to<T>(in.w), b = to<T>(in.b);
  std::vector<std::uint16_t> w16;
  if (c.bf16)
    for (double e : in.w) w16.push_back(cpu::float_to_bf16(float(e)));
  auto out = strided<T>(in.out0, N, F, F + c.pad);
  std::vector<T> saved(sz(N * W), nan_v<T>);
  epilogue::Operands<T> o;
  o.bias = c.bias ? b.data() : nullptr;
  if (epilogue::Shape<E>::scaled) o.scale = T(c.scale);
  o.dropout = c.dropout;
  o.stream = linear_stream();
  o.saved = c.keep_saved && epilogue::saves_preactivation<E> ? saved.data() : nullptr;
  Arena arena;
  kernel<B, ops::Linear<E>>::forward(View<const T>(x.data(), N, I, I + c.pad),
                                     ops::Weights<T>{View<const T>(w.data(), W, I), c.bf16 ? w16.data() : nullptr},
                                     View<T>(out.data(), N, F, F + c.pad), o, arena);
  return {widen(out), widen(saved)};
}

struct LinearGrads {
  std::vector<double> dx, dw, db;
};

/// The backward on backend B from the pre-activation `saved` (the same for both backends: the backward is tested
/// on its own).
template <class B, class E>
LinearGrads linear_backward(const LinearCase& c, const LinearInputs& in, const std::vector<double>& saved_values) {
  using T = typename B::scalar;
  const Index N = c.rows, I = c.in, W = c.out, F = epilogue::output_cols<E>(W);
  auto x = strided<T>(in.x, N, I, I + c.pad);
  auto w = to<T>(in.w), b = to<T>(in.b), dw = to<T>(in.dw0), db = to<T>(in.db0), saved = to<T>(saved_values);
  auto dout = strided<T>(in.dout, N, F, F + c.pad);
  auto dx = strided<T>(in.dx0, N, I, I + c.pad);
  epilogue::Operands<T> o;
  o.bias = c.bias ? b.data() : nullptr;
  if (epilogue::Shape<E>::scaled) o.scale = T(c.scale);
  o.dropout = c.dropout;
  o.stream = linear_stream();
  o.saved = epilogue::saves_preactivation<E> ? saved.data() : nullptr;
  Arena arena;
  const View<T> dz_buffer = c.dz_in_dout ? View<T>(dout.data(), N, W, F + c.pad) : View<T>{};
  kernel<B, ops::Linear<E>>::backward(View<const T>(dout.data(), N, F, F + c.pad),
                                      View<const T>(x.data(), N, I, I + c.pad), View<const T>(w.data(), W, I), o,
                                      View<T>(dx.data(), N, I, I + c.pad), c.accumulate_dx, dw.data(),
                                      c.bias ? db.data() : nullptr, T(c.alpha), arena, dz_buffer);
  return {widen(dx), widen(dw), widen(db)};
}

template <class E, class T>
void compare_linear(std::uint64_t& seed) {
  using S = epilogue::Shape<E>;
  constexpr bool activation = epilogue::saves_preactivation<E>;
  const double tol = BackendTolerance<T>::op;
  const std::string p = precision_name<T>;
  const std::vector<bool> biases = S::bias ? std::vector<bool>{true, false} : std::vector<bool>{false};
  const std::vector<double> rates = S::dropout ? std::vector<double>{0.0, 0.3} : std::vector<double>{0.0};
  // 5 rows: the decoding shapes (≤ 8 rows); 3 rows of 64 into 202 or 205 features: enough work that the CPU splits
  // the output features over the threads and each thread runs the epilogue on its own columns (bias, activation and
  // the dropout mask indexed from a column offset); 150 rows: the epilogue passes run threaded (per-thread partial
  // sums of db) and Eigen's GEMMs split over the threads
  for (Index rows : {37, 5, 150, 3})
    for (bool bias : biases)
      for (double rate : rates)
        for (Index pad : {0, 3}) {
          if (rows == 150 && pad) continue;
          const Index inputs = rows == 150 ? 40 : rows == 3 ? 64 : 19;
          const Index outputs = rows == 150 ? 110 : rows == 3 ? 202 : 26;
          LinearCase c{.rows = rows, .in = inputs, .out = outputs + (S::gated ? 0 : 3), .bias = bias, .dropout = rate,
                       .pad = pad};
          const auto in = linear_inputs<T, E>(c, seed += 10);
          INFO(c.str() << " in " << p);
          const auto ref = linear_forward<Ref, E>(c, in);
          const auto cpu = linear_forward<Cpu<T>, E>(c, in);
          check_close("out", cpu.out, ref.out, tol, "Linear forward " + p);
          if (activation) check_close("saved pre-activation", cpu.saved, ref.saved, tol, "Linear forward " + p);
          {  // a forward that keeps nothing (decoding): scratch for the pre-activation
            LinearCase d = c;
            d.keep_saved = false;
            INFO("without a saved buffer");
            check_close("out", linear_forward<Cpu<T>, E>(d, in).out, ref.out, tol, "Linear forward " + p);
          }
          if (rows > 8 || pad == 0) {  // the bfloat16 copy of the weights: a prefill widens it and runs the GEMM in
                                       // T, decoding accumulates in float (strided decoding: its own test below)
            LinearCase d = c;
            d.bf16 = true;
            INFO("bf16 weights");
            const double bf16_tol = rows <= 8 ? bf16_decoding_tolerance : tol;
            check_close("out", linear_forward<Cpu<T>, E>(d, in).out, linear_forward<Ref, E>(d, in).out, bf16_tol,
                        rows <= 8 ? "Linear forward bf16 decoding " + p : "Linear forward " + p);
          }
          const auto saved = rounded<T>(ref.saved);
          const std::vector<bool> in_place = activation && !S::gated ? std::vector<bool>{false, true}
                                                                      : std::vector<bool>{false};
          for (bool accumulate : {false, true})
            for (bool dz_in_dout : in_place) {
              LinearCase d = c;
              d.accumulate_dx = accumulate;
              d.dz_in_dout = dz_in_dout;
              INFO("backward: " << d.str());
              const auto gr = linear_backward<Ref, E>(d, in, saved);
              const auto gc = linear_backward<Cpu<T>, E>(d, in, saved);
              check_close("dx", gc.dx, gr.dx, tol, "Linear backward " + p);
              check_close("dW", gc.dw, gr.dw, tol, "Linear backward " + p);
              if (bias) check_close("db", gc.db, gr.db, tol, "Linear backward " + p);
            }
        }
}

}  // namespace

TEMPLATE_TEST_CASE("Linear: Cpu equals Reference for every epilogue (forward, pre-activation, bf16, dx dW db)",
                   "[backends][linear]", EAcc, EBias, EAddTo, EAddToBias, EGelu, ESilu, EReluSquared, EGeglu, ESwiglu,
                   EReluSquaredGlu, EBiasScale, EAddToBiasScale, ESigmoid, ESigmoidBias, ESiluBias) {
  std::uint64_t seed = 1000;
  compare_linear<TestType, double>(seed);
  compare_linear<TestType, float>(seed);
}

TEMPLATE_TEST_CASE("Linear: the bf16-weights decoding path (at most 8 rows) reads x with its row stride",
                   "[backends][linear]", EAcc, EAddToBias, EGeglu) {
  // The op takes x as a View (rows ld apart); every other Linear path honours ld (the tests above, pad = 3), and so
  // does the Reference. A NaN in x's padding must not reach the output.
  using E = TestType;
  using S = epilogue::Shape<E>;
  std::uint64_t seed = 1500;
  for (Index rows : {1, 5}) {
    LinearCase c{.rows = rows, .out = S::gated ? 26 : 29, .bias = S::bias, .pad = 3, .bf16 = true};
    const auto in = linear_inputs<float, E>(c, seed += 10);
    INFO(c.str());
    check_close("out", linear_forward<Cpu<double>, E>(c, in).out, linear_forward<Ref, E>(c, in).out,
                bf16_decoding_tolerance, "Linear forward bf16 decoding, strided x");
    check_close("out", linear_forward<Cpu<float>, E>(c, in).out, linear_forward<Ref, E>(c, in).out,
                bf16_decoding_tolerance, "Linear forward bf16 decoding, strided x");
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Normalize<N>

namespace {

struct NormCase {
  Index rows = 37, dim = 24, pad = 0;
  bool unit_offset = true, bias = false, residual = false, accumulate = false, save = true, in_place = false;
  bool null_gain = false;  // an optional gain left out (1), and no dγ asked for
  [[nodiscard]] std::string str() const {
    std::ostringstream s;
    s << "N=" << rows << " D=" << dim << " pad=" << pad << " offset=" << unit_offset << " bias=" << bias
      << " residual=" << residual << " accumulate=" << accumulate << " save=" << save << " in-place=" << in_place
      << (null_gain ? " null-gain" : "");
    return s.str();
  }
};

struct NormInputs {
  std::vector<double> x, residual, gain, bias, h0, dh, dx0, dgain0, dbias0;
};

template <class Norm>
constexpr Index gain_size(Index D) {
  return Norm::gain == NormGain::channel ? D : Norm::gain == NormGain::scalar ? 1 : 0;
}

template <class T, class Norm>
NormInputs norm_inputs(const NormCase& c, std::uint64_t seed, double x_scale = 1.5) {
  const Index N = c.rows, D = c.dim, G = gain_size<Norm>(D);
  // x with a per-row offset, so LayerNorm's mean subtraction matters
  auto x = draw<T>(N * D, seed, x_scale);
  const auto shift = random_values(N, seed + 9, 2 * x_scale);
  for (Index n = 0; n < N; ++n)
    for (Index d = 0; d < D; ++d) x[sz(n * D + d)] = double(T(x[sz(n * D + d)] + shift[sz(n)]));
  return {x,
          draw<T>(N * D, seed + 1, x_scale),
          draw<T>(std::max<Index>(G, 1), seed + 2, 0.3, c.unit_offset ? 0.0 : 1.0),  // stores γ − 1, or γ
          draw<T>(D, seed + 3, 0.5),
          draw<T>(N * D, seed + 4),
          draw<T>(N * D, seed + 5),
          draw<T>(N * D, seed + 6),
          draw<T>(std::max<Index>(G, 1), seed + 7),
          draw<T>(D, seed + 8)};
}

template <class T, class Norm>
ops::NormWeights<T> norm_weights(const NormCase& c, const std::vector<T>& gain, const std::vector<T>& bias) {
  return {Norm::gain == NormGain::none || c.null_gain ? nullptr : gain.data(), T(c.unit_offset ? 1 : 0),
          c.bias ? bias.data() : nullptr};
}

struct NormForward {
  std::vector<double> h, xhat, rstd;
};

template <class B, class Norm>
NormForward norm_forward(const NormCase& c, const NormInputs& in) {
  using T = typename B::scalar;
  const Index N = c.rows, D = c.dim, ld = D + c.pad;
  auto x = strided<T>(in.x, N, D, ld), r = strided<T>(in.residual, N, D, ld), h = strided<T>(in.h0, N, D, ld);
  auto gain = to<T>(in.gain), bias = to<T>(in.bias);
  std::vector<T> xhat(sz(N * D), nan_v<T>), rstd(sz(N), nan_v<T>);
  std::vector<T>& out = c.in_place ? x : h;
  kernel<B, ops::Normalize<Norm>>::forward(View<const T>(x.data(), N, D, ld), c.residual ? r.data() : nullptr,
                                           norm_weights<T, Norm>(c, gain, bias), View<T>(out.data(), N, D, ld),
                                           c.accumulate, c.save ? xhat.data() : nullptr,
                                           c.save ? rstd.data() : nullptr);
  return {widen(out), widen(xhat), widen(rstd)};
}

struct NormGrads {
  std::vector<double> dx, dgain, dbias;
};

/// The backward on backend B from x̂ and r given (the same for both backends); dh and dx rows dim + pad apart.
template <class B, class Norm>
NormGrads norm_backward(const NormCase& c, const NormInputs& in, const std::vector<double>& xhat_values,
                        const std::vector<double>& rstd_values) {
  using T = typename B::scalar;
  const Index N = c.rows, D = c.dim, ld = D + c.pad;
  auto gain = to<T>(in.gain), bias = to<T>(in.bias), dgain = to<T>(in.dgain0), dbias = to<T>(in.dbias0),
       xhat = to<T>(xhat_values), rstd = to<T>(rstd_values);
  auto dh = strided<T>(in.dh, N, D, ld), dx = strided<T>(in.dx0, N, D, ld);
  Arena arena;
  kernel<B, ops::Normalize<Norm>>::backward(
      View<const T>(dh.data(), N, D, ld), xhat.data(), rstd.data(), norm_weights<T, Norm>(c, gain, bias),
      View<T>(dx.data(), N, D, ld),
      ops::NormGradients<T>(Norm::gain == NormGain::none || c.null_gain ? nullptr : dgain.data(),
                            c.bias ? dbias.data() : nullptr),
      arena);
  return {widen(dx), widen(dgain), widen(dbias)};
}

/// dγ and dβ are sums over the rows: in T their rounding error grows with the count, up to rows · ε_T of the sum of
/// magnitudes (measured: 5.7e-6 for 300 rows in float, against 300 · 2^-23 = 3.6e-5).
template <class T>
double row_sum_tolerance(Index rows) {
  return std::max(BackendTolerance<T>::op, double(rows) * double(std::numeric_limits<T>::epsilon()));
}

template <class Norm, class T>
void check_norm_backward(const NormCase& c, const NormInputs& in, const NormForward& ref, const std::string& p) {
  const auto xhat = rounded<T>(ref.xhat), rstd = rounded<T>(ref.rstd);
  const auto gr = norm_backward<Ref, Norm>(c, in, xhat, rstd);
  const auto gc = norm_backward<Cpu<T>, Norm>(c, in, xhat, rstd);
  check_close("dx", gc.dx, gr.dx, BackendTolerance<T>::op, "Normalize backward " + p);
  if (Norm::gain != NormGain::none)  // untouched (the random start) with a null gain
    check_close("dgain", gc.dgain, gr.dgain, row_sum_tolerance<T>(c.rows), "Normalize backward " + p);
  if (c.bias) check_close("dbias", gc.dbias, gr.dbias, row_sum_tolerance<T>(c.rows), "Normalize backward " + p);
}

template <class Norm, class T>
void compare_norm(std::uint64_t& seed) {
  const double tol = BackendTolerance<T>::op;
  const std::string p = precision_name<T>;
  const std::vector<bool> offsets =
      Norm::gain == NormGain::none ? std::vector<bool>{true} : std::vector<bool>{true, false};
  for (bool unit_offset : offsets)
    for (bool bias : {false, true})
      for (bool residual : {false, true})
        for (bool accumulate : {false, true})
          for (bool save : {true, false})
            for (bool in_place : {false, true})
              for (Index pad : {0, 5}) {
                NormCase c{.pad = pad, .unit_offset = unit_offset, .bias = bias, .residual = residual,
                           .accumulate = accumulate, .save = save, .in_place = in_place};
                const auto in = norm_inputs<T, Norm>(c, seed += 10);
                INFO(Norm::name << " " << c.str() << " in " << p);
                const auto ref = norm_forward<Ref, Norm>(c, in);
                const auto cpu = norm_forward<Cpu<T>, Norm>(c, in);
                check_close("h", cpu.h, ref.h, tol, "Normalize forward " + p);
                if (!save) continue;
                check_close("x-hat", cpu.xhat, ref.xhat, tol, "Normalize forward " + p);
                check_close("rstd", cpu.rstd, ref.rstd, tol, "Normalize forward " + p);
                if (accumulate || in_place) continue;  // the backward does not see these
                check_norm_backward<Norm, T>(c, in, ref, p);
              }
  if (Norm::gain != NormGain::none)  // an optional gain left out: h = x̂ (+ β), and no dγ
    for (bool bias : {false, true})
      for (bool residual : {false, true}) {
        NormCase c{.unit_offset = false, .bias = bias, .residual = residual, .null_gain = true};
        const auto in = norm_inputs<T, Norm>(c, seed += 10);
        INFO(Norm::name << " " << c.str() << " in " << p);
        const auto ref = norm_forward<Ref, Norm>(c, in);
        check_close("h", norm_forward<Cpu<T>, Norm>(c, in).h, ref.h, tol, "Normalize forward " + p);
        check_norm_backward<Norm, T>(c, in, ref, p);
      }
  // rows · work ≥ 2^16: forward and backward run threaded (per-thread partial sums of dγ, dβ)
  for (bool unit_offset : offsets)
    for (bool bias : {false, true}) {
      NormCase c{.rows = 300, .dim = 48, .unit_offset = unit_offset, .bias = bias, .residual = true};
      const auto in = norm_inputs<T, Norm>(c, seed += 10);
      INFO(Norm::name << " " << c.str() << " in " << p);
      const auto ref = norm_forward<Ref, Norm>(c, in);
      check_close("h", norm_forward<Cpu<T>, Norm>(c, in).h, ref.h, tol, "Normalize forward " + p);
      check_norm_backward<Norm, T>(c, in, ref, p);
    }
}

}  // namespace

TEMPLATE_TEST_CASE("Normalize: Cpu equals Reference for every norm (offset, bias, residual, accumulate, in place)",
                   "[backends][norm]", LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm, L2Norm) {
  std::uint64_t seed = 2000;
  compare_norm<TestType, double>(seed);
  compare_norm<TestType, float>(seed);
}

TEMPLATE_TEST_CASE("Normalize: Cpu equals Reference on rows whose L2 norm is clamped to eps (h linear in x)",
                   "[backends][norm]", RMSNorm, ScaleNorm, SimpleRMSNorm, L2Norm) {
  // ‖x‖ ≈ 1e-13 < eps = 1e-12: r = sqrt(D)/eps (L2Norm: 1/eps), and the backward must drop the projection onto x̂
  // (both backends detect the clamp from r; a miss shows up as an O(1) relative error in dx).
  std::uint64_t seed = 2500;
  for (Index D : {24, 37}) {
    NormCase c{.rows = 5, .dim = D, .unit_offset = false, .bias = true};
    const auto in = norm_inputs<double, TestType>(c, seed += 10, 1e-14 / std::sqrt(double(D)) * 10);
    INFO(TestType::name << " D=" << D);
    const auto ref = norm_forward<Ref, TestType>(c, in);
    const double root = TestType::root_dim ? std::sqrt(double(D)) : 1.0;
    for (double r : ref.rstd) REQUIRE(r * TestType::eps >= root * (1 - 1e-12));  // clamped
    const auto cpu = norm_forward<Cpu<double>, TestType>(c, in);
    check_close("h", cpu.h, ref.h, BackendTolerance<double>::op, "Normalize clamped double");
    const auto gr = norm_backward<Ref, TestType>(c, in, ref.xhat, ref.rstd);
    const auto gc = norm_backward<Cpu<double>, TestType>(c, in, ref.xhat, ref.rstd);
    check_close("dx", gc.dx, gr.dx, BackendTolerance<double>::op, "Normalize clamped double");
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Rotate

namespace {

struct RotaryCase {
  ops::RotarySpec spec;
  Index dim_head = 16, heads = 3, batch = 2, length = 37, offset = 0, pad = 7;
  bool inverse = false, key = false;
  [[nodiscard]] std::string str() const {
    std::ostringstream s;
    s << "rotary dim=" << spec.dim << " dim_head=" << dim_head << " interpolation=" << spec.interpolation_factor
      << " base_rescale=" << spec.base_rescale_factor << " xpos_scale_base=" << spec.xpos_scale_base
      << " offset=" << offset << (inverse ? " inverse" : " forward") << (key ? " key" : " query");
    return s.str();
  }
};

/// Rotates the (batch·length, heads·dim_head) rows of `logical`, stored `pad` columns apart, on backend B; the table
/// starts with 8 positions and grows to cover length + offset.
template <class B>
std::vector<double> rotate(const RotaryCase& c, const std::vector<double>& logical) {
  using T = typename B::scalar;
  using K = kernel<B, ops::Rotate>;
  auto table = K::make_table(c.spec, 8);
  K::ensure(table, c.length + c.offset);
  const Index rows = c.batch * c.length, width = c.heads * c.dim_head, ld = width + c.pad;
  auto x = strided<T>(logical, rows, width, ld);
  K::apply(table, x.data(), rows, ld, c.heads, c.dim_head, c.length, c.offset, c.inverse, c.key);
  return widen(x);
}

std::vector<RotaryCase> rotary_cases() {
  std::vector<RotaryCase> cases;
  const std::pair<ops::RotarySpec, Index> specs[] = {
      {{.dim = 16}, 16},                                                    // every channel
      {{.dim = 8, .interpolation_factor = 2}, 16},                          // half the channels, interpolated
      {{.dim = 24, .base_rescale_factor = 1.7}, 24},                        // NTK base rescale
      {{.dim = 12, .xpos_scale_base = 512}, 24},                            // xpos
      {{.dim = 16, .theta = 500, .interpolation_factor = 4, .base_rescale_factor = 2, .xpos_scale_base = 64}, 16},
  };
  for (const auto& [spec, dim_head] : specs)
    for (Index offset : {0, 93})
      for (bool inverse : {false, true})
        for (bool key : {false, true})
          cases.push_back({.spec = spec, .dim_head = dim_head, .offset = offset, .inverse = inverse, .key = key});
  for (bool inverse : {false, true})  // 520 rows: threaded
    for (bool key : {false, true})
      cases.push_back({.spec = {.dim = 12, .xpos_scale_base = 512}, .dim_head = 16, .heads = 4, .batch = 4,
                       .length = 130, .offset = 5, .inverse = inverse, .key = key});
  return cases;
}

}  // namespace

TEMPLATE_TEST_CASE("Rotate: Cpu equals Reference (partial dims, xpos, interpolation, base rescale, q and key)",
                   "[backends][rotary]", float, double) {
  using T = TestType;
  std::uint64_t seed = 3000;
  for (const auto& c : rotary_cases()) {
    INFO(c.str() << " in " << precision_name<T>);
    const auto x = draw<T>(c.batch * c.length * c.heads * c.dim_head, seed += 10);
    check_close("rotated", rotate<Cpu<T>>(c, x), rotate<Ref>(c, x), BackendTolerance<T>::op,
                std::string("Rotate ") + precision_name<T>);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Attention

namespace {

enum class KeyMask { none, holes, fully_masked_row };

struct AttentionCase {
  Index batch = 2, heads = 4, kv_heads = 4, dim_head = 16, q_len = 1, k_len = 1, q_offset = 0, mem_len = 0;
  bool causal = false, query_mask = false, bias = false;
  KeyMask key_mask = KeyMask::none;
  double dropout = 0;
  bool shared_kv = false;  // K and V: one operand shared by the batch (HeadsView batch_stride 0)
  Index mem_pad = 0;       // memory rows kv_heads · dim_head + mem_pad apart (AttentionProblem::mem_ld)

  [[nodiscard]] Index bias_zero() const { return q_offset + q_len - 1; }
  [[nodiscard]] Index bias_stride() const { return q_offset + q_len + k_len - 1 + 3; }  // 3 spare entries per head
  [[nodiscard]] std::string str() const {
    std::ostringstream s;
    s << "B=" << batch << " H=" << heads << " G=" << kv_heads << " dh=" << dim_head << " Tq=" << q_len
      << " Tk=" << k_len << " q_offset=" << q_offset << " mem=" << mem_len << (causal ? " causal" : " bidirectional")
      << " key_mask=" << int(key_mask) << (query_mask ? " query_mask" : "") << (bias ? " bias" : "")
      << " dropout=" << dropout << (shared_kv ? " shared-kv" : "") << " mem_pad=" << mem_pad;
    return s.str();
  }
};

struct AttentionInputs {
  std::vector<double> q, k, v, dout, mem_k, mem_v, bias, dmem_k0, dmem_v0, dbias0;
  std::vector<std::uint8_t> key_mask, query_mask;
};

template <class T>
AttentionInputs attention_inputs(const AttentionCase& c, std::uint64_t seed) {
  const Index B = c.batch, H = c.heads, G = c.kv_heads, D = c.dim_head, M = c.mem_len;
  AttentionInputs in;
  in.q = draw<T>(B * c.q_len * H * D, seed, 2.0);  // scores with std ≈ 2: peaked rows
  in.k = draw<T>((c.shared_kv ? 1 : B) * c.k_len * G * D, seed + 1);
  in.v = draw<T>((c.shared_kv ? 1 : B) * c.k_len * G * D, seed + 2);
  in.dout = draw<T>(B * c.q_len * H * D, seed + 3);
  in.mem_k = draw<T>(std::max<Index>(M, 1) * G * D, seed + 4);
  in.mem_v = draw<T>(std::max<Index>(M, 1) * G * D, seed + 5);
  in.bias = draw<T>(H * c.bias_stride(), seed + 6);
  in.dmem_k0 = draw<T>(std::max<Index>(M, 1) * G * D, seed + 7);
  in.dmem_v0 = draw<T>(std::max<Index>(M, 1) * G * D, seed + 8);
  in.dbias0 = draw<T>(H * c.bias_stride(), seed + 9);
  if (c.key_mask != KeyMask::none) {
    in.key_mask.assign(sz(B * c.k_len), 1);
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < c.k_len; ++j) {
        bool keep = b % 2 == 0 ? j != 0 && j % 7 != 3        // holes, and key 0 (causal query 0 sees nothing)
                               : j < c.k_len - c.k_len / 3;  // tail padding
        if (c.key_mask == KeyMask::fully_masked_row && b == B - 1) keep = false;
        in.key_mask[sz(b * c.k_len + j)] = keep;
      }
  }
  if (c.query_mask) {
    in.query_mask.assign(sz(B * c.q_len), 1);
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < c.q_len; ++i)
        in.query_mask[sz(b * c.q_len + i)] = b % 2 == 0 ? i % 5 != 2 : i < c.q_len - c.q_len / 4;
  }
  return in;
}

/// (batch, length, heads·dim_head) operand in rows `width + 5` apart with a spare row per batch; NaN padding. `shared`:
/// one batch entry read by every batch (a view with batch_stride 0).
template <class T>
struct HeadsStorage {
  Index row_stride, batch_stride;
  std::vector<T> buf;
  bool shared = false;
  HeadsStorage(const std::vector<double>& logical, Index batch, Index length, Index width, bool shared_ = false)
      : row_stride(width + 5), batch_stride((length + 1) * (width + 5)),
        buf(sz((shared_ ? 1 : batch) * batch_stride), nan_v<T>), shared(shared_) {
    if (shared) batch = 1;
    if (logical.empty()) return;
    for (Index b = 0; b < batch; ++b)
      for (Index t = 0; t < length; ++t)
        for (Index c = 0; c < width; ++c)
          buf[sz(b * batch_stride + t * row_stride + c)] = T(logical[sz((b * length + t) * width + c)]);
  }
  ops::HeadsView<T> view() { return {buf.data(), shared ? 0 : batch_stride, row_stride}; }
  [[nodiscard]] ops::HeadsView<const T> cview() const { return {buf.data(), shared ? 0 : batch_stride, row_stride}; }
};

struct AttentionOutputs {
  std::vector<double> o, lse, dq, dk, dv, dmem_k, dmem_v, dbias;
};

RandomStream attention_stream() { return RandomStream{77, 5}.fork(11); }

/// Forward and backward on backend B. dQ, dK, dV start at zero (the kernels' contract: the caller zeroes them); the
/// memory-key and bias-table gradients start at random values (the backward adds to them).
/// A buffer's values as halves, in the same layout (the values are halves already; NaN padding stays NaN).
template <class T>
std::vector<Half> halves_of(const std::vector<T>& buf) {
  std::vector<Half> out(buf.size());
  for (std::size_t i = 0; i < buf.size(); ++i)
    out[i].bits = std::isnan(buf[i]) ? std::uint16_t(0x7E00) : xtr::detail::float_to_half_bits_nearest(float(buf[i]));
  return out;
}

/// Forward and backward on backend B (`Halves`: the forward only, its keys and values read from halves, as from an
/// f16 KV cache).
template <class B, bool Halves = false>
AttentionOutputs run_attention(const AttentionCase& c, const AttentionInputs& in) {
  using T = typename B::scalar;
  using K = kernel<B, ops::Attention<NoScoreBias>>;
  const Index Bn = c.batch, HD = c.heads * c.dim_head, GD = c.kv_heads * c.dim_head;
  const Index M = std::max<Index>(c.mem_len, 1), mem_ld = GD + c.mem_pad;  // memory rows, NaN between them
  auto mem_k = strided<T>(in.mem_k, M, GD, mem_ld), mem_v = strided<T>(in.mem_v, M, GD, mem_ld);
  auto bias = to<T>(in.bias);
  ops::AttentionProblem<T> p;
  p.batch = Bn;
  p.heads = c.heads;
  p.kv_heads = c.kv_heads;
  p.dim_head = c.dim_head;
  p.q_len = c.q_len;
  p.k_len = c.k_len;
  p.q_offset = c.q_offset;
  p.causal = c.causal;
  p.scale = T(1.0 / std::sqrt(double(c.dim_head)));
  p.key_mask = in.key_mask.empty() ? nullptr : in.key_mask.data();
  p.key_mask_stride = c.k_len;
  p.dropout = c.dropout;
  p.dropout_stream = attention_stream();
  p.query_mask = in.query_mask.empty() ? nullptr : in.query_mask.data();
  p.query_mask_stride = c.q_len;
  if (c.bias) {
    p.bias = bias.data();
    p.bias_stride = c.bias_stride();
    p.bias_zero = c.bias_zero();
  }
  p.mem_len = c.mem_len;
  p.mem_k = c.mem_len ? mem_k.data() : nullptr;
  p.mem_v = c.mem_len ? mem_v.data() : nullptr;
  p.mem_ld = c.mem_pad ? mem_ld : 0;

  const HeadsStorage<T> q(in.q, Bn, c.q_len, HD), k(in.k, Bn, c.k_len, GD, c.shared_kv),
      v(in.v, Bn, c.k_len, GD, c.shared_kv), dout(in.dout, Bn, c.q_len, HD);
  HeadsStorage<T> o({}, Bn, c.q_len, HD);
  std::vector<T> lse(sz(Bn * c.heads * c.q_len), nan_v<T>);
  Arena arena;
  if constexpr (Halves) {
    const std::vector<Half> kh = halves_of(k.buf), vh = halves_of(v.buf);
    K::forward(p, q.cview(), {kh.data(), k.cview().batch_stride, k.row_stride},
               {vh.data(), v.cview().batch_stride, v.row_stride}, o.view(), lse.data(), arena);
    return {widen(o.buf), widen(lse)};
  }
  K::forward(p, q.cview(), k.cview(), v.cview(), o.view(), lse.data(), arena);

  const std::vector<double> zq(sz(Bn * c.q_len * HD), 0.0), zk(sz(Bn * c.k_len * GD), 0.0);
  HeadsStorage<T> dq(zq, Bn, c.q_len, HD), dk(zk, Bn, c.k_len, GD), dv(zk, Bn, c.k_len, GD);
  auto dmem_k = strided<T>(in.dmem_k0, M, GD, mem_ld), dmem_v = strided<T>(in.dmem_v0, M, GD, mem_ld);
  auto dbias = to<T>(in.dbias0);
  ops::AttentionExtraGradients<T> extra;
  if (c.bias) extra.bias = dbias.data();
  if (c.mem_len) extra.mem_k = dmem_k.data(), extra.mem_v = dmem_v.data();
  arena.reset();
  K::backward(p, q.cview(), k.cview(), v.cview(), o.cview(), lse.data(), dout.cview(), dq.view(), dk.view(), dv.view(),
              extra, arena);
  return {widen(o.buf), widen(lse), widen(dq.buf), widen(dk.buf), widen(dv.buf), widen(dmem_k), widen(dmem_v),
          widen(dbias)};
}

template <class T>
void compare_attention(const AttentionCase& c, std::uint64_t seed) {
  const std::string p = precision_name<T>;
  INFO(c.str() << " in " << p);
  const auto in = attention_inputs<T>(c, seed);
  const auto ref = run_attention<Ref>(c, in);
  const auto cpu = run_attention<Cpu<T>>(c, in);
  const double fwd = BackendTolerance<T>::op, bwd = BackendTolerance<T>::attention_backward;
  check_close("O", cpu.o, ref.o, fwd, "Attention forward " + p);
  check_close("lse", cpu.lse, ref.lse, fwd, "Attention forward " + p);
  check_close("dQ", cpu.dq, ref.dq, bwd, "Attention backward " + p);
  check_close("dK", cpu.dk, ref.dk, bwd, "Attention backward " + p);
  check_close("dV", cpu.dv, ref.dv, bwd, "Attention backward " + p);
  if (c.mem_len) {
    check_close("d memory keys", cpu.dmem_k, ref.dmem_k, bwd, "Attention backward " + p);
    check_close("d memory values", cpu.dmem_v, ref.dmem_v, bwd, "Attention backward " + p);
  }
  if (c.bias) check_close("d bias table", cpu.dbias, ref.dbias, bwd, "Attention backward " + p);
}

AttentionCase self_attention(Index T, bool causal, Index dim_head = 16, Index kv_heads = 4) {
  return {.kv_heads = kv_heads, .dim_head = dim_head, .q_len = T, .k_len = T, .causal = causal};
}
AttentionCase decoding(Index q_len, Index k_len, Index dim_head = 16, Index kv_heads = 4) {
  return {.kv_heads = kv_heads, .dim_head = dim_head, .q_len = q_len, .k_len = k_len, .q_offset = k_len - q_len,
          .causal = true};
}
template <class F>
AttentionCase with(AttentionCase c, F&& f) {
  f(c);
  return c;
}

}  // namespace

TEST_CASE("Attention: Cpu equals Reference (masks, GQA, decoding offsets, lengths around the 64-wide tiles)",
          "[backends][attention]") {
  std::vector<AttentionCase> cases = {
      self_attention(63, true),
      self_attention(65, true, 24, 2),
      self_attention(65, false, 16, 1),
      self_attention(130, false, 24, 2),
      self_attention(130, true, 16, 1),
      with(self_attention(1, true, 24), [](auto& c) { c.mem_len = 2; }),  // one regular key (+ 2 memory keys)
      with(self_attention(65, true), [](auto& c) { c.key_mask = KeyMask::holes, c.query_mask = true; }),
      with(self_attention(63, false, 24), [](auto& c) { c.key_mask = KeyMask::fully_masked_row; }),
      with(self_attention(130, true, 16, 2), [](auto& c) { c.key_mask = KeyMask::holes, c.query_mask = true; }),
      with(self_attention(65, false, 24, 1),
           [](auto& c) { c.key_mask = KeyMask::fully_masked_row, c.query_mask = true; }),
      decoding(1, 65),
      // a single query, heads of whole 16-value vectors: the fused AVX-512 loops (simd.hpp), key counts that are not
      // multiples of four, wider heads, masked keys
      decoding(1, 300, 64, 2),
      decoding(1, 7, 32, 1),
      with(decoding(1, 131, 80, 4), [](auto& c) { c.key_mask = KeyMask::holes; }),
      decoding(5, 130, 24, 2),
      with(decoding(63, 130, 16, 1), [](auto& c) { c.key_mask = KeyMask::holes; }),
      with(self_attention(65, true, 16, 2), [](auto& c) { c.shared_kv = true, c.key_mask = KeyMask::holes; }),
  };
  std::uint64_t seed = 4000;
  for (const auto& c : cases) {
    compare_attention<double>(c, seed += 20);
    compare_attention<float>(c, seed += 20);
  }
}

TEST_CASE("Attention over an f16 KV cache: Cpu reading halves equals Reference over the same values",
          "[backends][attention][kv_cache]") {
  // a single query with whole vectors per head (the fused loops convert the halves in registers: 16-value vectors on
  // AVX-512, 8 on AVX2), heads that are not (dh 24 on AVX-512), several queries (tiles widened from halves), masks,
  // memory keys and a bias table
  std::vector<AttentionCase> cases = {
      decoding(1, 300, 64, 2),
      decoding(1, 7, 32, 1),
      decoding(1, 65, 24, 2),
      with(decoding(1, 131, 80, 4), [](auto& c) { c.key_mask = KeyMask::holes; }),
      decoding(5, 130, 24, 2),
      with(decoding(63, 130, 16, 1), [](auto& c) { c.key_mask = KeyMask::holes; }),
      with(decoding(1, 70, 32, 2), [](auto& c) { c.mem_len = 5, c.bias = true; }),
      with(decoding(3, 66, 16, 1), [](auto& c) { c.bias = true, c.mem_len = 3, c.query_mask = true; }),
  };
  std::uint64_t seed = 6000;
  const auto check = [&]<class T>(const AttentionCase& c, T) {
    const std::string p = precision_name<T>;
    INFO(c.str() << " in " << p);
    auto in = attention_inputs<T>(c, seed += 20);
    for (auto* values : {&in.k, &in.v})  // keys and values that halves hold exactly
      for (double& x : *values) x = xtr::detail::half_bits_to_float(xtr::detail::float_to_half_bits_nearest(float(x)));
    const auto ref = run_attention<Ref>(c, in);
    const auto cpu = run_attention<Cpu<T>, true>(c, in);
    check_close("O", cpu.o, ref.o, BackendTolerance<T>::op, "Attention over halves " + p);
    check_close("lse", cpu.lse, ref.lse, BackendTolerance<T>::op, "Attention over halves " + p);
  };
  for (const auto& c : cases) {
    check(c, double{});
    check(c, float{});
  }
}

TEST_CASE("Attention: Cpu equals Reference with dropout, memory keys and a relative bias table (and their gradients)",
          "[backends][attention]") {
  std::vector<AttentionCase> cases = {
      with(self_attention(65, true, 16, 2), [](auto& c) { c.dropout = 0.2; }),
      with(self_attention(63, false), [](auto& c) { c.dropout = 0.2, c.key_mask = KeyMask::holes; }),
      with(self_attention(65, true, 16, 2), [](auto& c) { c.mem_len = 3; }),
      // memory keys over two tiles; the fully masked batch row still sees them
      with(self_attention(63, false, 24), [](auto& c) { c.mem_len = 67, c.key_mask = KeyMask::fully_masked_row; }),
      with(decoding(5, 70), [](auto& c) { c.mem_len = 4, c.dropout = 0.1; }),
      with(decoding(1, 70, 32, 2), [](auto& c) { c.mem_len = 5, c.dropout = 0.1, c.bias = true; }),
      // memory rows in a wider buffer (mem_ld), GQA
      with(self_attention(63, true, 24, 2), [](auto& c) { c.mem_len = 5, c.mem_pad = 7, c.key_mask = KeyMask::holes; }),
      with(self_attention(65, true), [](auto& c) { c.bias = true; }),
      with(self_attention(130, false, 24, 2), [](auto& c) { c.bias = true, c.key_mask = KeyMask::holes; }),
      with(decoding(3, 66, 16, 1),
           [](auto& c) { c.bias = true, c.mem_len = 3, c.dropout = 0.15, c.query_mask = true; }),
      with(self_attention(130, true, 24, 2), [](auto& c) {
        c.bias = true, c.mem_len = 5, c.dropout = 0.1, c.key_mask = KeyMask::holes, c.query_mask = true;
      }),
  };
  std::uint64_t seed = 5000;
  for (const auto& c : cases) {
    compare_attention<double>(c, seed += 20);
    compare_attention<float>(c, seed += 20);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Embedding, SoftmaxCrossEntropy, AdamWUpdate, Fill, Dropout, Axpby

namespace {

struct EmbeddingOutputs {
  std::vector<double> x, dtable, dpositions;
};

template <class B>
EmbeddingOutputs run_embedding(const std::vector<std::int32_t>& ids, Index T_len, Index offset, Index V, Index P,
                               Index D, bool positions, const std::vector<double>& table,
                               const std::vector<double>& pos, const std::vector<double>& dx,
                               const std::vector<double>& dtable0, const std::vector<double>& dpos0) {
  using T = typename B::scalar;
  using K = kernel<B, ops::Embedding>;
  const Index N = Index(ids.size());
  auto t = to<T>(table), p = to<T>(pos), g = to<T>(dx), dt = to<T>(dtable0), dp = to<T>(dpos0);
  std::vector<T> x(sz(N * D), nan_v<T>);
  const T scale = T(0.25);
  K::forward(ids.data(), N, T_len, offset, View<const T>(t.data(), V, D), positions ? p.data() : nullptr, scale,
             View<T>(x.data(), N, D));
  K::backward(ids.data(), N, T_len, View<const T>(g.data(), N, D), dt.data(), positions ? dp.data() : nullptr, scale);
  return {widen(x), widen(dt), widen(dp)};
}

}  // namespace

TEMPLATE_TEST_CASE("Embedding: Cpu equals Reference (token and scaled position tables, scatter-add)",
                   "[backends][embedding]", float, double) {
  using T = TestType;
  const Index V = 9, D = 130, T_len = 6, P = 20;  // D spans three 64-column blocks
  const std::string p = precision_name<T>;
  for (Index Bn : {3, 100}) {  // 600 rows: forward and backward run threaded
    const Index N = Bn * T_len;
    std::vector<std::int32_t> ids(sz(N));
    for (Index n = 0; n < N; ++n) ids[sz(n)] = std::int32_t((n * 5 + n / 4) % V);  // repeats
    const auto table = draw<T>(V * D, 6001), pos = draw<T>(P * D, 6002), dx = draw<T>(N * D, 6003),
               dtable = draw<T>(V * D, 6004), dpos = draw<T>(P * D, 6005);
    for (bool positions : {true, false})
      for (Index offset : {0, 4}) {
        INFO("N=" << N << " positions=" << positions << " offset=" << offset << " in " << p);
        const auto ref = run_embedding<Ref>(ids, T_len, offset, V, P, D, positions, table, pos, dx, dtable, dpos);
        const auto cpu = run_embedding<Cpu<T>>(ids, T_len, offset, V, P, D, positions, table, pos, dx, dtable, dpos);
        check_close("x", cpu.x, ref.x, BackendTolerance<T>::op, "Embedding " + p);
        check_close("d table", cpu.dtable, ref.dtable, BackendTolerance<T>::op, "Embedding " + p);
        // without a position table dP stays as it was, in both
        check_close("d positions", cpu.dpositions, ref.dpositions, BackendTolerance<T>::op, "Embedding " + p);
      }
  }
}

namespace {

template <class B>
std::pair<double, std::vector<double>> run_cross_entropy(const std::vector<double>& logits,
                                                         const std::vector<std::int32_t>& targets, Index V,
                                                         double alpha, int mode) {  // 0: gradient, 1: none, 2: in place
  using T = typename B::scalar;
  const Index N = Index(targets.size());
  auto z = to<T>(logits);
  std::vector<T> dz(z.size(), nan_v<T>);
  T* out = mode == 0 ? dz.data() : mode == 2 ? z.data() : nullptr;
  const double loss =
      kernel<B, ops::SoftmaxCrossEntropy>::run(View<const T>(z.data(), N, V), targets.data(), -100, out, T(alpha));
  return {loss, widen(mode == 0 ? dz : z)};
}

}  // namespace

TEMPLATE_TEST_CASE("SoftmaxCrossEntropy: Cpu equals Reference (ignore_index, alpha, in place, all ignored)",
                   "[backends][cross_entropy]", float, double) {
  using T = TestType;
  const Index N = 70, V = 23;  // N > 64: the CPU's row loop runs threaded
  const auto z = draw<T>(N * V, 6101, 3.0);
  std::vector<std::int32_t> y(sz(N));
  for (Index n = 0; n < N; ++n) y[sz(n)] = n % 6 == 2 ? -100 : std::int32_t((n * 7) % V);
  const std::string p = precision_name<T>;
  const double tol = BackendTolerance<T>::op;
  for (int mode : {0, 1, 2}) {
    INFO("mode " << mode << " (0: gradient, 1: loss only, 2: gradient in place) in " << p);
    const auto [loss_ref, g_ref] = run_cross_entropy<Ref>(z, y, V, 0.37, mode);
    const auto [loss_cpu, g_cpu] = run_cross_entropy<Cpu<T>>(z, y, V, 0.37, mode);
    check_close("loss", {loss_cpu}, {loss_ref}, tol, "SoftmaxCrossEntropy " + p);
    check_close(mode == 1 ? "logits (untouched)" : "d logits", g_cpu, g_ref, tol, "SoftmaxCrossEntropy " + p);
  }
  const std::vector<std::int32_t> ignored(sz(N), -100);
  const auto [l_ref, g_ref] = run_cross_entropy<Ref>(z, ignored, V, 0.37, 0);
  const auto [l_cpu, g_cpu] = run_cross_entropy<Cpu<T>>(z, ignored, V, 0.37, 0);
  CHECK(l_ref == 0.0);
  CHECK(l_cpu == 0.0);
  CHECK(g_cpu == g_ref);  // zeros in both
  CHECK(std::all_of(g_ref.begin(), g_ref.end(), [](double e) { return e == 0.0; }));
}

namespace {

/// Three AdamW updates on backend B with coefficients rounded to C (both backends get the same ones).
template <class B, class C>
std::vector<double> run_adamw(const std::vector<double>& w0, const std::vector<std::vector<double>>& grads,
                              const std::vector<double>& m0, const std::vector<double>& v0) {
  using T = typename B::scalar;
  using K = kernel<B, ops::AdamWUpdate>;
  auto w = to<T>(w0), m = to<T>(m0), v = to<T>(v0);
  const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  const auto c = [](double e) { return T(C(e)); };
  for (std::size_t t = 1; t <= grads.size(); ++t) {
    const auto g = to<T>(grads[t - 1]);
    const typename K::Coefficients coef{
        .step_size = c(lr / (1 - std::pow(b1, double(t)))), .decay = c(1 - lr * wd), .eps = c(eps), .beta1 = c(b1),
        .beta2 = c(b2), .one_minus_beta1 = c(1 - b1), .one_minus_beta2 = c(1 - b2),
        .bias2_sqrt = c(std::sqrt(1 - std::pow(b2, double(t))))};
    K::step(w.data(), g.data(), m.data(), v.data(), Index(w.size()), coef);
  }
  std::vector<double> out = widen(w);
  out.insert(out.end(), m.begin(), m.end());
  out.insert(out.end(), v.begin(), v.end());
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("AdamWUpdate: Cpu equals Reference over three steps (weights and moments)", "[backends][adamw]",
                   float, double) {
  using T = TestType;
  const Index n = 9001;  // n · 8 ≥ 2^16: the CPU loop runs threaded
  const auto w = draw<T>(n, 6201), m = draw<T>(n, 6202, 0.1);
  auto v = draw<T>(n, 6203, 0.01);
  for (auto& e : v) e = std::abs(e);
  const std::vector<std::vector<double>> grads = {draw<T>(n, 6204), draw<T>(n, 6205, 0.1), draw<T>(n, 6206, 3.0)};
  const auto ref = run_adamw<Ref, T>(w, grads, m, v);
  const auto cpu = run_adamw<Cpu<T>, T>(w, grads, m, v);
  check_close("w, m, v", cpu, ref, BackendTolerance<T>::op, std::string("AdamWUpdate ") + precision_name<T>);
}

TEMPLATE_TEST_CASE("Fill, Dropout and Axpby: Cpu equals Reference on strided views (threaded sizes)",
                   "[backends][elementwise]", float, double) {
  using T = TestType;
  const std::string p = precision_name<T>;
  const double tol = BackendTolerance<T>::op;
  SECTION("Fill") {
    for (auto [rows, cols, ld] : {std::tuple<Index, Index, Index>{37, 29, 33}, {300, 250, 251}}) {
      INFO(rows << "x" << cols << " ld " << ld);
      const auto x0 = draw<T>(rows * cols, 6301);
      auto a = strided<T>(x0, rows, cols, ld);
      auto b = strided<double>(x0, rows, cols, ld);
      kernel<Cpu<T>, ops::Fill>::run(View<T>(a.data(), rows, cols, ld), T(0.37));
      kernel<Ref, ops::Fill>::run(View<double>(b.data(), rows, cols, ld), double(T(0.37)));
      check_close("filled", widen(a), b, tol, "Fill " + p);
    }
  }
  SECTION("Dropout") {
    const Index rows = 130, cols = 29, ld = 31;  // 20 · cols · rows ≥ 2^16: threaded
    const RandomStream stream = RandomStream{5, 6}.fork(7);
    for (double rate : {0.0, 0.25}) {
      INFO("p = " << rate);
      const auto x0 = draw<T>(rows * cols, 6302);
      auto a = strided<T>(x0, rows, cols, ld);
      auto b = strided<double>(x0, rows, cols, ld);
      kernel<Cpu<T>, ops::Dropout>::run(View<T>(a.data(), rows, cols, ld), rate, stream);
      kernel<Ref, ops::Dropout>::run(View<double>(b.data(), rows, cols, ld), rate, stream);
      check_close("dropped", widen(a), b, tol, "Dropout " + p);
      const auto dropped = std::count(b.begin(), b.end(), 0.0);
      if (rate > 0) CHECK(dropped > rows * cols / 8);  // the mask is not trivial
    }
  }
  SECTION("Axpby") {
    const Index rows = 300, cols = 111, xld = 115, yld = 113;  // 2 · cols · rows ≥ 2^16: threaded
    for (auto [alpha, beta] : {std::pair{0.7, 0.0}, {0.7, -1.3}, {1.0, 1.0}}) {
      INFO("alpha " << alpha << " beta " << beta);
      const auto x0 = draw<T>(rows * cols, 6303);
      auto y0 = draw<T>(rows * cols, 6304);
      if (beta == 0) std::fill(y0.begin(), y0.end(), nan_v<double>);  // β = 0 does not read y
      const auto xa = strided<T>(x0, rows, cols, xld);
      const auto xb = strided<double>(x0, rows, cols, xld);
      auto ya = strided<T>(y0, rows, cols, yld);
      auto yb = strided<double>(y0, rows, cols, yld);
      kernel<Cpu<T>, ops::Axpby>::run(View<const T>(xa.data(), rows, cols, xld), View<T>(ya.data(), rows, cols, yld),
                                      T(alpha), T(beta));
      kernel<Ref, ops::Axpby>::run(View<const double>(xb.data(), rows, cols, xld),
                                   View<double>(yb.data(), rows, cols, yld), double(T(alpha)), double(T(beta)));
      check_close("y", widen(ya), yb, tol, "Axpby " + p);
    }
  }
}

namespace {

/// ScaleHeads, Multiply, MixHeads and Activation<A> on backend B: outputs and gradients, every buffer strided (rows
/// cols + 3 apart, NaN padding). Returns one vector per tensor, in a fixed order.
struct HeadOpsInputs {
  Index rows, heads, dh, mu_ld;
  std::vector<double> x, y0, dy, s, ds0, a, b, mu, da0;
};

template <class B>
std::vector<std::vector<double>> run_scale_heads(const HeadOpsInputs& in, bool in_place) {
  using T = typename B::scalar;
  using K = kernel<B, ops::ScaleHeads>;
  const Index N = in.rows, C = in.heads * in.dh, ld = C + 3;
  auto x = strided<T>(in.x, N, C, ld), y = strided<T>(in.y0, N, C, ld), dy = strided<T>(in.dy, N, C, ld),
       dx = strided<T>(in.y0, N, C, ld);
  auto s = to<T>(in.s), ds = to<T>(in.ds0);
  K::forward(View<const T>(x.data(), N, C, ld), s.data(), in.heads, View<T>(y.data(), N, C, ld));
  T* dxp = in_place ? dy.data() : dx.data();  // the layer scales dO in place
  K::backward(View<const T>(dy.data(), N, C, ld), View<const T>(x.data(), N, C, ld), s.data(), in.heads,
              View<T>(dxp, N, C, ld), ds.data());
  return {widen(y), widen(in_place ? dy : dx), widen(ds)};
}

template <class B>
std::vector<std::vector<double>> run_multiply(const HeadOpsInputs& in, bool only_da) {
  using T = typename B::scalar;
  using K = kernel<B, ops::Multiply>;
  const Index N = in.rows, C = in.heads * in.dh, ld = C + 3;
  auto a = strided<T>(in.a, N, C, ld), b = strided<T>(in.b, N, C, ld), y = strided<T>(in.y0, N, C, ld),
       dy = strided<T>(in.dy, N, C, ld), da = strided<T>(in.da0, N, C, ld), db = strided<T>(in.y0, N, C, ld);
  K::forward(View<const T>(a.data(), N, C, ld), View<const T>(b.data(), N, C, ld), View<T>(y.data(), N, C, ld));
  K::backward(View<const T>(dy.data(), N, C, ld), View<const T>(a.data(), N, C, ld), View<const T>(b.data(), N, C, ld),
              View<T>(da.data(), N, C, ld), only_da ? View<T>{} : View<T>(db.data(), N, C, ld));
  return {widen(y), widen(da), widen(db)};
}

template <class B>
std::vector<std::vector<double>> run_mix_heads(const HeadOpsInputs& in, bool in_place) {
  using T = typename B::scalar;
  using K = kernel<B, ops::MixHeads>;
  const Index N = in.rows, C = in.heads * in.dh, ld = C + 3;
  auto a = strided<T>(in.a, N, C, ld), b = strided<T>(in.b, N, C, ld), y = strided<T>(in.y0, N, C, ld),
       dy = strided<T>(in.dy, N, C, ld), da = strided<T>(in.da0, N, C, ld), db = strided<T>(in.y0, N, C, ld);
  auto mu = to<T>(in.mu);
  std::vector<T> dmu(sz(N * in.heads), nan_v<T>);
  // forward: y may be b (the layer mixes into its own values)
  T* yp = in_place ? b.data() : y.data();
  const auto b_before = b;
  K::forward(View<const T>(a.data(), N, C, ld), View<const T>(b_before.data(), N, C, ld), mu.data(), in.mu_ld,
             in.heads, View<T>(yp, N, C, ld));
  std::vector<std::vector<double>> out{widen(in_place ? b : y)};
  // backward: db may be dy
  T* dbp = in_place ? dy.data() : db.data();
  K::backward(View<const T>(dy.data(), N, C, ld), View<const T>(a.data(), N, C, ld),
              View<const T>(b_before.data(), N, C, ld), mu.data(), in.mu_ld, in.heads, View<T>(da.data(), N, C, ld),
              View<T>(dbp, N, C, ld), dmu.data());
  out.push_back(widen(da));
  out.push_back(widen(in_place ? dy : db));
  out.push_back(widen(dmu));
  return out;
}

template <class B, class A>
std::vector<std::vector<double>> run_activation(const HeadOpsInputs& in, bool accumulate) {
  using T = typename B::scalar;
  using K = kernel<B, ops::Activation<A>>;
  const Index N = in.rows, C = in.heads * in.dh, ld = C + 3;
  auto x = strided<T>(in.x, N, C, ld), y = strided<T>(in.y0, N, C, ld), dy = strided<T>(in.dy, N, C, ld),
       dx = strided<T>(in.da0, N, C, ld);
  K::forward(View<const T>(x.data(), N, C, ld), View<T>(y.data(), N, C, ld));
  K::backward(View<const T>(dy.data(), N, C, ld), View<const T>(x.data(), N, C, ld), View<T>(dx.data(), N, C, ld),
              accumulate);
  return {widen(y), widen(dx)};
}

/// Each output against the reference; an output that sums over `rows` rows gets row_sum_tolerance(rows).
template <class T>
void check_all(const char* op, const std::vector<std::vector<double>>& cpu, const std::vector<std::vector<double>>& ref,
               std::initializer_list<std::pair<const char*, Index>> outputs) {
  std::size_t i = 0;
  for (const auto& [name, rows_summed] : outputs) {
    check_close(name, cpu[i], ref[i], row_sum_tolerance<T>(rows_summed), std::string(op) + " " + precision_name<T>);
    ++i;
  }
}

}  // namespace

TEMPLATE_TEST_CASE("ScaleHeads, Multiply, MixHeads, Activation: Cpu equals Reference (strided, in place)",
                   "[backends][elementwise]", float, double) {
  using T = TestType;
  for (Index rows : {37, 700}) {  // 700 rows: threaded
    const Index heads = 4, dh = 24, C = heads * dh, mu_ld = heads + 2;
    HeadOpsInputs in{rows, heads, dh, mu_ld, draw<T>(rows * C, 6401), draw<T>(rows * C, 6402), draw<T>(rows * C, 6403),
                     draw<T>(heads, 6404, 0.5, 1.0), draw<T>(heads, 6405), draw<T>(rows * C, 6406),
                     draw<T>(rows * C, 6407), draw<T>(rows * mu_ld, 6408), draw<T>(rows * C, 6409)};
    // μ in (0, 1), both sides of 0.5 (lerp's two branches)
    for (auto& m : in.mu) m = double(T(1 / (1 + std::exp(-2 * m))));
    INFO(rows << " rows in " << precision_name<T>);
    for (bool variant : {false, true}) {
      INFO((variant ? "in place (ScaleHeads dx = dy, MixHeads y = b and db = dy), Multiply without db"
                    : "separate outputs"));
      check_all<T>("ScaleHeads", run_scale_heads<Cpu<T>>(in, variant), run_scale_heads<Ref>(in, variant),
                   {{"y", 1}, {"dx", 1}, {"ds", rows}});
      check_all<T>("Multiply", run_multiply<Cpu<T>>(in, variant), run_multiply<Ref>(in, variant),
                   {{"y", 1}, {"da", 1}, {"db", 1}});
      check_all<T>("MixHeads", run_mix_heads<Cpu<T>>(in, variant), run_mix_heads<Ref>(in, variant),
                   {{"y", 1}, {"da", 1}, {"db", 1}, {"dmu", 1}});
    }
    for (bool accumulate : {false, true}) {
      INFO("accumulate " << accumulate);
      check_all<T>("Activation", run_activation<Cpu<T>, act::Gelu>(in, accumulate),
                   run_activation<Ref, act::Gelu>(in, accumulate), {{"gelu", 1}, {"d gelu", 1}});
      check_all<T>("Activation", run_activation<Cpu<T>, act::Silu>(in, accumulate),
                   run_activation<Ref, act::Silu>(in, accumulate), {{"silu", 1}, {"d silu", 1}});
      check_all<T>("Activation", run_activation<Cpu<T>, act::ReluSquared>(in, accumulate),
                   run_activation<Ref, act::ReluSquared>(in, accumulate), {{"relu^2", 1}, {"d relu^2", 1}});
      check_all<T>("Activation", run_activation<Cpu<T>, act::Sigmoid>(in, accumulate),
                   run_activation<Ref, act::Sigmoid>(in, accumulate), {{"sigmoid", 1}, {"d sigmoid", 1}});
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// The oracle proven: finite differences of the Reference backend's backward (double, central differences, both the
// relative and the absolute error over threshold to fail, the worst entry reported).

namespace {

std::vector<double*> pointers(std::vector<double>& v) {
  std::vector<double*> p;
  for (auto& e : v) p.push_back(&e);
  return p;
}
double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("Reference Linear: backward matches finite differences (dx, dW, db) for every epilogue",
                   "[backends][linear][gradient]", EAcc, EBias, EAddTo, EAddToBias, EGelu, ESilu, EReluSquared, EGeglu,
                   ESwiglu, EReluSquaredGlu, EBiasScale, EAddToBiasScale, ESigmoid, ESigmoidBias, ESiluBias) {
  using E = TestType;
  using S = epilogue::Shape<E>;
  using K = kernel<Ref, ops::Linear<E>>;
  const Index N = 5, I = 6, W = 8, F = epilogue::output_cols<E>(W);
  auto x = random_values(N * I, 7001), w = random_values(W * I, 7002, 0.5), b = random_values(W, 7003, 0.5);
  const auto out0 = random_values(N * F, 7004), R = random_values(N * F, 7005);
  epilogue::Operands<double> o;
  o.bias = S::bias ? b.data() : nullptr;
  if (S::scaled) o.scale = 0.6;
  o.dropout = S::dropout ? 0.3 : 0.0;
  o.stream = linear_stream();
  Arena arena;
  auto loss = [&] {  // Σ out ⊙ R, out starting at out0 (AddTo adds to it)
    auto out = out0;
    arena.reset();
    K::forward(View<const double>(x.data(), N, I), ops::Weights<double>{View<const double>(w.data(), W, I)},
               View<double>(out.data(), N, F), o, arena);
    return dot(out, R);
  };
  std::vector<double> saved(sz(N * W)), out = out0;
  o.saved = saved.data();
  K::forward(View<const double>(x.data(), N, I), ops::Weights<double>{View<const double>(w.data(), W, I)},
             View<double>(out.data(), N, F), o, arena);
  std::vector<double> dx(sz(N * I)), dw(sz(W * I), 0.0), db(sz(W), 0.0);
  K::backward(View<const double>(R.data(), N, F), View<const double>(x.data(), N, I),
              View<const double>(w.data(), W, I), o, View<double>(dx.data(), N, I), false, dw.data(),
              S::bias ? db.data() : nullptr, 1.0, arena);
  o.saved = nullptr;
  XTR_REQUIRE_GRADIENT(check_gradient(pointers(x), dx, loss, "x"));
  XTR_REQUIRE_GRADIENT(check_gradient(pointers(w), dw, loss, "W"));
  if (S::bias) XTR_REQUIRE_GRADIENT(check_gradient(pointers(b), db, loss, "b"));
}

TEMPLATE_TEST_CASE("Reference Normalize: backward matches finite differences (x, residual, gain, bias)",
                   "[backends][norm][gradient]", LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm, L2Norm) {
  using Norm = TestType;
  using K = kernel<Ref, ops::Normalize<Norm>>;
  for (bool unit_offset : {true, false}) {
    NormCase c{.rows = 5, .dim = 7, .unit_offset = unit_offset, .bias = true, .residual = true};
    auto in = norm_inputs<double, Norm>(c, 7100 + unit_offset);
    INFO(Norm::name << " unit offset " << unit_offset);
    const Index N = c.rows, D = c.dim;
    auto weights = [&] { return norm_weights<double, Norm>(c, in.gain, in.bias); };
    auto loss = [&] {
      std::vector<double> h(sz(N * D));
      K::forward(View<const double>(in.x.data(), N, D), in.residual.data(), weights(), View<double>(h.data(), N, D),
                 false, nullptr, nullptr);
      return dot(h, in.dh);
    };
    std::vector<double> h(sz(N * D)), xhat(sz(N * D)), rstd(sz(N)), dx(sz(N * D), 0.0),
        dgain(in.gain.size(), 0.0), dbias(sz(D), 0.0);
    K::forward(View<const double>(in.x.data(), N, D), in.residual.data(), weights(), View<double>(h.data(), N, D),
               false, xhat.data(), rstd.data());
    Arena arena;
    K::backward(View<const double>(in.dh.data(), N, D), xhat.data(), rstd.data(), weights(),
                View<double>(dx.data(), N, D),
                ops::NormGradients<double>(Norm::gain == NormGain::none ? nullptr : dgain.data(), dbias.data()), arena);
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.x), dx, loss, "x"));
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.residual), dx, loss, "residual"));
    if (Norm::gain != NormGain::none) XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.gain), dgain, loss, "gain"));
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.bias), dbias, loss, "bias"));
  }
}

TEST_CASE("Reference Rotate: the inverse is the gradient (xpos, interpolation, base rescale, q and key)",
          "[backends][rotary][gradient]") {
  for (bool key : {false, true}) {
    RotaryCase c{.spec = {.dim = 6, .interpolation_factor = 2, .base_rescale_factor = 1.5, .xpos_scale_base = 16},
                 .dim_head = 8, .heads = 2, .batch = 2, .length = 5, .offset = 3, .pad = 0, .key = key};
    INFO(c.str());
    auto x = random_values(c.batch * c.length * c.heads * c.dim_head, 7201 + key);
    const auto R = random_values(Index(x.size()), 7203);
    auto loss = [&] { return dot(rotate<Ref>(c, x), R); };
    RotaryCase inverse = c;
    inverse.inverse = true;
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(x), rotate<Ref>(inverse, R), loss, "x"));
  }
}

TEST_CASE("Reference Attention: backward matches finite differences (memory keys, bias table, masks, dropout, GQA)",
          "[backends][attention][gradient]") {
  const AttentionCase cases[] = {
      // decoding-like: causal with an offset, holes in the keys, padded queries, dropout, GQA
      {.batch = 2, .heads = 2, .kv_heads = 1, .dim_head = 6, .q_len = 5, .k_len = 7, .q_offset = 2, .mem_len = 2,
       .causal = true, .query_mask = true, .bias = true, .key_mask = KeyMask::holes, .dropout = 0.3},
      // bidirectional, a batch row with every regular key masked (only the memory keys are seen)
      {.batch = 2, .heads = 4, .kv_heads = 2, .dim_head = 5, .q_len = 6, .k_len = 6, .mem_len = 3, .bias = true,
       .key_mask = KeyMask::fully_masked_row},
  };
  using K = kernel<Ref, ops::Attention<NoScoreBias>>;
  for (const auto& c : cases) {
    INFO(c.str());
    auto in = attention_inputs<double>(c, 7300);
    const Index Bn = c.batch, HD = c.heads * c.dim_head, GD = c.kv_heads * c.dim_head;
    // logical, contiguous operands: (b, t, head·dh) rows
    auto problem = [&] {
      ops::AttentionProblem<double> p;
      p.batch = Bn, p.heads = c.heads, p.kv_heads = c.kv_heads, p.dim_head = c.dim_head;
      p.q_len = c.q_len, p.k_len = c.k_len, p.q_offset = c.q_offset, p.causal = c.causal;
      p.scale = 1 / std::sqrt(double(c.dim_head));
      p.key_mask = in.key_mask.empty() ? nullptr : in.key_mask.data();
      p.key_mask_stride = c.k_len;
      p.query_mask = in.query_mask.empty() ? nullptr : in.query_mask.data();
      p.query_mask_stride = c.q_len;
      p.dropout = c.dropout;
      p.dropout_stream = attention_stream();
      p.bias = in.bias.data(), p.bias_stride = c.bias_stride(), p.bias_zero = c.bias_zero();
      p.mem_len = c.mem_len, p.mem_k = in.mem_k.data(), p.mem_v = in.mem_v.data();
      return p;
    };
    auto q_view = [&](std::vector<double>& v) { return ops::HeadsView<double>{v.data(), c.q_len * HD, HD}; };
    auto k_view = [&](std::vector<double>& v) { return ops::HeadsView<double>{v.data(), c.k_len * GD, GD}; };
    Arena arena;
    auto loss = [&] {  // Σ O ⊙ dout
      std::vector<double> o(sz(Bn * c.q_len * HD));
      K::forward(problem(), q_view(in.q), k_view(in.k), k_view(in.v), q_view(o), nullptr, arena);
      return dot(o, in.dout);
    };
    std::vector<double> o(sz(Bn * c.q_len * HD)), lse(sz(Bn * c.heads * c.q_len));
    K::forward(problem(), q_view(in.q), k_view(in.k), k_view(in.v), q_view(o), lse.data(), arena);
    std::vector<double> dq(in.q.size(), 0.0), dk(in.k.size(), 0.0), dv(in.v.size(), 0.0);
    std::vector<double> dmem_k(in.mem_k.size(), 0.0), dmem_v(in.mem_v.size(), 0.0), dbias(in.bias.size(), 0.0);
    K::backward(problem(), q_view(in.q), k_view(in.k), k_view(in.v), q_view(o), lse.data(), q_view(in.dout),
                q_view(dq), k_view(dk), k_view(dv), {dbias.data(), dmem_k.data(), dmem_v.data()}, arena);
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.q), dq, loss, "q"));
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.k), dk, loss, "k"));
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.v), dv, loss, "v"));
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.mem_k), dmem_k, loss, "memory keys"));
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.mem_v), dmem_v, loss, "memory values"));
    XTR_REQUIRE_GRADIENT(check_gradient(pointers(in.bias), dbias, loss, "bias table"));
    // the gradients are not trivially zero
    CHECK(std::any_of(dbias.begin(), dbias.end(), [](double e) { return std::abs(e) > 1e-3; }));
    CHECK(std::any_of(dmem_k.begin(), dmem_k.end(), [](double e) { return std::abs(e) > 1e-3; }));
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Whole models on both backends

namespace {

using DecoderLayers = Decoder<Rotary, LayerNorm, GEGLU>;
using EncoderLayers = Encoder<AbsoluteLearned, RMSNorm, SwiGLU>;
constexpr Index model_vocab = 23, model_seq = 9;

TransformerConfig small_model(std::uint64_t seed) {
  return {.num_tokens = model_vocab,
          .max_seq_len = model_seq,
          .emb_dropout = 0.1,
          .layers = {.dim = 16, .depth = 2, .heads = 2, .dim_head = 8, .attn_dropout = 0.1, .ff_dropout = 0.1},
          .seed = seed};
}
constexpr AdamWOptions model_optimizer{.lr = 1e-2};

/// Parameters after three AdamW steps, relative to max |parameter| (≈ 1-3). The backends' gradients differ by rounding
/// (≲ 1e-15 relative, see BackendTolerance), and AdamW's step lr · m̂ / (sqrt(v̂) + ε) is scale-free, so a relative
/// gradient error barely moves it, except where |g| ≲ ε = 1e-8: there an absolute gradient error δ ≈ 1e-17 (the
/// rounding of terms ~1e-1 that cancel) moves the step by up to lr · δ / ε ≈ 1e-2 · 1e-17 / 1e-8 = 1e-11 per step.
/// Measured: 3e-16 (Decoder), 2e-16 (Encoder), 1.7e-14 (XTransformer: a parameter with |g| near ε). Bound: 1e-11,
/// which a wrong gradient term (an update of ±lr = 1e-2 in the wrong direction) exceeds by 10^9.
constexpr double parameter_tolerance = 1e-11;
/// Losses and logits of the trained models (eval mode, and the KV-cached decoding steps): the same computation on
/// rounding-level different parameters; measured ≤ 8e-16; the op tolerance.
constexpr double model_logits_tolerance = BackendTolerance<double>::op;

std::vector<double> values_of(const ParameterStore<double>& store) {
  const double* v = store.values().data();
  return {v, v + store.count()};
}

/// The name of the parameter holding flat index i (for the report).
std::string parameter_at(const ParameterStore<double>& store, std::size_t i) {
  for (const auto& e : store.entries())
    if (Index(i) >= e.offset && Index(i) < e.offset + e.shape.numel())
      return e.name + "[" + std::to_string(Index(i) - e.offset) + "]";
  return "?";
}

/// Generated tokens equal, position for position; on failure, the first that differs.
void check_tokens(const TokenBatch& cpu, const TokenBatch& ref) {
  REQUIRE(cpu.data.size() == ref.data.size());
  std::size_t first = 0;
  while (first < ref.data.size() && cpu.data[first] == ref.data[first]) ++first;
  std::ostringstream where;
  if (first < ref.data.size())
    where << "first difference at batch " << Index(first) / ref.length << ", position " << Index(first) % ref.length
          << ": Cpu " << cpu.data[first] << ", Reference " << ref.data[first];
  INFO(where.str());
  CHECK(first == ref.data.size());
}

void check_parameters(const ParameterStore<double>& store, const std::vector<double>& cpu,
                      const std::vector<double>& ref, const std::vector<double>& initial) {
  const Diff d = diff(cpu, ref);
  INFO("worst parameter " << parameter_at(store, d.at));
  check_close("parameters after 3 AdamW steps", cpu, ref, parameter_tolerance, "model parameters");
  // training moved every parameter that gets a gradient: the comparison is not of the initial values
  REQUIRE(diff(ref, initial).worst > 1e-3);
}

template <class B>
struct DecoderRun {
  std::vector<double> initial, params, losses, logits, decode_logits;
  TokenBatch generated;
};

template <class B>
DecoderRun<B> run_decoder() {
  using Net = TransformerWrapper<DecoderLayers, B>;
  AutoregressiveWrapper<Net> model{Net{small_model(17)}};
  DecoderRun<B> r;
  r.initial = values_of(model.parameters());
  AdamW<double, B> opt(model.parameters(), model_optimizer);
  for (int step = 0; step < 3; ++step) {
    const auto batch = xtr::testing::random_tokens(3, model_seq + 1, model_vocab, 40 + step);
    const auto loss = model(batch);
    r.losses.push_back(loss.item());
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  r.params = values_of(model.parameters());
  model.eval();
  const auto tokens = xtr::testing::random_tokens(2, model_seq, model_vocab, 50);
  const auto logits = model.net.forward(tokens);
  r.logits.assign(logits.data(), logits.data() + logits.size());
  {  // the decode path directly: a prompt, then one token at a time, sliding past max_seq_len
    auto cache = model.net.make_cache(2);
    const auto prompt = xtr::testing::random_tokens(2, 4, model_vocab, 51);
    for (Index step = 0; step < 8; ++step) {
      const auto next = xtr::testing::random_tokens(2, 1, model_vocab, 60 + std::uint64_t(step));
      const auto l = model.net.forward_cached(step == 0 ? prompt : next, cache);
      r.decode_logits.insert(r.decode_logits.end(), l.data(), l.data() + l.size());
    }
  }
  const auto prompt = xtr::testing::random_tokens(2, 3, model_vocab, 52);
  r.generated = model.generate(prompt, 8, Sampling{.temperature = 0, .seed = 3});  // 11 > max_seq_len: slides
  return r;
}

}  // namespace

TEST_CASE("Models: a Decoder trained on Cpu<double> and on Reference<double> ends equal and decodes the same tokens",
          "[backends][model]") {
  const auto ref = run_decoder<Ref>();
  const auto cpu = run_decoder<Cpu<double>>();
  REQUIRE(cpu.initial == ref.initial);  // same seed, same initialisation
  check_close("training losses", cpu.losses, ref.losses, model_logits_tolerance, "model losses");
  TransformerWrapper<DecoderLayers, Ref> names{small_model(17)};
  check_parameters(names.parameters(), cpu.params, ref.params, ref.initial);
  check_close("eval logits", cpu.logits, ref.logits, model_logits_tolerance, "model logits");
  check_close("KV-cached decoding logits", cpu.decode_logits, ref.decode_logits, model_logits_tolerance,
              "model logits");
  check_tokens(cpu.generated, ref.generated);
}

namespace {

template <class B>
struct EncoderRun {
  std::vector<double> initial, params, losses, logits;
};

template <class B>
EncoderRun<B> run_encoder() {
  using Net = TransformerWrapper<EncoderLayers, B>;
  Net net{small_model(23)};
  EncoderRun<B> r;
  r.initial = values_of(net.parameters());
  AdamW<double, B> opt(net.parameters(), model_optimizer);
  const Index Bn = 2, T = model_seq;
  std::vector<std::uint8_t> mask(sz(Bn * T), 1);
  for (Index t = T - 3; t < T; ++t) mask[sz(T + t)] = 0;  // row 1: the last 3 positions are padding
  const MaskView mask_view{mask.data(), Bn, T};
  for (int step = 0; step < 3; ++step) {
    const auto tokens = xtr::testing::random_tokens(Bn, T, model_vocab, 70 + step);
    auto targets = xtr::testing::random_tokens(Bn, T, model_vocab, 80 + step).data;
    for (Index i = 0; i < Bn * T; ++i)
      if (!mask[sz(i)]) targets[sz(i)] = -100;
    const auto logits = net.forward(tokens, mask_view);
    const double loss = kernel<B, ops::SoftmaxCrossEntropy>::run(View<const double>(logits), targets.data(), -100,
                                                                   net.output_gradient().data());
    r.losses.push_back(loss);
    net.backward(1.0);
    opt.step();
    opt.zero_grad();
  }
  r.params = values_of(net.parameters());
  net.eval();
  const auto tokens = xtr::testing::random_tokens(Bn, T, model_vocab, 90);
  const auto logits = net.forward(tokens, mask_view);
  r.logits.assign(logits.data(), logits.data() + logits.size());
  return r;
}

}  // namespace

TEST_CASE("Models: an Encoder with a key mask trained on Cpu<double> and on Reference<double> ends equal",
          "[backends][model]") {
  const auto ref = run_encoder<Ref>();
  const auto cpu = run_encoder<Cpu<double>>();
  REQUIRE(cpu.initial == ref.initial);
  check_close("training losses", cpu.losses, ref.losses, model_logits_tolerance, "model losses");
  TransformerWrapper<EncoderLayers, Ref> names{small_model(23)};
  check_parameters(names.parameters(), cpu.params, ref.params, ref.initial);
  check_close("eval logits", cpu.logits, ref.logits, model_logits_tolerance, "model logits");
}

namespace {

XTransformerConfig small_seq2seq() {
  XTransformerConfig c;
  c.dim = 16;
  const LayersConfig layers{.depth = 2, .heads = 2, .dim_head = 8, .attn_dropout = 0.1, .ff_dropout = 0.1};
  c.encoder = {.num_tokens = model_vocab, .max_seq_len = model_seq, .emb_dropout = 0.1, .layers = layers};
  c.decoder = {.num_tokens = model_vocab, .max_seq_len = model_seq, .emb_dropout = 0.1, .layers = layers};
  c.cross_attn_tokens_dropout = 0.2;
  c.seed = 29;
  return c;
}

template <class B>
struct Seq2SeqRun {
  std::vector<double> initial, params, losses;
  TokenBatch generated;
};

template <class B>
Seq2SeqRun<B> run_seq2seq() {
  XTransformer<EncoderLayers, DecoderLayers, B> model{small_seq2seq()};
  Seq2SeqRun<B> r;
  r.initial = values_of(model.parameters());
  AdamW<double, B> opt(model.parameters(), model_optimizer);
  const Index Bn = 2, S = 7;
  std::vector<std::uint8_t> src_mask(sz(Bn * S), 1);
  src_mask[sz(S + S - 1)] = src_mask[sz(S + S - 2)] = 0;
  const MaskView mask{src_mask.data(), Bn, S};
  const auto src = xtr::testing::random_tokens(Bn, S, model_vocab, 100);
  for (int step = 0; step < 3; ++step) {
    const auto tgt = xtr::testing::random_tokens(Bn, model_seq + 1, model_vocab, 110 + step);
    const auto loss = model(src, tgt, mask);
    r.losses.push_back(loss.item());
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  r.params = values_of(model.parameters());
  const auto start = xtr::testing::random_tokens(Bn, 1, model_vocab, 120);
  r.generated = model.generate(src, start, 7, mask, Sampling{.temperature = 0, .seed = 5});
  return r;
}

}  // namespace

TEST_CASE("Models: an XTransformer trained on Cpu<double> and on Reference<double> ends equal and decodes the same",
          "[backends][model]") {
  const auto ref = run_seq2seq<Ref>();
  const auto cpu = run_seq2seq<Cpu<double>>();
  REQUIRE(cpu.initial == ref.initial);
  check_close("training losses", cpu.losses, ref.losses, model_logits_tolerance, "model losses");
  XTransformer<EncoderLayers, DecoderLayers, Ref> names{small_seq2seq()};
  check_parameters(names.parameters(), cpu.params, ref.params, ref.initial);
  check_tokens(cpu.generated, ref.generated);
}

// ---------------------------------------------------------------------------------------------------------------------
// Memory belongs to the backend (core/memory.hpp): a backend whose Memory records every block it hands out (the
// stand-in for a device's) and whose kernels are Cpu<double>'s. Everything a model allocates for its data —
// parameters, gradients, the activation arena, KV caches (also after a beam's repeat), cross-attention context, the
// optimizer's moments — must come from that Memory and go back to it; the results must equal Cpu<double>'s bit for bit.

namespace {

class FencedMemory {
 public:
  static void* allocate(std::size_t bytes) {
    void* p = Eigen::internal::aligned_malloc(bytes);
    const std::lock_guard lock(mutex());
    blocks()[static_cast<const std::byte*>(p)] = bytes;
    ++allocations();
    return p;
  }
  static void deallocate(void* p) noexcept {
    if (!p) return;
    {
      const std::lock_guard lock(mutex());
      blocks().erase(static_cast<const std::byte*>(p));
    }
    Eigen::internal::aligned_free(p);
  }
  /// Whether [p, p + bytes) lies inside one live block.
  static bool owns(const void* p, std::size_t bytes = 1) {
    const std::lock_guard lock(mutex());
    const auto* b = static_cast<const std::byte*>(p);
    auto it = blocks().upper_bound(b);
    if (it == blocks().begin()) return false;
    --it;
    return b + bytes <= it->first + it->second;
  }
  static std::size_t live() {
    const std::lock_guard lock(mutex());
    return blocks().size();
  }
  static std::size_t& allocations() {
    static std::size_t n = 0;
    return n;
  }

 private:
  static std::map<const std::byte*, std::size_t>& blocks() {
    static std::map<const std::byte*, std::size_t> m;
    return m;
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
};

struct Fenced {
  using scalar = double;
  static constexpr std::string_view name = "Fenced";
  static const Memory& memory() {
    static constexpr Memory m{"fenced", &FencedMemory::allocate, &FencedMemory::deallocate};
    return m;
  }
};

template <class T>
bool fenced(const Tensor<T>& t) {
  return &t.memory() == &Fenced::memory() && FencedMemory::owns(t.data(), sizeof(T) * std::size_t(t.size()));
}

}  // namespace

}  // namespace test_backends
namespace xtr {
template <class Op>
struct kernel<test_backends::Fenced, Op> : kernel<Cpu<double>, Op> {};
}  // namespace xtr
namespace test_backends {

TEST_CASE("Memory: a model's parameters, activations, caches and optimizer state come from its backend's Memory",
          "[backends][memory]") {
  const std::size_t live_before = FencedMemory::live();
  {
    using Net = TransformerWrapper<DecoderLayers, Fenced>;
    AutoregressiveWrapper<Net> model{Net{small_model(17)}};
    CHECK(&model.parameters().memory() == &Fenced::memory());
    CHECK(fenced(model.parameters().values()));
    CHECK(fenced(model.parameters().grads()));
    AdamW<double, Fenced> opt(model.parameters(), model_optimizer);
    CHECK(fenced(opt.exp_avg()));
    CHECK(fenced(opt.exp_avg_sq()));
    const auto loss = model(xtr::testing::random_tokens(3, model_seq + 1, model_vocab, 40));
    loss.backward();
    opt.step();
    CHECK(&model.net.activation_arena().memory() == &Fenced::memory());
    CHECK(model.net.activation_arena().bytes_reserved() > 0);
    CHECK(FencedMemory::owns(model.net.output_gradient().data()));  // an arena block
    model.eval();
    auto cache = model.net.make_cache(2);
    (void)model.net.forward_cached(xtr::testing::random_tokens(2, 4, model_vocab, 51), cache);
    for (std::size_t l = 0; l < cache.k.size(); ++l) {
      CHECK(fenced(cache.k[l]));
      CHECK(fenced(cache.v[l]));
    }
    cache.repeat_rows(3);  // a beam's copy of the rows stays in the backend's memory
    CHECK(fenced(cache.k[0]));
    CHECK(fenced(cache.v.back()));
    const Tensor<double> copy = cache.k[0];  // a copy keeps the memory of its source
    CHECK(fenced(copy));
  }
  {
    XTransformer<EncoderLayers, DecoderLayers, Fenced> seq2seq{small_seq2seq()};
    CHECK(fenced(seq2seq.parameters().values()));
  }
  CHECK(FencedMemory::allocations() > 0);
  CHECK(FencedMemory::live() == live_before);  // every block went back to the Memory that gave it
}

TEST_CASE("Memory: a Decoder on a backend with its own Memory computes exactly what Cpu<double> does",
          "[backends][memory]") {
  const auto cpu = run_decoder<Cpu<double>>();
  const auto fenced_run = run_decoder<Fenced>();
  CHECK(fenced_run.initial == cpu.initial);
  CHECK(fenced_run.losses == cpu.losses);
  CHECK(fenced_run.params == cpu.params);
  CHECK(fenced_run.decode_logits == cpu.decode_logits);
  check_tokens(fenced_run.generated, cpu.generated);
}

TEST_CASE("Memory: an allocation the backend's Memory refuses is an error, and nothing is half-built",
          "[backends][memory]") {
  static constexpr Memory refusing{
      "refusing", [](std::size_t bytes) -> void* { throw Error("xtr: cannot allocate " + std::to_string(bytes) +
                                                               " bytes of test memory"); },
      [](void*) noexcept {}};
  ParameterStore<float> store(refusing);
  store.add("w", Shape{3, 5}, Init::fill(1));
  REQUIRE_THROWS_WITH(store.allocate(0), Catch::Contains("cannot allocate 60 bytes of test memory"));
  CHECK_FALSE(store.allocated());
  Arena arena(refusing);
  REQUIRE_THROWS_WITH(arena.allocate<float>(4), Catch::Contains("of test memory"));
  CHECK(arena.bytes_reserved() == 0);
}

}  // namespace test_backends
