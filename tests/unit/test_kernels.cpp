// CPU kernels against straightforward references, and op-level finite-difference gradient checks in double:
//   attention (blocked, online softmax) vs a naive attention that materialises the full Tq × Tk scores in double:
//   causal / bidirectional, key padding (incl. fully masked query rows), grouped-query heads, odd lengths around the
//   64-wide tiles, q_len < k_len with q_offset (decoding), strided operands (NaN padding catches stray reads and
//   writes), dropout with the kernel's counter-based keep mask; norms, feed-forward activations, rotary, embedding,
//   cross-entropy; GELU against the exact erf formula.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_kernels {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using xtr::testing::check_gradient;
using xtr::testing::random_values;

namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
constexpr std::size_t sz(Index n) { return static_cast<std::size_t>(n); }

using xtr::testing::SerialOpenMP;

// ---------------------------------------------------------------------------------------------------------------------
// Attention

/// Error of the blocked kernel against the fp64 naive reference, as max |kernel − ref| / max(1, max |ref|) per
/// tensor. float: a softmax-weighted sum of O(1) values over ≤ 130 keys in fp32 (online rescaling adds a few
/// roundings per tile); measured worst ≈ 9e-7 forward and ≈ 2.2e-6 backward. double: measured ≈ 2e-15 forward,
/// ≈ 6e-15 backward. The bounds leave a ~5-10x margin for other compilers and vector widths.
template <class T>
struct AttentionTolerance;
template <>
struct AttentionTolerance<float> {
  static constexpr double forward = 5e-6, backward = 2e-5;
};
template <>
struct AttentionTolerance<double> {
  static constexpr double forward = 1e-13, backward = 1e-12;
};

enum class KeyMask { none, padding, fully_masked_row };

struct AttentionCase {
  Index batch = 2, heads = 4, kv_heads = 4, dim_head = 16, q_len = 1, k_len = 1, q_offset = 0;
  bool causal = false;
  KeyMask mask = KeyMask::none;
  double dropout = 0;
  Index pad_cols = 0, pad_rows = 0, lead_rows = 0;  // strided storage (a fused projection, a KV cache)

  [[nodiscard]] std::string str() const {
    std::ostringstream s;
    s << "B=" << batch << " H=" << heads << " G=" << kv_heads << " dh=" << dim_head << " Tq=" << q_len
      << " Tk=" << k_len << " q_offset=" << q_offset << (causal ? " causal" : " bidirectional") << " mask=" << int(mask)
      << " dropout=" << dropout << " pad=(" << pad_cols << "," << pad_rows << "," << lead_rows << ")";
    return s.str();
  }
  [[nodiscard]] std::vector<std::uint8_t> key_mask() const {
    if (mask == KeyMask::none) return {};
    std::vector<std::uint8_t> m(sz(batch * k_len), 1);
    for (Index b = 0; b < batch; ++b)
      for (Index j = 0; j < k_len; ++j) {
        bool keep = true;
        if (b % 2 == 0) keep = j != 0 && j % 7 != 3;   // holes, and key 0 (causal query 0 then sees nothing)
        if (b % 2 == 1) keep = j < k_len - k_len / 3;  // tail padding
        if (mask == KeyMask::fully_masked_row && b == batch - 1) keep = false;
        m[sz(b * k_len + j)] = keep;
      }
    return m;
  }
};

/// (batch, len, heads, dim_head) in row-strided storage; every entry outside the logical tensor is NaN, so a kernel
/// that reads past its operand produces NaN and one that writes past it leaves a non-NaN behind.
template <class T>
struct Heads {
  Index batch, len, heads, dh, pad_cols, pad_rows, lead_rows;
  std::vector<T> buf;

  Heads(Index b, Index t, Index h, Index d, const AttentionCase& c)
      : batch(b),
        len(t),
        heads(h),
        dh(d),
        pad_cols(c.pad_cols),
        pad_rows(c.pad_rows),
        lead_rows(c.lead_rows),
        buf(sz(b * (c.lead_rows + t + c.pad_rows) * (h * d + c.pad_cols)), T(nan_v)) {}
  [[nodiscard]] Index row_stride() const { return heads * dh + pad_cols; }
  [[nodiscard]] Index batch_stride() const { return (lead_rows + len + pad_rows) * row_stride(); }
  [[nodiscard]] Index offset(Index b, Index t, Index h, Index d) const {
    return b * batch_stride() + (lead_rows + t) * row_stride() + h * dh + d;
  }
  [[nodiscard]] Index numel() const { return batch * len * heads * dh; }
  void set(const std::vector<double>& logical) {
    for (Index i = 0; i < numel(); ++i) buf[sz(offset_of(i))] = T(logical[sz(i)]);
  }
  [[nodiscard]] std::vector<double> get() const {
    std::vector<double> out(sz(numel()));
    for (Index i = 0; i < numel(); ++i) out[sz(i)] = double(buf[sz(offset_of(i))]);
    return out;
  }
  [[nodiscard]] Index offset_of(Index i) const {  // logical index ((b·len + t)·heads + h)·dh + d
    const Index d = i % dh, h = i / dh % heads, t = i / (dh * heads) % len, b = i / (dh * heads * len);
    return offset(b, t, h, d);
  }
  [[nodiscard]] bool padding_untouched() const {
    std::vector<bool> logical(buf.size(), false);
    for (Index i = 0; i < numel(); ++i) logical[sz(offset_of(i))] = true;
    for (std::size_t i = 0; i < buf.size(); ++i)
      if (!logical[i] && !std::isnan(buf[i])) return false;
    return true;
  }
  [[nodiscard]] cpu::HeadsView<const T> cview() const {
    return {buf.data() + lead_rows * row_stride(), batch_stride(), row_stride()};
  }
  [[nodiscard]] cpu::HeadsView<T> view() {
    return {buf.data() + lead_rows * row_stride(), batch_stride(), row_stride()};
  }
};

struct AttentionInputs {
  std::vector<double> q, k, v, dout;  // logical (B, T, heads, dh)
  std::vector<std::uint8_t> mask;     // (B, Tk) or empty
};

AttentionInputs make_inputs(const AttentionCase& c, std::uint64_t seed) {
  AttentionInputs in;
  in.q = random_values(c.batch * c.q_len * c.heads * c.dim_head, seed, 2.0);  // scores with std ≈ 2: peaked rows
  in.k = random_values(c.batch * c.k_len * c.kv_heads * c.dim_head, seed + 1);
  in.v = random_values(c.batch * c.k_len * c.kv_heads * c.dim_head, seed + 2);
  in.dout = random_values(c.batch * c.q_len * c.heads * c.dim_head, seed + 3);
  in.mask = c.key_mask();
  return in;
}

RandomStream dropout_stream_for_tests() { return RandomStream{1234, 5}.fork(77); }

struct AttentionOutputs {
  std::vector<double> o, lse, dq, dk, dv;
};

