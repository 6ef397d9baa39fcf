#pragma once
// The reference backend: every op of backend/ops.hpp as plain loops over the formula, written for obviousness: no
// Eigen, no threads, no tiling, no fusion beyond what the op's definition says. It is the oracle the CPU kernels are
// tested against (and a GPU backend's would be), as CUTLASS's host reference GEMMs are, and it proves the seam: a
// whole model runs on it unchanged (TransformerWrapper<Decoder<...>, Reference<double>>).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/weight_format.hpp"
#include "xtr/policies/concepts.hpp"

namespace xtr {

/// Plain loops in T (float or double).
template <class T>
struct Reference {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "xtr: Reference<T> takes float or double");
  using scalar = T;
  static constexpr std::string_view name = std::is_same_v<T, float> ? "Reference<float>" : "Reference<double>";
};

namespace reference {

/// act(a) and act'(a) of each activation tag, one value at a time.
template <class A>
struct Activation;
template <>
struct Activation<act::Gelu> {
  static double value(double a) { return 0.5 * a * (1 + std::erf(a / std::sqrt(2.0))); }
  static double derivative(double a) {
    return 0.5 * (1 + std::erf(a / std::sqrt(2.0))) + a * std::exp(-0.5 * a * a) / std::sqrt(2 * M_PI);
  }
};
template <>
struct Activation<act::Silu> {
  static double sigmoid(double a) { return 1 / (1 + std::exp(-a)); }
  static double value(double a) { return a * sigmoid(a); }
  static double derivative(double a) { return sigmoid(a) * (1 + a * (1 - sigmoid(a))); }
};
template <>
struct Activation<act::ReluSquared> {
  static double value(double a) { return a > 0 ? a * a : 0; }
  static double derivative(double a) { return a > 0 ? 2 * a : 0; }
};
template <>
struct Activation<act::Sigmoid> {
  static double value(double a) { return 1 / (1 + std::exp(-a)); }
  static double derivative(double a) { return value(a) * (1 - value(a)); }
};
template <>
struct Activation<void> {
  static double value(double a) { return a; }
  static double derivative(double) { return 1; }
};

inline double bf16_to_double(std::uint16_t h) { return xtr::detail::bf16_bits_to_float(h); }

/// W(o, i), from the float weights, their bfloat16 copy or their quantised copy (scale · q of core/weight_format.hpp).
template <class T>
double weight(const ops::Weights<T>& w, Index o, Index i) {
  if (w.quantized()) {
    const Index cols = w.w.cols, k = i % w.group, half = w.group / 2;
    const double s = xtr::detail::half_bits_to_float(w.scales[o * (cols / w.group) + i / w.group]);
    if (w.q8) return s * double(w.q8[o * cols + i]);
    const std::uint8_t byte = w.q4[(o * cols + i - k) / 2 + k % half];
    return s * double((k < half ? byte & 0xF : byte >> 4) - 8);
  }
  return w.bf16 ? bf16_to_double(w.bf16[o * w.w.cols + i]) : double(w.w(o, i));
}

inline bool dropped(const RandomStream& s, double p, std::uint64_t index) { return s.uniform(index) < float(p); }

}  // namespace reference

template <class T, class E>
struct kernel<Reference<T>, ops::Linear<E>> {
  using S = epilogue::Shape<E>;
  using A = typename S::activation;
  static_assert(epilogue::Expression<E>, "xtr: not an epilogue expression of backend/epilogue.hpp's grammar");