/// Naive attention in double: full scores, softmax, dropout with the kernel's keep rule, and the textbook backward.
AttentionOutputs naive_attention(const AttentionCase& c, const AttentionInputs& in) {
  const Index B = c.batch, H = c.heads, G = c.kv_heads, D = c.dim_head, Tq = c.q_len, Tk = c.k_len;
  const double scale = 1.0 / std::sqrt(double(D));
  const RandomStream stream = dropout_stream_for_tests();
  auto qi = [&](Index b, Index t, Index h, Index d) { return ((b * Tq + t) * H + h) * D + d; };
  auto ki = [&](Index b, Index t, Index g, Index d) { return ((b * Tk + t) * G + g) * D + d; };
  AttentionOutputs r;
  r.o.assign(sz(B * Tq * H * D), 0.0);
  r.lse.assign(sz(B * H * Tq), std::numeric_limits<double>::infinity());
  r.dq.assign(r.o.size(), 0.0);
  r.dk.assign(sz(B * Tk * G * D), 0.0);
  r.dv.assign(r.dk.size(), 0.0);
  std::vector<double> s(sz(Tk)), p(sz(Tk)), keep(sz(Tk)), dp(sz(Tk));
  std::vector<bool> visible(sz(Tk));
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const Index g = h % G;
      for (Index i = 0; i < Tq; ++i) {
        double m = -std::numeric_limits<double>::infinity();
        for (Index j = 0; j < Tk; ++j) {
          visible[j] = !(c.causal && j > i + c.q_offset) && (in.mask.empty() || in.mask[sz(b * Tk + j)]);
          double dot = 0;
          for (Index d = 0; d < D; ++d) dot += in.q[qi(b, i, h, d)] * in.k[ki(b, j, g, d)];
          s[j] = scale * dot;
          if (visible[j]) m = std::max(m, s[j]);
        }
        if (m == -std::numeric_limits<double>::infinity()) continue;  // no key visible: O = 0, no gradient
        double sum = 0;
        for (Index j = 0; j < Tk; ++j) sum += p[j] = visible[j] ? std::exp(s[j] - m) : 0.0;
        r.lse[sz((b * H + h) * Tq + i)] = m + std::log(sum);
        for (Index j = 0; j < Tk; ++j) {
          p[j] /= sum;
          keep[j] = 1;
          if (c.dropout > 0) {
            const std::uint64_t idx = ((std::uint64_t(b) * H + h) * Tq + i) * Tk + j;
            keep[j] = stream.uniform(idx) >= float(c.dropout) ? 1.0 / (1.0 - c.dropout) : 0.0;
          }
        }
        for (Index j = 0; j < Tk; ++j)
          for (Index d = 0; d < D; ++d) r.o[qi(b, i, h, d)] += p[j] * keep[j] * in.v[ki(b, j, g, d)];
        // backward: dV += Pdᵀ dO;  dP = keep ⊙ (dO Vᵀ);  dS = P ⊙ (dP − Σ P dP);  dQ = scale dS K;  dK = scale dSᵀ Q
        double row = 0;
        for (Index j = 0; j < Tk; ++j) {
          double dot = 0;
          for (Index d = 0; d < D; ++d) {
            dot += in.dout[qi(b, i, h, d)] * in.v[ki(b, j, g, d)];
            r.dv[ki(b, j, g, d)] += p[j] * keep[j] * in.dout[qi(b, i, h, d)];
          }
          dp[j] = keep[j] * dot;
          row += p[j] * dp[j];
        }
        for (Index j = 0; j < Tk; ++j) {
          const double ds = p[j] * (dp[j] - row);
          for (Index d = 0; d < D; ++d) {
            r.dq[qi(b, i, h, d)] += scale * ds * in.k[ki(b, j, g, d)];
            r.dk[ki(b, j, g, d)] += scale * ds * in.q[qi(b, i, h, d)];
          }
        }
      }
    }
  return r;
}

cpu::AttentionProblem<double> problem_of(const AttentionCase& c, const std::vector<std::uint8_t>& mask) {
  cpu::AttentionProblem<double> p;
  p.batch = c.batch;
  p.heads = c.heads;
  p.kv_heads = c.kv_heads;
  p.dim_head = c.dim_head;
  p.q_len = c.q_len;
  p.k_len = c.k_len;
  p.q_offset = c.q_offset;
  p.causal = c.causal;
  p.scale = 1.0 / std::sqrt(double(c.dim_head));
  p.key_mask = mask.empty() ? nullptr : mask.data();
  p.key_mask_stride = c.k_len;
  p.dropout = c.dropout;
  p.dropout_stream = dropout_stream_for_tests();
  return p;
}

template <class T>
cpu::AttentionProblem<T> cast_problem(const cpu::AttentionProblem<double>& d) {
  cpu::AttentionProblem<T> p;
  p.batch = d.batch;
  p.heads = d.heads;
  p.kv_heads = d.kv_heads;
  p.dim_head = d.dim_head;
  p.q_len = d.q_len;
  p.k_len = d.k_len;
  p.q_offset = d.q_offset;
  p.causal = d.causal;
  p.scale = T(d.scale);
  p.key_mask = d.key_mask;
  p.key_mask_stride = d.key_mask_stride;
  p.dropout = d.dropout;
  p.dropout_stream = d.dropout_stream;
  return p;
}

struct KernelRun {
  AttentionOutputs out;
  bool padding_untouched = true;
};

/// The blocked kernel in precision T on strided operands; forward (and backward when `backward`).
template <class T>
KernelRun run_attention(const AttentionCase& c, const AttentionInputs& in, bool backward = true) {
  const auto problem = cast_problem<T>(problem_of(c, in.mask));
  Heads<T> q(c.batch, c.q_len, c.heads, c.dim_head, c), k(c.batch, c.k_len, c.kv_heads, c.dim_head, c),
      v(c.batch, c.k_len, c.kv_heads, c.dim_head, c), o(c.batch, c.q_len, c.heads, c.dim_head, c),
      dout(c.batch, c.q_len, c.heads, c.dim_head, c), dq(c.batch, c.q_len, c.heads, c.dim_head, c),
      dk(c.batch, c.k_len, c.kv_heads, c.dim_head, c), dv(c.batch, c.k_len, c.kv_heads, c.dim_head, c);
  q.set(in.q);
  k.set(in.k);
  v.set(in.v);
  dout.set(in.dout);
  std::vector<T> lse(sz(c.batch * c.heads * c.q_len), T(nan_v));
  Arena arena;
  cpu::attention_forward<T>(problem, q.cview(), k.cview(), v.cview(), o.view(), lse.data(), arena);
  KernelRun r;
  r.out.o = o.get();
  r.out.lse.assign(lse.begin(), lse.end());
  r.padding_untouched = o.padding_untouched();
  if (!backward) return r;
  const std::vector<double> zeros_q(sz(q.numel()), 0.0), zeros_k(sz(k.numel()), 0.0);
  dq.set(zeros_q);
  dk.set(zeros_k);
  dv.set(zeros_k);
  arena.reset();
  cpu::attention_backward<T>(problem, q.cview(), k.cview(), v.cview(), o.cview(), lse.data(), dout.cview(), dq.view(),
                             dk.view(), dv.view(), arena);
  r.out.dq = dq.get();
  r.out.dk = dk.get();
  r.out.dv = dv.get();
  r.padding_untouched =
      r.padding_untouched && dq.padding_untouched() && dk.padding_untouched() && dv.padding_untouched();
  return r;
}

/// max |a − ref| / max(1, max |ref|); NaN or ∞ in `a` gives +∞.
double scaled_error(const std::vector<double>& a, const std::vector<double>& ref) {
  double err = 0, scale = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::abs(a[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return err / scale;
}

template <class T>
void compare_run(const AttentionCase& c, const AttentionInputs& in, const AttentionOutputs& ref, double* worst_fwd,
                 double* worst_bwd) {
  const auto run = run_attention<T>(c, in);
  INFO(c.str() << " in " << (std::is_same_v<T, float> ? "float" : "double"));
  REQUIRE(run.padding_untouched);
  const double e_o = scaled_error(run.out.o, ref.o);
  const double e_b =
      std::max({scaled_error(run.out.dq, ref.dq), scaled_error(run.out.dk, ref.dk), scaled_error(run.out.dv, ref.dv)});
  INFO("forward error " << e_o << ", backward error " << e_b);
  CHECK(e_o <= AttentionTolerance<T>::forward);
  CHECK(e_b <= AttentionTolerance<T>::backward);
  // lse: finite rows agree; rows with no visible key are +inf in both
  for (std::size_t i = 0; i < ref.lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      REQUIRE(std::isinf(run.out.lse[i]));
      REQUIRE(run.out.lse[i] > 0);
    } else {
      REQUIRE(std::abs(run.out.lse[i] - ref.lse[i]) <=
              10 * AttentionTolerance<T>::forward * std::max(1.0, std::abs(ref.lse[i])));
    }
  }
  *worst_fwd = std::max(*worst_fwd, e_o);
  *worst_bwd = std::max(*worst_bwd, e_b);
}

/// Worst errors seen, per precision (reported by the main test).
struct WorstErrors {
  double forward[2] = {0, 0}, backward[2] = {0, 0};
};

/// The kernel in float and in double against one fp64 naive reference.
void compare_with_reference(const AttentionCase& c, std::uint64_t seed, WorstErrors* worst = nullptr) {
  WorstErrors local;
  if (!worst) worst = &local;
  const auto in = make_inputs(c, seed);
  const auto ref = naive_attention(c, in);
  compare_run<float>(c, in, ref, &worst->forward[0], &worst->backward[0]);
  compare_run<double>(c, in, ref, &worst->forward[1], &worst->backward[1]);
}

}  // namespace

TEST_CASE("attention: blocked kernel equals naive attention (masks, GQA, odd lengths, head sizes)",
          "[kernels][attention]") {
  WorstErrors worst;
  std::uint64_t seed = 100;
  for (bool causal : {true, false})
    for (KeyMask mask : {KeyMask::none, KeyMask::padding, KeyMask::fully_masked_row})
      for (Index kv : {4, 2, 1})
        for (Index T : {1, 63, 65, 97, 130})
          for (Index dh : {16, 64}) {
            if (dh == 64 && (kv == 2 || T < 65)) continue;  // dh 64: the two multi-tile lengths, kv 4 and 1
            AttentionCase c;
            c.kv_heads = kv;
            c.dim_head = dh;
            c.q_len = c.k_len = T;
            c.causal = causal;
            c.mask = mask;
            compare_with_reference(c, seed++, &worst);
          }
  INFO("attention, worst scaled error in float: forward " << worst.forward[0] << ", backward " << worst.backward[0]
                                                          << "; in double: forward " << worst.forward[1]
                                                          << ", backward " << worst.backward[1]);
  CHECK(worst.forward[0] > 0);  // float is not secretly computed in double (the comparison could not fail)
}

TEST_CASE("attention: decoding shapes (q_len < k_len with q_offset) on cache-like strided keys",
          "[kernels][attention]") {
  std::uint64_t seed = 500;
  for (Index tq : {1, 3, 65})
    for (bool causal : {true, false})
      for (KeyMask mask : {KeyMask::none, KeyMask::padding})
        for (Index kv : {4, 1}) {
          AttentionCase c;
          c.kv_heads = kv;
          c.q_len = tq;
          c.k_len = tq == 65 ? 130 : 70;
          c.q_offset = c.k_len - c.q_len;  // the new queries are the last positions
          c.causal = causal;
          c.mask = mask;
          c.pad_cols = 3;   // rows of a wider buffer
          c.pad_rows = 9;   // cache capacity beyond the live rows
          c.lead_rows = 5;  // the live window starts after dropped rows
          compare_with_reference(c, seed++);
        }
  SECTION("q_offset smaller than k_len − q_len: later keys stay invisible to causal queries") {
    AttentionCase c;
    c.q_len = 3;
    c.k_len = 70;
    c.q_offset = 20;
    c.causal = true;
    compare_with_reference(c, 900);
  }
}

TEST_CASE("attention: large scores (near one-hot rows) and an odd head size stay accurate", "[kernels][attention]") {
  for (bool causal : {true, false}) {
    AttentionCase c;
    c.dim_head = 5;
    c.kv_heads = 2;
    c.q_len = c.k_len = 97;
    c.causal = causal;
    c.mask = KeyMask::padding;
    auto in = make_inputs(c, 61);
    for (auto& x : in.q) x *= 25;  // scores with std ≈ 50: exp(S − m) underflows for most keys
    const auto ref = naive_attention(c, in);
    WorstErrors worst;
    compare_run<float>(c, in, ref, &worst.forward[0], &worst.backward[0]);
    compare_run<double>(c, in, ref, &worst.forward[1], &worst.backward[1]);
  }
}

TEST_CASE("attention: fully masked query rows give zero output, +inf lse and zero, finite gradients",
          "[kernels][attention]") {
  for (bool causal : {false, true}) {
    AttentionCase c;
    c.q_len = c.k_len = 70;
    c.causal = causal;
    c.mask = KeyMask::fully_masked_row;  // batch 1: every key masked
    const auto in = make_inputs(c, 31);
    const auto run = run_attention<float>(c, in);
    const Index per_batch_q = c.q_len * c.heads * c.dim_head, per_batch_k = c.k_len * c.kv_heads * c.dim_head;
    for (Index i = 0; i < per_batch_q; ++i) {
      REQUIRE(run.out.o[sz(per_batch_q + i)] == 0.0);
      REQUIRE(run.out.dq[sz(per_batch_q + i)] == 0.0);
    }
    for (Index i = 0; i < per_batch_k; ++i) {
      REQUIRE(run.out.dk[sz(per_batch_k + i)] == 0.0);
      REQUIRE(run.out.dv[sz(per_batch_k + i)] == 0.0);
    }
    for (double x : run.out.dq) REQUIRE(std::isfinite(x));
    for (double x : run.out.dk) REQUIRE(std::isfinite(x));
    for (Index i = c.heads * c.q_len; i < 2 * c.heads * c.q_len; ++i) REQUIRE(run.out.lse[sz(i)] > 1e30);
    // batch 0 (key 0 masked): in the causal case query 0 sees no key at all
    if (causal)
      for (Index h = 0; h < c.heads; ++h)
        for (Index d = 0; d < c.dim_head; ++d) REQUIRE(run.out.o[sz(h * c.dim_head + d)] == 0.0);
  }
}