  static void forward(View<const T> x, const ops::Weights<T>& w, View<T> out, const epilogue::Operands<T>& o,
                      Arena& arena) {
    const Index N = x.rows, W = w.w.rows, F = epilogue::output_cols<E>(W);
    T* a = o.saved ? o.saved : arena.allocate<T>(N * W);
    std::vector<float> rounded;  // int8 activations: the values they stand for (core/weight_format.hpp)
    if (w.quantized() && w.int8_activations) {
      rounded.resize(std::size_t(N * x.cols));
      for (Index n = 0; n < N; ++n)
        for (Index i = 0; i < x.cols; ++i) rounded[std::size_t(n * x.cols + i)] = float(x(n, i));
      round_activations(rounded.data(), N, x.cols);
    }
    const auto input = [&](Index n, Index i) {
      return rounded.empty() ? double(x(n, i)) : double(rounded[std::size_t(n * x.cols + i)]);
    };
    for (Index n = 0; n < N; ++n)
      for (Index c = 0; c < W; ++c) {  // a = x Wᵀ + b
        double z = 0;
        for (Index i = 0; i < x.cols; ++i) z += input(n, i) * reference::weight(w, c, i);
        if (S::scaled) z *= double(o.scale);
        if (S::bias && o.bias) z += double(o.bias[c]);
        a[n * W + c] = T(z);
      }
    for (Index n = 0; n < N; ++n)
      for (Index c = 0; c < F; ++c) {
        double y = S::gated ? double(a[n * W + c]) * reference::Activation<A>::value(double(a[n * W + F + c]))
                            : reference::Activation<A>::value(double(a[n * W + c]));
        if (S::dropout && o.dropout > 0)
          y = reference::dropped(o.stream, o.dropout, std::uint64_t(n * F + c)) ? 0 : y / (1 - o.dropout);
        out(n, c) = S::add_to ? T(double(out(n, c)) + y) : T(y);
      }
  }

  static void backward(View<const T> dout, View<const T> x, View<const T> w, const epilogue::Operands<T>& o,
                       View<T> dx, bool accumulate_dx, T* dw, T* dbias, T alpha, Arena&, View<T> = {}) {
    const Index N = x.rows, W = w.rows, F = dout.cols, in = x.cols;
    std::vector<double> dz(static_cast<std::size_t>(N * W), 0.0);
    for (Index n = 0; n < N; ++n)
      for (Index c = 0; c < F; ++c) {
        double dy = double(dout(n, c));
        if (S::dropout && o.dropout > 0)
          dy = reference::dropped(o.stream, o.dropout, std::uint64_t(n * F + c)) ? 0 : dy / (1 - o.dropout);
        if constexpr (S::gated) {
          const double u = double(o.saved[n * W + c]), v = double(o.saved[n * W + F + c]);
          dz[std::size_t(n * W + c)] = dy * reference::Activation<A>::value(v);
          dz[std::size_t(n * W + F + c)] = dy * u * reference::Activation<A>::derivative(v);
        } else if constexpr (!std::is_void_v<A>) {
          dz[std::size_t(n * W + c)] = dy * reference::Activation<A>::derivative(double(o.saved[n * W + c]));
        } else {
          dz[std::size_t(n * W + c)] = dy;
        }
      }
    if (S::bias && dbias)
      for (Index c = 0; c < W; ++c) {
        double s = 0;
        for (Index n = 0; n < N; ++n) s += dz[std::size_t(n * W + c)];
        dbias[c] = T(double(dbias[c]) + double(alpha) * s);
      }
    if (S::scaled)  // z' = s · z: the products see s · dz
      for (auto& e : dz) e *= double(o.scale);
    if (dw)
      for (Index c = 0; c < W; ++c)
        for (Index i = 0; i < in; ++i) {
          double s = 0;
          for (Index n = 0; n < N; ++n) s += dz[std::size_t(n * W + c)] * double(x(n, i));
          dw[c * in + i] = T(double(dw[c * in + i]) + double(alpha) * s);
        }
    if (dx.data)
      for (Index n = 0; n < N; ++n)
        for (Index i = 0; i < in; ++i) {
          double s = 0;
          for (Index c = 0; c < W; ++c) s += dz[std::size_t(n * W + c)] * double(w(c, i));
          dx(n, i) = T((accumulate_dx ? double(dx(n, i)) : 0.0) + double(alpha) * s);
        }
  }
};

template <class T, class Norm>
struct kernel<Reference<T>, ops::Normalize<Norm>> {
  static double gain(const ops::NormWeights<T>& w, Index d) {
    if (Norm::gain == NormGain::none || !w.gain) return 1.0;
    return double(w.gain_offset) + double(w.gain[Norm::gain == NormGain::channel ? d : 0]);
  }
  static double root(double D) { return Norm::root_dim ? std::sqrt(D) : 1.0; }
  /// r of one row: 1/sqrt(var + ε) (mean-subtracting) or root/max(‖x‖, ε) (root = sqrt(D), or 1 for L2Norm).
  static double scale(const std::vector<double>& centred) {
    double sq = 0;
    for (double c : centred) sq += c * c;
    const double D = double(centred.size());
    return Norm::subtracts_mean ? 1 / std::sqrt(sq / D + Norm::eps) : root(D) / std::max(std::sqrt(sq), Norm::eps);
  }
  static void forward(View<const T> x, const T* residual, const ops::NormWeights<T>& w, View<T> h, bool accumulate,
                      T* xhat, T* rstd) {
    const Index D = x.cols;
    for (Index n = 0; n < x.rows; ++n) {
      std::vector<double> c(static_cast<std::size_t>(D));
      for (Index d = 0; d < D; ++d) c[std::size_t(d)] = double(x(n, d)) + (residual ? double(residual[n * x.ld + d]) : 0.0);
      double mean = 0;
      if (Norm::subtracts_mean) {
        for (double e : c) mean += e / double(D);
        for (double& e : c) e -= mean;
      }
      const double r = scale(c);
      for (Index d = 0; d < D; ++d) {
        const double xh = c[std::size_t(d)] * r;
        if (xhat) xhat[n * D + d] = T(xh);
        const double v = xh * gain(w, d) + (w.bias ? double(w.bias[d]) : 0.0);
        h(n, d) = T(accumulate ? double(h(n, d)) + v : v);
      }
      if (rstd) rstd[n] = T(r);
    }
  }
  static void backward(View<const T> dh, const T* xhat, const T* rstd, const ops::NormWeights<T>& w, View<T> dx,
                       const ops::NormGradients<T>& grads, Arena&) {
    const Index D = dh.cols;
    for (Index n = 0; n < dh.rows; ++n) {
      const double r = double(rstd[n]);
      std::vector<double> dxh(static_cast<std::size_t>(D));
      double mean_dxh = 0, mean_proj = 0;
      // x̂ has mean square 1 (LayerNorm, RMS norms) or norm 1 (L2Norm)
      const double proj_div = Norm::subtracts_mean || Norm::root_dim ? double(D) : 1.0;
      for (Index d = 0; d < D; ++d) {
        dxh[std::size_t(d)] = double(dh(n, d)) * gain(w, d);
        mean_dxh += dxh[std::size_t(d)] / double(D);
        mean_proj += dxh[std::size_t(d)] * double(xhat[n * D + d]) / proj_div;
        const double dgain = double(dh(n, d)) * double(xhat[n * D + d]);
        if (Norm::gain == NormGain::channel && grads.gain) grads.gain[d] = T(double(grads.gain[d]) + dgain);
        if (Norm::gain == NormGain::scalar && grads.gain) grads.gain[0] = T(double(grads.gain[0]) + dgain);
        if (grads.bias) grads.bias[d] = T(double(grads.bias[d]) + double(dh(n, d)));
      }
      if (!Norm::subtracts_mean) {
        mean_dxh = 0;
        if (r * Norm::eps >= root(double(D)) * (1 - 1e-6)) mean_proj = 0;  // the norm was clamped: linear
      }
      for (Index d = 0; d < D; ++d)
        dx(n, d) = T(double(dx(n, d)) + r * (dxh[std::size_t(d)] - mean_dxh - double(xhat[n * D + d]) * mean_proj));
    }
  }
};

template <class T>
struct kernel<Reference<T>, ops::Fill> {
  static void run(View<T> x, T value) {
    for (Index n = 0; n < x.rows; ++n)
      for (Index c = 0; c < x.cols; ++c) x(n, c) = value;
  }
};

template <class T>
struct kernel<Reference<T>, ops::Dropout> {
  static void run(View<T> x, double p, const RandomStream& stream) {
    if (p <= 0) return;
    for (Index n = 0; n < x.rows; ++n)
      for (Index c = 0; c < x.cols; ++c)
        x(n, c) = reference::dropped(stream, p, std::uint64_t(n * x.cols + c)) ? T(0) : T(double(x(n, c)) / (1 - p));
  }
};