namespace {
/// A single query's fused loops on instruction set Isa over rows of E (float, or halves holding the same values)
/// against the formula in double: 11 rows (four at a time, then the rest), rows `ld` apart with padding between.
template <class Isa, class E>
void check_fused_single_query(Index d) {
  const Index n = 11, ld = d + 8;
  const auto q = random_values(d, 31), k = random_values(n * ld, 32), v = random_values(n * ld, 33),
             p = random_values(n, 34), acc0 = random_values(d, 35);
  std::vector<float> qf(q.begin(), q.end()), pf(p.begin(), p.end()), acc(acc0.begin(), acc0.end()), dots(sz(n));
  std::vector<E> ke(sz(n * ld)), ve(sz(n * ld));
  std::vector<double> kd(sz(n * ld)), vd(sz(n * ld));  // the values the rows hold
  for (Index i = 0; i < n * ld; ++i) {
    if constexpr (std::is_same_v<E, Half>) {
      ke[sz(i)].bits = xtr::detail::float_to_half_bits_nearest(float(k[sz(i)]));
      ve[sz(i)].bits = xtr::detail::float_to_half_bits_nearest(float(v[sz(i)]));
      kd[sz(i)] = xtr::detail::half_bits_to_float(ke[sz(i)].bits);
      vd[sz(i)] = xtr::detail::half_bits_to_float(ve[sz(i)].bits);
    } else {
      kd[sz(i)] = ke[sz(i)] = float(k[sz(i)]);
      vd[sz(i)] = ve[sz(i)] = float(v[sz(i)]);
    }
  }
  cpu::simd::scaled_dots<Isa>(qf.data(), ke.data(), ld, n, d, 0.25f, dots.data());
  cpu::simd::weighted_rows<Isa>(pf.data(), ve.data(), ld, n, d, acc.data());
  for (Index j = 0; j < n; ++j) {
    double dot = 0;
    for (Index c = 0; c < d; ++c) dot += double(qf[sz(c)]) * kd[sz(j * ld + c)];
    CHECK(dots[sz(j)] == Approx(0.25 * dot).margin(1e-5));
  }
  for (Index c = 0; c < d; ++c) {
    double sum = double(float(acc0[sz(c)]));
    for (Index j = 0; j < n; ++j) sum += double(pf[sz(j)]) * vd[sz(j * ld + c)];
    CHECK(acc[sz(c)] == Approx(sum).margin(1e-5));
  }
}
template <class Isa>
void check_fused_single_query_paths() {
  for (const Index d : {Isa::width, 2 * Isa::width, 5 * Isa::width, 8 * Isa::width}) {
    INFO(Isa::name << ", dim_head " << d);
    check_fused_single_query<Isa, float>(d);
    check_fused_single_query<Isa, Half>(d);
  }
}
}  // namespace

TEST_CASE("attention: a single query's fused loops on every compiled instruction set, over floats and halves",
          "[kernels][attention][kv_cache]") {
  Index paths = 0;
#if defined(XTR_SIMD_AVX512)
  check_fused_single_query_paths<cpu::simd::Avx512>();
  ++paths;
#endif
#if defined(XTR_SIMD_AVX2)
  check_fused_single_query_paths<cpu::simd::Avx2>();
  ++paths;
#endif
  if (paths == 0) WARN("this build has no AVX2 or AVX-512 path: the fused loops are not compiled");
}