template <class T>
struct kernel<Reference<T>, ops::Axpby> {
  static void run(View<const T> x, View<T> y, T alpha, T beta) {
    for (Index n = 0; n < y.rows; ++n)
      for (Index c = 0; c < y.cols; ++c)
        y(n, c) = T((beta == T(0) ? 0.0 : double(beta) * double(y(n, c))) + double(alpha) * double(x(n, c)));
  }
};

template <class T>
struct kernel<Reference<T>, ops::ScaleHeads> {
  static void forward(View<const T> x, const T* s, Index heads, View<T> y) {
    const Index dh = x.cols / heads;
    for (Index n = 0; n < x.rows; ++n)
      for (Index c = 0; c < x.cols; ++c) y(n, c) = T(double(x(n, c)) * double(s[c / dh]));
  }
  static void backward(View<const T> dy, View<const T> x, const T* s, Index heads, View<T> dx, T* ds) {
    const Index dh = x.cols / heads;
    for (Index n = 0; n < x.rows; ++n)
      for (Index c = 0; c < x.cols; ++c) {
        if (ds) ds[c / dh] = T(double(ds[c / dh]) + double(dy(n, c)) * double(x(n, c)));
        dx(n, c) = T(double(dy(n, c)) * double(s[c / dh]));
      }
  }
};

template <class T>
struct kernel<Reference<T>, ops::Multiply> {
  static void forward(View<const T> a, View<const T> b, View<T> y) {
    for (Index n = 0; n < a.rows; ++n)
      for (Index c = 0; c < a.cols; ++c) y(n, c) = T(double(a(n, c)) * double(b(n, c)));
  }
  /// da = dy ⊙ b, db = dy ⊙ a (either may be empty).
  static void backward(View<const T> dy, View<const T> a, View<const T> b, View<T> da, View<T> db) {
    for (Index n = 0; n < dy.rows; ++n)
      for (Index c = 0; c < dy.cols; ++c) {
        const double g = double(dy(n, c)), av = double(a(n, c)), bv = double(b(n, c));
        if (db.data) db(n, c) = T(g * av);
        if (da.data) da(n, c) = T(g * bv);
      }
  }
};

template <class T>
struct kernel<Reference<T>, ops::MixHeads> {
  static double lerp(double a, double b, double m) { return m < 0.5 ? a + m * (b - a) : b - (1 - m) * (b - a); }
  /// y = a + μ (b − a) per head (μ (N, heads), row stride mu_ld); y may be b.
  static void forward(View<const T> a, View<const T> b, const T* mu, Index mu_ld, Index heads, View<T> y) {
    const Index dh = a.cols / heads;
    for (Index n = 0; n < a.rows; ++n)
      for (Index c = 0; c < a.cols; ++c)
        y(n, c) = T(lerp(double(a(n, c)), double(b(n, c)), double(mu[n * mu_ld + c / dh])));
  }
  /// da += (1 − μ) dy, db = μ dy (db may be dy), dμ (N, heads) = Σ_channels dy ⊙ (b − a).
  static void backward(View<const T> dy, View<const T> a, View<const T> b, const T* mu, Index mu_ld, Index heads,
                       View<T> da, View<T> db, T* dmu) {
    const Index dh = a.cols / heads;
    for (Index n = 0; n < dy.rows; ++n) {
      if (dmu)
        for (Index h = 0; h < heads; ++h) dmu[n * heads + h] = T(0);
      for (Index c = 0; c < dy.cols; ++c) {
        const double m = double(mu[n * mu_ld + c / dh]), g = double(dy(n, c));
        if (dmu) dmu[n * heads + c / dh] = T(double(dmu[n * heads + c / dh]) + g * (double(b(n, c)) - double(a(n, c))));
        if (da.data) da(n, c) = T(double(da(n, c)) + (1 - m) * g);
        if (db.data) db(n, c) = T(m * g);
      }
    }
  }
};

template <class T, class A>
struct kernel<Reference<T>, ops::Activation<A>> {
  static void forward(View<const T> x, View<T> y) {
    for (Index n = 0; n < x.rows; ++n)
      for (Index c = 0; c < x.cols; ++c) y(n, c) = T(reference::Activation<A>::value(double(x(n, c))));
  }
  static void backward(View<const T> dy, View<const T> x, View<T> dx, bool accumulate) {
    for (Index n = 0; n < x.rows; ++n)
      for (Index c = 0; c < x.cols; ++c)
        dx(n, c) = T((accumulate ? double(dx(n, c)) : 0.0) +
                     double(dy(n, c)) * reference::Activation<A>::derivative(double(x(n, c))));
  }
};

template <class T>
struct kernel<Reference<T>, ops::Rotate> {
  struct Table {
    ops::RotarySpec spec;
    Index positions = 0;
  };
  static Table make_table(const ops::RotarySpec& spec, Index positions) { return {spec, positions}; }
  static void ensure(Table& table, Index positions) { table.positions = std::max(table.positions, positions); }
  static void apply(const Table& table, T* x, Index rows, Index row_stride, Index heads, Index dim_head, Index T_len,
                    Index offset, bool inverse, bool key) {
    const Index pairs = table.spec.dim / 2;
    for (Index n = 0; n < rows; ++n) {
      const Index pos = n % T_len + offset;
      for (Index h = 0; h < heads; ++h)
        for (Index i = 0; i < pairs; ++i) {
          const double angle = double(table.spec.angle(pos, i)) * (inverse ? -1 : 1);
          double sigma = table.spec.xpos_scale(pos, i);
          if (key) sigma = 1 / sigma;
          T* v = x + n * row_stride + h * dim_head + 2 * i;
          const double a = double(v[0]), b = double(v[1]);
          v[0] = T((a * std::cos(angle) - b * std::sin(angle)) * sigma);
          v[1] = T((b * std::cos(angle) + a * std::sin(angle)) * sigma);
        }
    }
  }
};