TEST_CASE("f16 KV cache writes: the nearest half of every value (F16C and the scalar definition agree), values "
          "beyond ±65504 and non-finite ones refused by index", "[kernels][kv_cache]") {
  // normal, subnormal and tie values, both signs, in vectors of 8 and a scalar tail
  std::vector<float> x;
  for (int e = -26; e <= 15; ++e)
    for (const float m : {1.0f, 1.3f, 1.0009765625f + 0.00048828125f, 1.99951171875f, 1.5f + 0.000244140625f})
      for (const float sign : {1.0f, -1.0f})
        if (std::ldexp(m, e) <= 65504.0f) x.push_back(sign * std::ldexp(m, e));
  x.push_back(65504.0f);
  x.push_back(-65504.0f);
  x.push_back(0.0f);
  x.push_back(-0.0f);
  x.push_back(std::ldexp(1.0f, -25));                 // half of the smallest subnormal: ties to 0
  x.push_back(std::ldexp(3.0f, -25));                 // 1.5 units: ties to 2 units
  std::vector<Half> out(x.size());
  REQUIRE(cpu::simd::to_halves(x.data(), Index(x.size()), out.data()) == Index(x.size()));
  for (std::size_t i = 0; i < x.size(); ++i) {
    INFO(x[i]);
    CHECK(out[i].bits == xtr::detail::float_to_half_bits_nearest(x[i]));
    const float back = xtr::detail::half_bits_to_float(out[i].bits);
    if (std::fabs(x[i]) >= std::ldexp(1.0f, -14))
      CHECK(std::fabs(back - x[i]) <= std::fabs(x[i]) * std::ldexp(1.0f, -11));  // half a unit in the last place
  }
  std::vector<double> xd(x.begin(), x.end());
  std::vector<Half> out_d(x.size());
  REQUIRE(cpu::simd::to_halves(xd.data(), Index(xd.size()), out_d.data()) == Index(x.size()));
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(out_d[i].bits == out[i].bits);
  // the first value outside the range, in the vector part and in the tail
  for (const float bad : {65505.0f, -1e6f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    for (const Index at : {Index(3), Index(13)}) {
      std::vector<float> y(16, 1.0f);
      y[sz(at)] = bad;
      y[15] = bad;
      std::vector<Half> h(16);
      INFO(bad << " at " << at);
      CHECK(cpu::simd::to_halves(y.data(), 16, h.data()) == at);
      std::vector<double> yd(y.begin(), y.end());
      CHECK(cpu::simd::to_halves(yd.data(), 16, h.data()) == at);
    }
}

TEST_CASE("attention: dropout output equals naive attention with the same keep mask", "[kernels][attention]") {
  std::uint64_t seed = 700;
  for (bool causal : {true, false})
    for (Index T : {1, 65, 97}) {
      AttentionCase c;
      c.kv_heads = 2;
      c.q_len = c.k_len = T;
      c.causal = causal;
      c.mask = KeyMask::padding;
      c.dropout = 0.3;
      compare_with_reference(c, seed++);
    }
  AttentionCase c;  // decoding shape with dropout: the counter uses q_len and k_len of this call
  c.q_len = 3;
  c.k_len = 70;
  c.q_offset = 67;
  c.causal = true;
  c.dropout = 0.3;
  compare_with_reference(c, 800);
}

TEST_CASE("attention: dropout keeps a fraction 1 − p of the probabilities, scaled by 1/(1 − p)",
          "[kernels][attention]") {
  // q = 0 makes every row uniform (P = 1/Tk); v = 1 then gives O = kept/(Tk (1 − p)): the kernel's own keep count.
  AttentionCase c;
  c.q_len = c.k_len = 130;
  c.dropout = 0.3;
  auto in = make_inputs(c, 9);
  std::fill(in.q.begin(), in.q.end(), 0.0);
  std::fill(in.v.begin(), in.v.end(), 1.0);
  const auto run = run_attention<double>(c, in, false);
  double kept = 0;
  const Index rows = c.batch * c.q_len * c.heads;
  for (Index r = 0; r < rows; ++r) {
    const double count = run.out.o[sz(r * c.dim_head)] * double(c.k_len) * (1 - c.dropout);
    REQUIRE(std::abs(count - std::round(count)) < 1e-9);  // a whole number of kept keys
    kept += std::round(count);
  }
  const double n = double(rows * c.k_len), fraction = kept / n;
  const double se = std::sqrt(0.3 * 0.7 / n);
  INFO("kept fraction " << fraction << " over " << n << " entries (standard error " << se << ")");
  REQUIRE(std::abs(fraction - 0.7) < 5 * se);
}

namespace {
/// loss = Σ O ⊙ R through the double kernel; checks dQ, dK, dV against central differences.
void check_attention_gradient(const AttentionCase& c, std::uint64_t seed) {
  auto in = make_inputs(c, seed);
  const auto run = run_attention<double>(c, in);  // backward with dO = R (in.dout)
  auto loss = [&] {
    const auto r = run_attention<double>(c, in, false);
    double s = 0;
    for (std::size_t i = 0; i < r.out.o.size(); ++i) s += r.out.o[i] * in.dout[i];
    return s;
  };
  INFO(c.str());
  const SerialOpenMP serial;
  for (auto [name, x, g] : {std::tuple{"q", &in.q, &run.out.dq}, std::tuple{"k", &in.k, &run.out.dk},
                            std::tuple{"v", &in.v, &run.out.dv}}) {
    std::vector<double*> ptrs;
    for (auto& e : *x) ptrs.push_back(&e);
    XTR_REQUIRE_GRADIENT(check_gradient(ptrs, *g, loss, name));
  }
}
}  // namespace

TEST_CASE("attention: gradients match finite differences in double", "[kernels][attention][gradient]") {
  AttentionCase c;
  c.kv_heads = 2;
  c.dim_head = 4;
  SECTION("causal, key padding, q_offset") {
    c.q_len = 5;
    c.k_len = 9;
    c.q_offset = 4;
    c.causal = true;
    c.mask = KeyMask::padding;
    check_attention_gradient(c, 40);
  }
  SECTION("bidirectional with a fully masked row") {
    c.q_len = c.k_len = 7;
    c.mask = KeyMask::fully_masked_row;
    check_attention_gradient(c, 41);
  }
  SECTION("causal with dropout 0.3") {
    c.q_len = c.k_len = 8;
    c.causal = true;
    c.dropout = 0.3;
    check_attention_gradient(c, 42);
  }
  SECTION("bidirectional with dropout 0.3, one kv head") {
    c.kv_heads = 1;
    c.q_len = 4;
    c.k_len = 6;
    c.mask = KeyMask::padding;
    c.dropout = 0.3;
    check_attention_gradient(c, 43);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Norms

namespace {
template <class Norm>
std::vector<double> naive_norm(const std::vector<double>& x, const std::vector<double>& gamma, Index N, Index D) {
  std::vector<double> h(x.size());
  for (Index n = 0; n < N; ++n) {
    const double* r = x.data() + n * D;
    double mean = 0, sq = 0;
    if constexpr (std::is_same_v<Norm, LayerNorm>) {
      for (Index d = 0; d < D; ++d) mean += r[d];
      mean /= double(D);
      for (Index d = 0; d < D; ++d) sq += (r[d] - mean) * (r[d] - mean);
      for (Index d = 0; d < D; ++d) h[n * D + d] = (r[d] - mean) / std::sqrt(sq / double(D) + 1e-5) * (1 + gamma[d]);
    } else {
      for (Index d = 0; d < D; ++d) sq += r[d] * r[d];
      for (Index d = 0; d < D; ++d)
        h[n * D + d] = r[d] / std::max(std::sqrt(sq), 1e-12) * std::sqrt(double(D)) * (1 + gamma[d]);
    }
  }
  return h;
}

template <class Norm, class T>
std::vector<double> run_norm(const std::vector<double>& x, const std::vector<double>& gamma, Index N, Index D) {
  std::vector<T> xt(x.begin(), x.end()), gt(gamma.begin(), gamma.end()), h(x.size());
  cpu::norm_forward<Norm, T>(MatrixView<T>(xt.data(), N, D), gt.data(), MatrixView<T>(h.data(), N, D), nullptr,
                             nullptr);
  return {h.begin(), h.end()};
}
}  // namespace

TEMPLATE_TEST_CASE("norm: forward equals the formula / gradients (x and gamma) match finite differences",
                   "[kernels][norm][gradient]", LayerNorm, RMSNorm) {
  const Index N = 40, D = 12;  // N > 2 · grain: the row loop runs threaded
  auto x = random_values(N * D, 1, 1.5);
  for (Index n = 0; n < N; ++n)
    for (Index d = 0; d < D; ++d) x[sz(n * D + d)] += 0.3 * double(n % 5);  // non-zero row means
  auto gamma = random_values(D, 2, 0.3);
  const auto R = random_values(N * D, 3);
  const auto ref = naive_norm<TestType>(x, gamma, N, D);
  CHECK(scaled_error(run_norm<TestType, double>(x, gamma, N, D), ref) < 1e-14);
  CHECK(scaled_error(run_norm<TestType, float>(x, gamma, N, D), ref) < 1e-6);

  auto loss = [&] {
    const auto h = run_norm<TestType, double>(x, gamma, N, D);
    double s = 0;
    for (std::size_t i = 0; i < h.size(); ++i) s += h[i] * R[i];
    return s;
  };
  std::vector<double> h(x.size()), xhat(x.size()), rstd(sz(N));
  cpu::norm_forward<TestType, double>(MatrixView<double>(x.data(), N, D), gamma.data(),
                                      MatrixView<double>(h.data(), N, D), xhat.data(), rstd.data());
  // gradients add into dx and dgamma: start from known values and subtract them
  std::vector<double> dh = R, dx = random_values(N * D, 4), dgamma = random_values(D, 5);
  const auto dx0 = dx, dgamma0 = dgamma;
  Arena arena;
  cpu::norm_backward<TestType, double>(MatrixView<double>(dh.data(), N, D), xhat.data(), rstd.data(), gamma.data(),
                                       MatrixView<double>(dx.data(), N, D), dgamma.data(), arena);
  for (std::size_t i = 0; i < dx.size(); ++i) dx[i] -= dx0[i];
  for (std::size_t i = 0; i < dgamma.size(); ++i) dgamma[i] -= dgamma0[i];
  std::vector<double*> px, pg;
  for (auto& e : x) px.push_back(&e);
  for (auto& e : gamma) pg.push_back(&e);
  const SerialOpenMP serial;
  XTR_REQUIRE_GRADIENT(check_gradient(px, dx, loss, "x"));
  XTR_REQUIRE_GRADIENT(check_gradient(pg, dgamma, loss, "gamma"));
}

TEMPLATE_TEST_CASE("RMSNorm: a row with norm below eps is scaled linearly, forward and backward", "[kernels][norm]",
                   float, double) {
  // ‖x‖ < 1e-12 clamps to 1e-12: h = x · sqrt(D)/1e-12 · (1 + γ), a linear map, so dx = sqrt(D)/1e-12 · (1 + γ) ⊙ dh.
  using T = TestType;
  const Index D = 32;
  auto xd = random_values(D, 6, 1e-15);
  const auto gd = random_values(D, 7, 0.3), R = random_values(D, 8);
  std::vector<T> x(xd.begin(), xd.end()), gamma(gd.begin(), gd.end()), h(sz(D)), xhat(sz(D));
  std::vector<T> dh(R.begin(), R.end()), dx(sz(D), T(0)), dgamma(sz(D), T(0));
  T rstd;
  cpu::norm_forward<RMSNorm, T>(MatrixView<T>(x.data(), 1, D), gamma.data(), MatrixView<T>(h.data(), 1, D), xhat.data(),
                                &rstd);
  Arena arena;
  cpu::norm_backward<RMSNorm, T>(MatrixView<T>(dh.data(), 1, D), xhat.data(), &rstd, gamma.data(),
                                 MatrixView<T>(dx.data(), 1, D), dgamma.data(), arena);
  const double r = std::sqrt(double(D)) / 1e-12;
  double err_h = 0, err_dx = 0, scale_h = 0, scale_dx = 0;
  for (Index d = 0; d < D; ++d) {
    const double want_h = double(x[d]) * r * (1 + double(gamma[d]));
    const double want_dx = r * (1 + double(gamma[d])) * double(dh[d]);
    err_h = std::max(err_h, std::abs(double(h[d]) - want_h));
    err_dx = std::max(err_dx, std::abs(double(dx[d]) - want_dx));
    scale_h = std::max(scale_h, std::abs(want_h));
    scale_dx = std::max(scale_dx, std::abs(want_dx));
  }
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  INFO("rstd " << double(rstd) << ", rstd·eps " << double(rstd) * 1e-12 << " vs sqrt(D) " << std::sqrt(double(D)));
  CHECK(err_h / scale_h < tol);
  CHECK(err_dx / scale_dx < tol);
}

// ---------------------------------------------------------------------------------------------------------------------
// Feed-forward activations

namespace {
double gelu_exact(double a) { return 0.5 * a * (1 + std::erf(a / std::sqrt(2.0))); }
double silu_exact(double a) { return a / (1 + std::exp(-a)); }

template <class FF, class T>
std::vector<double> run_ff(const std::vector<double>& z, const std::vector<double>& bias, Index N, Index W,
                           std::vector<double>* pre = nullptr) {
  const Index F = FF::gated ? W / 2 : W;
  std::vector<T> a(z.begin(), z.end()), b(bias.begin(), bias.end()), g(sz(N * F));
  cpu::feedforward_activation_forward<FF, T>(MatrixView<T>(a.data(), N, W), b.data(), MatrixView<T>(g.data(), N, F));
  if (pre) pre->assign(a.begin(), a.end());
  return {g.begin(), g.end()};
}
}  // namespace

TEMPLATE_TEST_CASE(
    "feed-forward activation: forward equals the formula / gradients (input and bias) match finite "
    "differences",
    "[kernels][feedforward][gradient]", GELU, GEGLU, SwiGLU) {
  const Index N = 40, F = 10, W = TestType::gated ? 2 * F : F;
  auto z = random_values(N * W, 11, 2.0);
  auto bias = random_values(W, 12, 0.5);
  const auto R = random_values(N * F, 13);
  // reference: a = z + b;  g = act(a) or a[:F] ⊙ act(a[F:])
  std::vector<double> ref(sz(N * F));
  auto act = [](double a) { return std::is_same_v<typename TestType::activation, act::Gelu> ? gelu_exact(a) : silu_exact(a); };
  for (Index n = 0; n < N; ++n)
    for (Index f = 0; f < F; ++f) {
      const double u = z[n * W + f] + bias[f];
      ref[n * F + f] = TestType::gated ? u * act(z[n * W + F + f] + bias[F + f]) : act(u);
    }
  CHECK(scaled_error(run_ff<TestType, double>(z, bias, N, W), ref) < 1e-14);
  CHECK(scaled_error(run_ff<TestType, float>(z, bias, N, W), ref) < 2e-6);

  auto loss = [&] {
    const auto g = run_ff<TestType, double>(z, bias, N, W);
    double s = 0;
    for (std::size_t i = 0; i < g.size(); ++i) s += g[i] * R[i];
    return s;
  };
  std::vector<double> pre;
  run_ff<TestType, double>(z, bias, N, W, &pre);
  std::vector<double> dg = R, da(sz(N * W)), dbias = random_values(W, 14);
  const auto dbias0 = dbias;
  Arena arena;
  cpu::feedforward_activation_backward<TestType, double>(MatrixView<double>(pre.data(), N, W), dg.data(), da.data(),
                                                         dbias.data(), arena);
  for (std::size_t i = 0; i < dbias.size(); ++i) dbias[i] -= dbias0[i];
  std::vector<double*> pz, pb;
  for (auto& e : z) pz.push_back(&e);
  for (auto& e : bias) pb.push_back(&e);
  const SerialOpenMP serial;
  XTR_REQUIRE_GRADIENT(check_gradient(pz, da, loss, "z"));
  XTR_REQUIRE_GRADIENT(check_gradient(pb, dbias, loss, "bias"));

  if constexpr (!TestType::gated) {  // the plain backward may run in place (da aliases dg), as the model does
    std::vector<double> inplace = R, db(sz(W), 0.0);
    cpu::feedforward_activation_backward<TestType, double>(MatrixView<double>(pre.data(), N, W), inplace.data(),
                                                           inplace.data(), db.data(), arena);
    CHECK(scaled_error(inplace, da) < 1e-15);
  }
}

TEST_CASE("GELU in float equals the exact erf formula on -10 .. 10", "[kernels][feedforward]") {
  // Eigen's float erf is accurate to a few ulp; a·(1 + erf(a/√2))/2 then carries |a|·O(ulp) absolute error: for
  // a < 0 the sum 1 + erf cancels, but erf's absolute error (≤ a few · 2^-25 near ∓1) is what is scaled by |a|/2.
  // Bound: |gelu_float(a) − gelu(a)| ≤ 1e-6 · max(1, |a|) (≈ 8 float ulps of |a|), measured ≈ 1.8e-7.
  const Index n = 200001;
  std::vector<float> a(sz(n)), g(sz(n));
  for (Index i = 0; i < n; ++i) a[sz(i)] = float(-10.0 + 20.0 * double(i) / double(n - 1));
  std::vector<float> bias(sz(n), 0.0f);
  // one row of n values: a bias of zeros keeps a exact
  cpu::feedforward_activation_forward<GELU, float>(MatrixView<float>(a.data(), 1, n), bias.data(),
                                                   MatrixView<float>(g.data(), 1, n));
  double worst = 0, worst_at = 0;
  for (Index i = 0; i < n; ++i) {
    const double x = double(a[sz(i)]);
    const double err = std::abs(double(g[sz(i)]) - gelu_exact(x)) / std::max(1.0, std::abs(x));
    if (err > worst) worst = err, worst_at = x;
  }
  INFO("worst scaled error " << worst << " at a = " << worst_at);
  REQUIRE(worst <= 1e-6);  // measured ≈ 1.8e-7 (at a ≈ 4.6)
  CHECK(worst > 0);
}

// ---------------------------------------------------------------------------------------------------------------------
// Rotary

TEMPLATE_TEST_CASE("rotary: inverse undoes forward / gradient is the inverse rotation", "[kernels][rotary][gradient]",
                   float, double) {
  using T = TestType;
  const Index heads = 3, dh = 8, Tn = 7, B = 2, N = B * Tn, W = heads * dh, offset = 5;
  for (Index rotary_dim : {2, 4, 8}) {
    cpu::RotaryTable<T> table(rotary_dim, 10000, 16);
    const auto x0 = random_values(N * W, 21);
    std::vector<T> x(x0.begin(), x0.end());
    table.apply(MatrixView<T>(x.data(), N, W), heads, dh, Tn, offset, false);
    // channels past rotary_dim pass through; the rotated ones moved
    double moved = 0;
    for (Index n = 0; n < N; ++n)
      for (Index h = 0; h < heads; ++h)
        for (Index d = 0; d < dh; ++d) {
          const auto i = sz(n * W + h * dh + d);
          if (d >= rotary_dim)
            REQUIRE(x[i] == T(x0[i]));
          else
            moved = std::max(moved, std::abs(double(x[i]) - x0[i]));
        }
    CHECK(moved > 0.1);
    table.apply(MatrixView<T>(x.data(), N, W), heads, dh, Tn, offset, true);
    CHECK(scaled_error({x.begin(), x.end()}, x0) < (std::is_same_v<T, float> ? 1e-6 : 1e-15));
  }
  if constexpr (std::is_same_v<T, double>) {
    cpu::RotaryTable<double> table(4, 10000, 16);
    auto x = random_values(N * W, 22);
    const auto R = random_values(N * W, 23);
    auto loss = [&] {
      auto y = x;
      table.apply(MatrixView<double>(y.data(), N, W), heads, dh, Tn, offset, false);
      double s = 0;
      for (std::size_t i = 0; i < y.size(); ++i) s += y[i] * R[i];
      return s;
    };
    auto grad = R;
    table.apply(MatrixView<double>(grad.data(), N, W), heads, dh, Tn, offset, true);
    std::vector<double*> px;
    for (auto& e : x) px.push_back(&e);
    XTR_REQUIRE_GRADIENT(check_gradient(px, grad, loss, "x"));
  }
}

TEST_CASE("rotary: the q·k score depends only on the relative position", "[kernels][rotary]") {
  const Index dh = 16, r = 16;
  cpu::RotaryTable<double> table(r, 10000, 8);
  table.ensure(400);  // also covers the table growth used past max_seq_len
  REQUIRE(table.positions() == 400);
  const auto q0 = random_values(dh, 31), k0 = random_values(dh, 32);
  auto score = [&](Index i, Index j) {
    auto q = q0, k = k0;
    table.apply(MatrixView<double>(q.data(), 1, dh), 1, dh, 1, i, false);
    table.apply(MatrixView<double>(k.data(), 1, dh), 1, dh, 1, j, false);
    double s = 0;
    for (Index d = 0; d < dh; ++d) s += q[d] * k[d];
    return s;
  };
  double qn = 0, kn = 0;
  for (Index d = 0; d < dh; ++d) qn += q0[d] * q0[d], kn += k0[d] * k0[d];
  const double norm = std::sqrt(qn * kn);
  // Angles are float32(pos) · float32(inv_freq) rounded to float32, as x-transformers computes them; each carries a
  // relative error ≤ 2^-24, so a score moves by at most ‖q‖‖k‖ · 2^-24 · (|angle_i| + |angle_j| + ...) — bound below.
  double spread = 0;
  for (Index i : {0, 3, 11})
    for (Index j : {0, 5, 11})
      for (Index s : {1, 7, 100, 300}) {
        const double a = score(i, j), b = score(i + s, j + s);
        const double tol = norm * 4.0 * double(i + j + 2 * s + 2) * std::ldexp(1.0, -24);
        INFO("i " << i << " j " << j << " shift " << s << ": " << a << " vs " << b);
        REQUIRE(std::abs(a - b) <= tol);
        spread = std::max(spread, std::abs(score(i, j) - score(i, j + 1)));
      }
  CHECK(spread > 1e-2 * norm);  // the score does depend on i − j
}

// ---------------------------------------------------------------------------------------------------------------------
// Embedding

TEST_CASE("embedding: forward gathers, backward equals a naive scatter-add", "[kernels][embedding]") {
  const Index V = 9, D = 130, Tn = 6, B = 3, N = B * Tn, P = 20, offset = 4;  // D spans three 64-column blocks
  const double s = 0.25;
  std::vector<std::int32_t> ids(sz(N));
  for (Index n = 0; n < N; ++n) ids[sz(n)] = std::int32_t((n * 5 + n / 4) % V);  // repeats
  auto table = random_values(V * D, 41), pos = random_values(P * D, 42);
  std::vector<double> x(sz(N * D));
  cpu::embedding_forward<double>(ids.data(), N, Tn, offset, MatrixView<double>(table.data(), V, D), pos.data(), s,
                                 MatrixView<double>(x.data(), N, D));
  for (Index n = 0; n < N; ++n)
    for (Index d = 0; d < D; ++d) REQUIRE(x[n * D + d] == table[ids[n] * D + d] + s * pos[(n % Tn + offset) * D + d]);

  auto dx = random_values(N * D, 43);
  std::vector<double> dtable = random_values(V * D, 44), dpos = random_values(P * D, 45);
  auto want_table = dtable, want_pos = dpos;
  for (Index n = 0; n < N; ++n)
    for (Index d = 0; d < D; ++d) {
      want_table[ids[n] * D + d] += dx[n * D + d];
      want_pos[(n % Tn) * D + d] += s * dx[n * D + d];
    }
  cpu::embedding_backward<double>(ids.data(), N, Tn, MatrixView<double>(dx.data(), N, D), dtable.data(), dpos.data(),
                                  s);
  CHECK(scaled_error(dtable, want_table) < 1e-15);
  CHECK(scaled_error(dpos, want_pos) < 1e-15);
  // without a position table only the token table changes
  auto dtable2 = random_values(V * D, 44);
  cpu::embedding_backward<double>(ids.data(), N, Tn, MatrixView<double>(dx.data(), N, D), dtable2.data(), nullptr, s);
  CHECK(scaled_error(dtable2, want_table) < 1e-15);
}

// ---------------------------------------------------------------------------------------------------------------------
// Cross-entropy

namespace {
double naive_cross_entropy(const std::vector<double>& z, const std::vector<std::int32_t>& y, std::int32_t ignore,
                           Index N, Index V) {
  double total = 0;
  Index count = 0;
  for (Index n = 0; n < N; ++n) {
    if (y[n] == ignore) continue;
    double sum = 0;
    for (Index v = 0; v < V; ++v) sum += std::exp(z[n * V + v]);
    total += std::log(sum) - z[n * V + y[n]];
    ++count;
  }
  return count ? total / double(count) : 0.0;
}
}  // namespace

TEST_CASE("cross-entropy: loss equals naive log-softmax / gradient matches finite differences / ignore_index",
          "[kernels][cross_entropy][gradient]") {
  const Index N = 70, V = 11;  // N > 64: the row loop runs threaded
  const std::int32_t ignore = -100;
  auto z = random_values(N * V, 51, 3.0);
  std::vector<std::int32_t> y(sz(N));
  for (Index n = 0; n < N; ++n) y[sz(n)] = (n % 6 == 2) ? ignore : std::int32_t((n * 7) % V);
  const double want = naive_cross_entropy(z, y, ignore, N, V);
  auto zf = std::vector<float>(z.begin(), z.end());
  {
    auto zc = z;
    const double loss =
        cpu::cross_entropy_forward_backward<double>(MatrixView<double>(zc.data(), N, V), y.data(), ignore, false);
    CHECK(std::abs(loss - want) < 1e-13 * std::max(1.0, want));
    CHECK(zc == z);  // no gradient asked: logits untouched
    const double lf =
        cpu::cross_entropy_forward_backward<float>(MatrixView<float>(zf.data(), N, V), y.data(), ignore, false);
    CHECK(std::abs(lf - want) < 1e-6 * std::max(1.0, want));
  }
  auto grad = z;
  cpu::cross_entropy_forward_backward<double>(MatrixView<double>(grad.data(), N, V), y.data(), ignore, true);
  for (Index n = 0; n < N; ++n)
    if (y[n] == ignore)
      for (Index v = 0; v < V; ++v) REQUIRE(grad[n * V + v] == 0.0);
  auto loss = [&] {
    auto zc = z;
    return cpu::cross_entropy_forward_backward<double>(MatrixView<double>(zc.data(), N, V), y.data(), ignore, false);
  };
  std::vector<double*> pz;
  for (auto& e : z) pz.push_back(&e);
  {
    const SerialOpenMP serial;
    XTR_REQUIRE_GRADIENT(check_gradient(pz, grad, loss, "logits"));
  }

  SECTION("large logits stay finite (the max is subtracted)") {
    auto big = z;
    for (auto& e : big) e += 1000;
    const double l =
        cpu::cross_entropy_forward_backward<double>(MatrixView<double>(big.data(), N, V), y.data(), ignore, true);
    CHECK(std::abs(l - want) < 1e-10);
    for (double e : big) REQUIRE(std::isfinite(e));
  }
  SECTION("an all-ignored batch gives loss 0 and a zero gradient") {
    std::vector<std::int32_t> all(sz(N), ignore);
    auto zc = z;
    const double l =
        cpu::cross_entropy_forward_backward<double>(MatrixView<double>(zc.data(), N, V), all.data(), ignore, true);
    CHECK(l == 0.0);
    for (double e : zc) REQUIRE(e == 0.0);
  }
}

TEMPLATE_TEST_CASE("norm with a plain gain and a bias: forward equals the formula / gradients match finite differences",
                   "[kernels][norm][gradient]", LayerNorm, RMSNorm) {
  // h = x̂ ⊙ γ + β (gain offset 0): the same as the unit-offset form with γ − 1, plus β
  const Index N = 9, D = 10;
  auto x = random_values(N * D, 11, 1.2);
  auto gamma = random_values(D, 12, 0.3), beta = random_values(D, 13, 0.5);
  for (auto& g : gamma) g += 1.0;
  const auto R = random_values(N * D, 14);
  auto run = [&] {
    std::vector<double> h(x.size());
    cpu::norm_forward<TestType, double>(MatrixView<double>(x.data(), N, D), {gamma.data(), 0.0, beta.data()},
                                        MatrixView<double>(h.data(), N, D), nullptr, nullptr);
    return h;
  };
  std::vector<double> gamma_minus_one = gamma;
  for (auto& g : gamma_minus_one) g -= 1.0;
  auto ref = naive_norm<TestType>(x, gamma_minus_one, N, D);
  for (Index n = 0; n < N; ++n)
    for (Index d = 0; d < D; ++d) ref[sz(n * D + d)] += beta[sz(d)];
  CHECK(scaled_error(run(), ref) < 1e-14);

  auto loss = [&] {
    const auto h = run();
    double s = 0;
    for (std::size_t i = 0; i < h.size(); ++i) s += h[i] * R[i];
    return s;
  };
  std::vector<double> h(x.size()), xhat(x.size()), rstd(sz(N)), dh = R;
  std::vector<double> dx(x.size(), 0.0), dgamma(sz(D), 0.0), dbeta(sz(D), 0.0);
  cpu::norm_forward<TestType, double>(MatrixView<double>(x.data(), N, D), {gamma.data(), 0.0, beta.data()},
                                      MatrixView<double>(h.data(), N, D), xhat.data(), rstd.data());
  Arena arena;
  cpu::norm_backward<TestType, double>(MatrixView<double>(dh.data(), N, D), xhat.data(), rstd.data(),
                                       {gamma.data(), 0.0, beta.data()}, MatrixView<double>(dx.data(), N, D),
                                       {dgamma.data(), dbeta.data()}, arena);
  std::vector<double*> px, pg, pb;
  for (auto& e : x) px.push_back(&e);
  for (auto& e : gamma) pg.push_back(&e);
  for (auto& e : beta) pb.push_back(&e);
  const SerialOpenMP serial;
  XTR_REQUIRE_GRADIENT(check_gradient(px, dx, loss, "x"));
  XTR_REQUIRE_GRADIENT(check_gradient(pg, dgamma, loss, "gamma"));
  XTR_REQUIRE_GRADIENT(check_gradient(pb, dbeta, loss, "beta"));
}

}  // namespace test_kernels