template <class T, class ScoreBias>
struct kernel<Reference<T>, ops::Attention<ScoreBias>> {
  using P = ops::AttentionProblem<T>;
  /// The score of query i with key column c (memory keys first), or −∞ when masked.
  static double score(const P& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k, Index b, Index h, Index i,
                      Index c) {
    const Index g = h % p.kv_heads, dh = p.dim_head;
    const bool memory = c < p.mem_len;
    const T* key = memory ? p.mem_k + c * p.memory_ld() + g * dh : k.at(b, c - p.mem_len, g, dh);
    double s = 0;
    for (Index d = 0; d < dh; ++d) s += double(q.at(b, i, h, dh)[d]) * double(key[d]);
    s *= double(p.scale);
    if (memory) return s;
    const Index j = c - p.mem_len;
    if (p.bias) s += double(p.bias[h * p.bias_stride + p.bias_zero + j - i - p.q_offset]);
    if ((p.causal && j > i + p.q_offset) || (p.key_mask && !p.key_mask[b * p.key_mask_stride + j]))
      return -std::numeric_limits<double>::infinity();
    return s;
  }
  static const T* value_row(const P& p, ops::HeadsView<const T> v, Index b, Index g, Index c) {
    return c < p.mem_len ? p.mem_v + c * p.memory_ld() + g * p.dim_head : v.at(b, c - p.mem_len, g, p.dim_head);
  }
  static double keep(const P& p, Index b, Index h, Index i, Index c) {
    if (p.dropout <= 0) return 1;
    const std::uint64_t index = ((std::uint64_t(b) * p.heads + h) * p.q_len + i) * (p.mem_len + p.k_len) + c;
    return reference::dropped(p.dropout_stream, p.dropout, index) ? 0 : 1 / (1 - p.dropout);
  }
  /// softmax probabilities of one query row over every key column (all 0 when nothing is visible or the query is
  /// padded).
  static std::vector<double> probabilities(const P& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k, Index b,
                                           Index h, Index i) {
    const Index width = p.mem_len + p.k_len;
    std::vector<double> s(static_cast<std::size_t>(width));
    double m = -std::numeric_limits<double>::infinity();
    for (Index c = 0; c < width; ++c) m = std::max(m, s[std::size_t(c)] = score(p, q, k, b, h, i, c));
    const bool padded = p.query_mask && !p.query_mask[b * p.query_mask_stride + i];
    if (m == -std::numeric_limits<double>::infinity() || padded) return std::vector<double>(std::size_t(width), 0.0);
    double sum = 0;
    for (auto& e : s) sum += (e = std::exp(e - m));
    for (auto& e : s) e /= sum;
    return s;
  }
  static void forward(const P& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k, ops::HeadsView<const T> v,
                      ops::HeadsView<T> o, T* lse, Arena&) {
    const Index dh = p.dim_head;
    for (Index b = 0; b < p.batch; ++b)
      for (Index h = 0; h < p.heads; ++h)
        for (Index i = 0; i < p.q_len; ++i) {
          const auto prob = probabilities(p, q, k, b, h, i);
          std::vector<double> out(static_cast<std::size_t>(dh), 0.0);
          bool any = false;
          for (Index c = 0; c < Index(prob.size()); ++c) {
            if (prob[std::size_t(c)] == 0) continue;
            any = true;
            const double w = prob[std::size_t(c)] * keep(p, b, h, i, c);
            const T* vr = value_row(p, v, b, h % p.kv_heads, c);
            for (Index d = 0; d < dh; ++d) out[std::size_t(d)] += w * double(vr[d]);
          }
          for (Index d = 0; d < dh; ++d) o.at(b, i, h, dh)[d] = T(out[std::size_t(d)]);
          if (lse) {  // log-sum-exp of the visible scores; +∞ when there is none (the CPU kernel's convention)
            double m = -std::numeric_limits<double>::infinity(), sum = 0;
            for (Index c = 0; c < p.mem_len + p.k_len; ++c) m = std::max(m, score(p, q, k, b, h, i, c));
            for (Index c = 0; c < p.mem_len + p.k_len; ++c) sum += std::exp(score(p, q, k, b, h, i, c) - m);
            lse[(b * p.heads + h) * p.q_len + i] = any ? T(m + std::log(sum)) : std::numeric_limits<T>::infinity();
          }
        }
  }
  static void backward(const P& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k, ops::HeadsView<const T> v,
                       ops::HeadsView<const T>, const T*, ops::HeadsView<const T> dout, ops::HeadsView<T> dq,
                       ops::HeadsView<T> dk, ops::HeadsView<T> dv, const ops::AttentionExtraGradients<T>& extra,
                       Arena&) {
    const Index dh = p.dim_head, width = p.mem_len + p.k_len;
    for (Index b = 0; b < p.batch; ++b)
      for (Index h = 0; h < p.heads; ++h) {
        const Index g = h % p.kv_heads;
        for (Index i = 0; i < p.q_len; ++i) {
          const auto prob = probabilities(p, q, k, b, h, i);
          const T* go = dout.at(b, i, h, dh);
          // dP_c = keep_c · dO · v_c;  dS_c = P_c (dP_c − Σ_c' P_c' dP_c')
          std::vector<double> dp(static_cast<std::size_t>(width), 0.0);
          double weighted = 0;
          for (Index c = 0; c < width; ++c) {
            if (prob[std::size_t(c)] == 0) continue;
            const T* vr = value_row(p, v, b, g, c);
            double s = 0;
            for (Index d = 0; d < dh; ++d) s += double(go[d]) * double(vr[d]);
            dp[std::size_t(c)] = s * keep(p, b, h, i, c);
            weighted += prob[std::size_t(c)] * dp[std::size_t(c)];
          }
          for (Index c = 0; c < width; ++c) {
            const double pc = prob[std::size_t(c)];
            if (pc == 0) continue;
            const bool memory = c < p.mem_len;
            const Index j = c - p.mem_len;
            // dV_c += P_c keep_c dO
            T* dvr = memory ? (extra.mem_v ? extra.mem_v + c * p.memory_ld() + g * dh : nullptr) : dv.at(b, j, g, dh);
            if (dvr)
              for (Index d = 0; d < dh; ++d) dvr[d] = T(double(dvr[d]) + pc * keep(p, b, h, i, c) * double(go[d]));
            const double ds = pc * (dp[std::size_t(c)] - weighted);
            const T* key = memory ? p.mem_k + c * p.memory_ld() + g * dh : k.at(b, j, g, dh);
            T* dkr = memory ? (extra.mem_k ? extra.mem_k + c * p.memory_ld() + g * dh : nullptr) : dk.at(b, j, g, dh);
            for (Index d = 0; d < dh; ++d) {
              dq.at(b, i, h, dh)[d] = T(double(dq.at(b, i, h, dh)[d]) + double(p.scale) * ds * double(key[d]));
              if (dkr) dkr[d] = T(double(dkr[d]) + double(p.scale) * ds * double(q.at(b, i, h, dh)[d]));
            }
            if (!memory && p.bias && extra.bias) {
              T& db = extra.bias[h * p.bias_stride + p.bias_zero + j - i - p.q_offset];
              db = T(double(db) + ds);
            }
          }
        }
      }
  }
};

template <class T>
struct kernel<Reference<T>, ops::Embedding> {
  static void forward(const std::int32_t* ids, Index N, Index T_len, Index offset, View<const T> table,
                      const T* positions, T position_scale, View<T> x) {
    for (Index n = 0; n < N; ++n)
      for (Index d = 0; d < x.cols; ++d)
        x(n, d) = T(double(table(ids[n], d)) +
                    (positions ? double(position_scale) * double(positions[(n % T_len + offset) * x.cols + d]) : 0.0));
  }
  static void backward(const std::int32_t* ids, Index N, Index T_len, View<const T> dx, T* dtable, T* dpositions,
                       T position_scale) {
    for (Index n = 0; n < N; ++n)
      for (Index d = 0; d < dx.cols; ++d) {
        dtable[ids[n] * dx.cols + d] += dx(n, d);
        if (dpositions) dpositions[(n % T_len) * dx.cols + d] += position_scale * dx(n, d);
      }
  }
};

template <class T>
struct kernel<Reference<T>, ops::SoftmaxCrossEntropy> {
  static double run(View<const T> logits, const std::int32_t* targets, std::int32_t ignore_index, T* dlogits,
                    T alpha = T(1)) {
    const Index N = logits.rows, V = logits.cols;
    Index count = 0;
    for (Index n = 0; n < N; ++n) count += targets[n] != ignore_index;
    double total = 0;
    for (Index n = 0; n < N; ++n) {
      if (targets[n] == ignore_index) {
        if (dlogits) std::fill_n(dlogits + n * V, V, T(0));
        continue;
      }
      double m = -std::numeric_limits<double>::infinity(), sum = 0;
      for (Index v = 0; v < V; ++v) m = std::max(m, double(logits(n, v)));
      for (Index v = 0; v < V; ++v) sum += std::exp(double(logits(n, v)) - m);
      const double lse = m + std::log(sum);
      total += lse - double(logits(n, targets[n]));
      if (dlogits)
        for (Index v = 0; v < V; ++v)
          dlogits[n * V + v] = T(double(alpha) * (std::exp(double(logits(n, v)) - lse) - (v == targets[n])) / double(count));
    }
    return count > 0 ? total / double(count) : 0.0;
  }
};

template <class T>
struct kernel<Reference<T>, ops::AdamWUpdate> {
  struct Coefficients {
    T step_size, decay, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, bias2_sqrt;
  };
  static void step(T* w, const T* g, T* m, T* v, Index n, const Coefficients& c) {
    for (Index i = 0; i < n; ++i) {
      m[i] = c.beta1 * m[i] + c.one_minus_beta1 * g[i];
      v[i] = c.beta2 * v[i] + c.one_minus_beta2 * g[i] * g[i];
      w[i] = w[i] * c.decay - c.step_size * m[i] / (std::sqrt(v[i]) / c.bias2_sqrt + c.eps);
    }
  }
};

}  // namespace xtr
