// The flash-attention tile algorithms of the CUDA backend (backend/cuda/tiles.hpp), checked on the CPU, no GPU needed:
//   the online softmax (absorb/update, merge, finish) against a one-pass softmax, in any grouping of the keys; rows
//   with every key masked; the split-KV combine of flash-decoding; the causal tile classification against the
//   element-wise mask (tile sizes that do not divide T, decoding offsets, key padding); the score-bias tiles against
//   the CPU backend's bias and mask tiles, ALiBi per element against the score-bias layer's table; and the tiled
//   forward, backward and split-KV decoding drivers (the kernels' schedule in plain loops) against the reference
//   backend's attention in fp64 (causal and bidirectional, key padding, GQA, head dims 32/64/128, T = 97 and 257,
//   score-bias table, memory keys, padded queries, dropout), in float and double.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "testing.hpp"
#include "xtr/backend/cpu/attention.hpp"
#include "xtr/backend/cuda/backend.hpp"
#include "xtr/backend/cuda/tiles.hpp"
#include "xtr/backend/reference/backend.hpp"
#include "xtr/layers/score_bias.hpp"
#include "xtr/policies/l2_norm.hpp"
#include "xtr/policies/layer_norm.hpp"
#include "xtr/policies/rms_norm.hpp"
#include "xtr/policies/scale_norm.hpp"
#include "xtr/policies/simple_rms_norm.hpp"

namespace test_cuda_tiles {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
namespace tiles = xtr::cuda::tiles;
using xtr::testing::random_values;

namespace {

constexpr double inf_v = std::numeric_limits<double>::infinity();
constexpr std::size_t sz(Index n) { return static_cast<std::size_t>(n); }

/// Error against the fp64 reference, as max |a − ref| / max(1, max |ref|) over a tensor (NaN or ∞ in a: +∞).
/// float: each output is a softmax-weighted sum of O(1) values over ≤ 257 keys (+ memory keys) in fp32, the online
/// rescaling adding a few roundings per key tile; the backward's dS = P ⊙ (dP − Δ) cancels and dK, dV sum over up to
/// 257 queries × 4 heads of a group. Measured worst (XTR_TILES_REPORT=1; GCC 12 -O2 -march=native, AVX-512): 7.4e-7
/// forward, 1.25e-6 backward (1.3e-6 forward with other seeds). double: 1.2e-15 forward, 1.5e-15 backward. The bounds
/// leave a 4-16x margin in float and 60x in double; a wrong term shows up at 1e-3 or more. merge: one row of ≤ 300
/// keys through a few merges and combine_splits (measured 5.1e-7 float, 1.2e-15 double).
template <class T>
struct TileTolerance;
template <>
struct TileTolerance<float> {
  static constexpr double forward = 5e-6, backward = 2e-5, merge = 2e-6;
};
template <>
struct TileTolerance<double> {
  static constexpr double forward = 1e-13, backward = 1e-13, merge = 1e-14;
};

double scaled_error(const std::vector<double>& a, const std::vector<double>& ref) {
  REQUIRE(a.size() == ref.size());
  double err = 0, scale = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return inf_v;
    err = std::max(err, std::abs(a[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return err / scale;
}

template <class T>
constexpr const char* precision_name = std::is_same_v<T, float> ? "float" : "double";

// ---------------------------------------------------------------------------------------------------------------------
// One row: online softmax against a one-pass softmax

/// softmax(scores) · V in double, and the log-sum-exp (+∞ when every score is −∞, with O = 0).
struct RowResult {
  std::vector<double> o;
  double lse = 0;
};
RowResult one_pass(const std::vector<double>& s, const std::vector<double>& v, int dim) {
  RowResult r{std::vector<double>(sz(dim), 0.0), inf_v};
  double m = -inf_v;
  for (double x : s) m = std::max(m, x);
  if (m == -inf_v) return r;
  double sum = 0;
  for (double x : s) sum += std::exp(x - m);
  for (std::size_t c = 0; c < s.size(); ++c)
    for (int d = 0; d < dim; ++d) r.o[sz(d)] += std::exp(s[c] - m) / sum * v[c * sz(dim) + sz(d)];
  r.lse = m + std::log(sum);
  return r;
}

/// Random scores (std 3, so rows are peaked) with about a fifth masked, and values.
struct Row {
  std::vector<double> s, v;
};
Row random_row(int n, int dim, std::uint64_t seed, double masked_fraction = 0.2) {
  Row r{random_values(n, seed, 3.0), random_values(Index(n) * dim, seed + 1)};
  const RandomStream coin{seed, 5};
  for (int c = 0; c < n; ++c)
    if (coin.uniform(std::uint64_t(c)) < masked_fraction) r.s[sz(c)] = -inf_v;
  return r;
}

/// The partial state of keys [a, b) of the row, absorbed in tiles of `tile` keys.
template <class T>
struct Partial {
  tiles::RowSoftmax<T> state;
  std::vector<T> o;
};
template <class T>
Partial<T> partial_state(const Row& row, int dim, int a, int b, int tile) {
  Partial<T> p{{}, std::vector<T>(sz(dim), T(0))};
  std::vector<T> s(sz(tile)), v(sz(tile) * sz(dim));
  for (int j0 = a; j0 < b; j0 += tile) {
    const int n = std::min(tile, b - j0);
    for (int c = 0; c < n; ++c) {
      s[sz(c)] = T(row.s[sz(j0 + c)]);
      for (int d = 0; d < dim; ++d) v[sz(c * dim + d)] = T(row.v[sz((j0 + c) * dim + d)]);
    }
    tiles::update(p.state, p.o.data(), s.data(), n, v.data(), dim, dim);
  }
  return p;
}

template <class T>
RowResult finished(Partial<T> p, int dim) {
  RowResult r;
  r.lse = double(tiles::finish(p.state, p.o.data(), dim));
  r.o.assign(p.o.begin(), p.o.end());
  return r;
}

template <class T>
void require_row_close(const RowResult& a, const RowResult& ref, double tol, const std::string& what) {
  INFO(what << " in " << precision_name<T>);
  CHECK(scaled_error(a.o, ref.o) <= tol);
  if (std::isinf(ref.lse)) {
    CHECK(a.lse == inf_v);
  } else {
    CHECK(std::abs(a.lse - ref.lse) <= tol * std::max(1.0, std::abs(ref.lse)));
  }
}

template <class T>
void check_online_softmax() {
  const int dim = 8;
  std::uint64_t seed = 10;
  for (int n : {1, 2, 63, 64, 65, 300}) {
    const Row row = random_row(n, dim, seed += 7);
    const RowResult ref = one_pass(row.s, row.v, dim);
    for (int tile : {1, 3, 16, 64, 500})
      require_row_close<T>(finished(partial_state<T>(row, dim, 0, n, tile), dim), ref, TileTolerance<T>::merge,
                           "n " + std::to_string(n) + " in tiles of " + std::to_string(tile));
    // Merging the partial states of any cut of the keys, in any grouping, gives the one-pass result.
    const RandomStream cuts{seed, 9};
    for (int trial = 0; trial < 6; ++trial) {
      std::vector<int> bounds{0, n};
      for (int c = 0; c < trial + 1; ++c) bounds.push_back(int(cuts.below(std::uint64_t(trial * 16 + c), std::uint64_t(n + 1))));
      std::sort(bounds.begin(), bounds.end());  // repeated bounds: empty parts
      std::vector<Partial<T>> parts;
      for (std::size_t p = 0; p + 1 < bounds.size(); ++p)
        parts.push_back(partial_state<T>(row, dim, bounds[p], bounds[p + 1], 5));
      Partial<T> left = parts.front();  // ((p0 ∪ p1) ∪ p2) ∪ ...
      for (std::size_t p = 1; p < parts.size(); ++p) tiles::merge(left.state, left.o.data(), parts[p].state, parts[p].o.data(), dim);
      Partial<T> right = parts.back();  // ... ∪ (p_{n−2} ∪ p_{n−1}), b merged into a copy of a
      for (std::size_t p = parts.size() - 1; p-- > 0;) {
        Partial<T> a = parts[p];
        tiles::merge(a.state, a.o.data(), right.state, right.o.data(), dim);
        right = a;
      }
      const std::string what = "n " + std::to_string(n) + ", " + std::to_string(parts.size()) + " parts";
      require_row_close<T>(finished(left, dim), ref, TileTolerance<T>::merge, what + " merged left to right");
      require_row_close<T>(finished(right, dim), ref, TileTolerance<T>::merge, what + " merged right to left");
      // combine_splits over the same parts: flash-decoding's reduction
      std::vector<T> m, l, o;
      for (const auto& p : parts) {
        m.push_back(p.state.m);
        l.push_back(p.state.l);
        o.insert(o.end(), p.o.begin(), p.o.end());
      }
      RowResult combined{std::vector<double>(sz(dim)), 0};
      for (int d = 0; d < dim; ++d)
        combined.o[sz(d)] = double(tiles::combine_splits(m.data(), l.data(), o.data() + d, dim, int(parts.size())));
      combined.lse = double(tiles::combine_splits_lse(m.data(), l.data(), int(parts.size())));
      require_row_close<T>(combined, ref, TileTolerance<T>::merge, what + " through combine_splits");
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Attention problems: inputs, the tiled drivers in T and the reference backend in fp64

enum class KeyMask { none, padding, empty_batch };

struct Case {
  Index batch = 2, heads = 4, kv_heads = 4, dim_head = 32, q_len = 1, k_len = 1, q_offset = 0;
  bool causal = false;
  KeyMask mask = KeyMask::none;
  bool query_mask = false, bias = false;
  Index mem_len = 0;
  double dropout = 0;
  tiles::TileShape tile{};
  [[nodiscard]] std::string str() const {
    std::ostringstream s;
    s << "B " << batch << " H " << heads << " KV " << kv_heads << " dh " << dim_head << " Tq " << q_len << " Tk "
      << k_len << " offset " << q_offset << (causal ? " causal" : " bidirectional") << " mask " << int(mask)
      << (query_mask ? " query mask" : "") << (bias ? " bias table" : "") << " mem " << mem_len << " dropout "
      << dropout << " tiles " << tile.q << "x" << tile.k;
    return s.str();
  }
  // operands are rows of wider buffers (3 extra columns): the drivers must honour the row strides
  [[nodiscard]] Index q_ld() const { return heads * dim_head + 3; }
  [[nodiscard]] Index kv_ld() const { return kv_heads * dim_head + 3; }
  [[nodiscard]] Index bias_zero() const { return q_offset + q_len - 1; }
  [[nodiscard]] Index bias_width() const { return bias_zero() + k_len; }
};

/// Inputs in double; key mask (batch, k_len), query mask (batch, q_len), bias table (heads, width), memory (mem_len,
/// kv_heads · dim_head).
struct Inputs {
  std::vector<double> q, k, v, dout, bias, mem_k, mem_v;
  std::vector<std::uint8_t> key_mask, query_mask;
};

Inputs make_inputs(const Case& c, std::uint64_t seed) {
  Inputs in;
  in.q = random_values(c.batch * c.q_len * c.q_ld(), seed);
  in.k = random_values(c.batch * c.k_len * c.kv_ld(), seed + 1);
  in.v = random_values(c.batch * c.k_len * c.kv_ld(), seed + 2);
  in.dout = random_values(c.batch * c.q_len * c.q_ld(), seed + 3);
  if (c.bias) in.bias = random_values(c.heads * c.bias_width(), seed + 4);
  if (c.mem_len) {
    in.mem_k = random_values(c.mem_len * c.kv_heads * c.dim_head, seed + 5);
    in.mem_v = random_values(c.mem_len * c.kv_heads * c.dim_head, seed + 6);
  }
  const RandomStream coin{seed, 77};
  if (c.mask != KeyMask::none) {
    in.key_mask.assign(sz(c.batch * c.k_len), 1);
    for (Index j = 0; j < c.k_len; ++j) {
      // batch 0: a fifth of the keys masked, in runs (whole key tiles masked too); the last batch: with
      // empty_batch every key masked, else like batch 0
      in.key_mask[sz(j)] = coin.uniform(std::uint64_t(j / 5)) < 0.2 ? 0 : 1;
      for (Index b = 1; b < c.batch; ++b)
        in.key_mask[sz(b * c.k_len + j)] =
            c.mask == KeyMask::empty_batch && b == c.batch - 1 ? 0 : (coin.uniform(std::uint64_t(1000 + j)) < 0.2 ? 0 : 1);
    }
  }
  if (c.query_mask) {
    in.query_mask.assign(sz(c.batch * c.q_len), 1);
    for (Index i = 0; i < c.batch * c.q_len; ++i) in.query_mask[sz(i)] = coin.uniform(std::uint64_t(5000 + i)) < 0.25 ? 0 : 1;
  }
  return in;
}

template <class T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

/// The live entries (b, t, h, d) of a (batch, length, heads · dim_head) operand rows `ld` apart.
template <class T>
std::vector<double> live(const std::vector<T>& x, Index batch, Index length, Index width, Index ld) {
  std::vector<double> r;
  for (Index n = 0; n < batch * length; ++n)
    for (Index c = 0; c < width; ++c) r.push_back(double(x[sz(n * ld + c)]));
  return r;
}

struct Outputs {
  std::vector<double> o, lse, dq, dk, dv, dbias, dmem_k, dmem_v;
};

/// Operands in T and the problem over them.
template <class T>
struct Operands {
  std::vector<T> q, k, v, dout, bias, mem_k, mem_v, o, dq, dk, dv, lse, dbias, dmem_k, dmem_v;
  ops::AttentionProblem<T> p;
  Operands(const Case& c, const Inputs& in)
      : q(cast<T>(in.q)), k(cast<T>(in.k)), v(cast<T>(in.v)), dout(cast<T>(in.dout)), bias(cast<T>(in.bias)),
        mem_k(cast<T>(in.mem_k)), mem_v(cast<T>(in.mem_v)), o(q.size(), T(0)), dq(q.size(), T(0)),
        dk(k.size(), T(0)), dv(v.size(), T(0)), lse(sz(c.batch * c.heads * c.q_len), T(0)),
        dbias(bias.size(), T(0)), dmem_k(mem_k.size(), T(0)), dmem_v(mem_v.size(), T(0)) {
    p.batch = c.batch;
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
    p.query_mask = in.query_mask.empty() ? nullptr : in.query_mask.data();
    p.query_mask_stride = c.q_len;
    p.dropout = c.dropout;
    p.dropout_stream = RandomStream{2024, 1}.fork(3);
    p.bias = bias.empty() ? nullptr : bias.data();
    p.bias_stride = c.bias_width();
    p.bias_zero = c.bias_zero();
    p.mem_len = c.mem_len;
    p.mem_k = mem_k.empty() ? nullptr : mem_k.data();
    p.mem_v = mem_v.empty() ? nullptr : mem_v.data();
  }
  [[nodiscard]] ops::HeadsView<const T> cq(const Case& c, const std::vector<T>& x) const {
    return {x.data(), c.q_len * c.q_ld(), c.q_ld()};
  }
  [[nodiscard]] ops::HeadsView<const T> ck(const Case& c, const std::vector<T>& x) const {
    return {x.data(), c.k_len * c.kv_ld(), c.kv_ld()};
  }
  ops::HeadsView<T> mq(const Case& c, std::vector<T>& x) { return {x.data(), c.q_len * c.q_ld(), c.q_ld()}; }
  ops::HeadsView<T> mk(const Case& c, std::vector<T>& x) { return {x.data(), c.k_len * c.kv_ld(), c.kv_ld()}; }
  [[nodiscard]] ops::AttentionExtraGradients<T> extra() {
    return {dbias.empty() ? nullptr : dbias.data(), dmem_k.empty() ? nullptr : dmem_k.data(),
            dmem_v.empty() ? nullptr : dmem_v.data()};
  }
  [[nodiscard]] Outputs outputs(const Case& c) const {
    Outputs r;
    r.o = live(o, c.batch, c.q_len, c.heads * c.dim_head, c.q_ld());
    r.lse.assign(lse.begin(), lse.end());
    r.dq = live(dq, c.batch, c.q_len, c.heads * c.dim_head, c.q_ld());
    r.dk = live(dk, c.batch, c.k_len, c.kv_heads * c.dim_head, c.kv_ld());
    r.dv = live(dv, c.batch, c.k_len, c.kv_heads * c.dim_head, c.kv_ld());
    r.dbias.assign(dbias.begin(), dbias.end());
    r.dmem_k.assign(dmem_k.begin(), dmem_k.end());
    r.dmem_v.assign(dmem_v.begin(), dmem_v.end());
    return r;
  }
};

/// The reference backend (plain loops over the definition, fp64).
Outputs reference_attention(const Case& c, const Inputs& in) {
  Operands<double> x(c, in);
  using Ref = kernel<Reference<double>, ops::Attention<NoScoreBias>>;
  Arena arena;
  Ref::forward(x.p, x.cq(c, x.q), x.ck(c, x.k), x.ck(c, x.v), x.mq(c, x.o), x.lse.data(), arena);
  Ref::backward(x.p, x.cq(c, x.q), x.ck(c, x.k), x.ck(c, x.v), x.cq(c, x.o), x.lse.data(), x.cq(c, x.dout),
                x.mq(c, x.dq), x.mk(c, x.dk), x.mk(c, x.dv), x.extra(), arena);
  return x.outputs(c);
}

/// The tiled drivers in T: forward, then backward from its O and lse.
template <class T>
Outputs tiled(const Case& c, const Inputs& in) {
  Operands<T> x(c, in);
  tiles::forward(x.p, x.cq(c, x.q), x.ck(c, x.k), x.ck(c, x.v), x.mq(c, x.o), x.lse.data(), c.tile);
  tiles::backward(x.p, x.cq(c, x.q), x.ck(c, x.k), x.ck(c, x.v), x.cq(c, x.o), x.lse.data(), x.cq(c, x.dout),
                  x.mq(c, x.dq), x.mk(c, x.dk), x.mk(c, x.dv), x.extra(), c.tile);
  return x.outputs(c);
}

/// lse: +∞ exactly where the reference has +∞ (nothing visible, padded query), close elsewhere.
void require_lse_close(const std::vector<double>& a, const std::vector<double>& ref, double tol) {
  REQUIRE(a.size() == ref.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO("lse[" << i << "] = " << a[i] << ", reference " << ref[i]);
    if (std::isinf(ref[i])) {
      REQUIRE(a[i] == inf_v);
    } else {
      REQUIRE(std::abs(a[i] - ref[i]) <= 10 * tol * std::max(1.0, std::abs(ref[i])));
    }
  }
}

struct Worst {
  double forward[2] = {0, 0}, backward[2] = {0, 0};
};

template <class T>
void compare_tiled(const Case& c, const Inputs& in, const Outputs& ref, Worst& worst) {
  const Outputs run = tiled<T>(c, in);
  INFO(c.str() << " in " << precision_name<T>);
  const double e_o = scaled_error(run.o, ref.o);
  double e_b = std::max({scaled_error(run.dq, ref.dq), scaled_error(run.dk, ref.dk), scaled_error(run.dv, ref.dv)});
  if (c.bias) e_b = std::max(e_b, scaled_error(run.dbias, ref.dbias));
  if (c.mem_len) e_b = std::max({e_b, scaled_error(run.dmem_k, ref.dmem_k), scaled_error(run.dmem_v, ref.dmem_v)});
  INFO("forward error " << e_o << ", backward error " << e_b);
  CHECK(e_o <= TileTolerance<T>::forward);
  CHECK(e_b <= TileTolerance<T>::backward);
  require_lse_close(run.lse, ref.lse, TileTolerance<T>::forward);
  const int k = std::is_same_v<T, float> ? 0 : 1;
  worst.forward[k] = std::max(worst.forward[k], e_o);
  worst.backward[k] = std::max(worst.backward[k], e_b);
}

/// The worst errors of a test, printed with XTR_TILES_REPORT=1 (what the tolerance table's measurements come from).
void report(const char* what, const Worst& w) {
  if (!std::getenv("XTR_TILES_REPORT")) return;
  std::printf("%-20s worst scaled error: float forward %.3g backward %.3g, double forward %.3g backward %.3g\n", what,
              w.forward[0], w.backward[0], w.forward[1], w.backward[1]);
}

void compare_both(const Case& c, std::uint64_t seed, Worst& worst) {
  const Inputs in = make_inputs(c, seed);
  const Outputs ref = reference_attention(c, in);
  compare_tiled<float>(c, in, ref, worst);
  compare_tiled<double>(c, in, ref, worst);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda tiles: online softmax in key tiles, merged in any grouping or combined as splits, equals one pass",
                   "[cuda][tiles]", float, double) {
  check_online_softmax<TestType>();
}

TEMPLATE_TEST_CASE("cuda tiles: a row with every key masked gives O = 0 and lse = +inf, and an empty part changes nothing",
                   "[cuda][tiles]", float, double) {
  using T = TestType;
  const int dim = 4;
  const Row masked = random_row(70, dim, 3, 1.0);  // every score −∞
  for (int tile : {1, 16, 64}) {
    Partial<T> p = partial_state<T>(masked, dim, 0, 70, tile);
    CHECK(p.state.l == T(0));
    CHECK(p.state.m == -tiles::infinity<T>());
    const RowResult r = finished(p, dim);
    CHECK(r.lse == inf_v);
    for (double x : r.o) CHECK(x == 0.0);
  }
  // merge(a, empty) and merge(empty, a) are a, bit for bit; two empty parts stay empty
  const Row row = random_row(50, dim, 4);
  const Partial<T> a = partial_state<T>(row, dim, 0, 50, 16), empty = partial_state<T>(masked, dim, 0, 70, 16);
  Partial<T> x = a, y = empty, z = empty;
  tiles::merge(x.state, x.o.data(), empty.state, empty.o.data(), dim);
  tiles::merge(y.state, y.o.data(), a.state, a.o.data(), dim);
  tiles::merge(z.state, z.o.data(), empty.state, empty.o.data(), dim);
  CHECK(x.state.m == a.state.m);
  CHECK(x.state.l == a.state.l);
  CHECK(x.o == a.o);
  CHECK(y.state.m == a.state.m);
  CHECK(y.state.l == a.state.l);
  CHECK(y.o == a.o);
  CHECK(z.state.l == T(0));
  CHECK(z.state.m == -tiles::infinity<T>());
  // combine_splits with every split empty: O = 0, lse = +∞ (finish's convention), no NaN
  const T m[3] = {-tiles::infinity<T>(), -tiles::infinity<T>(), -tiles::infinity<T>()}, l[3] = {0, 0, 0},
          o[3] = {0, 0, 0};
  CHECK(tiles::combine_splits(m, l, o, 1, 3) == T(0));
  CHECK(tiles::combine_splits_lse(m, l, 3) == tiles::infinity<T>());
  // the backward's probability from lse = +∞ is 0 for masked and finite scores alike
  CHECK(tiles::probability_from_lse(-tiles::infinity<T>(), tiles::infinity<T>()) == T(0));
  CHECK(tiles::probability_from_lse(T(3), tiles::infinity<T>()) == T(0));
}

TEST_CASE("cuda tiles: split ranges cover the keys once, in order", "[cuda][tiles]") {
  for (Index n : {0, 1, 5, 97, 1024})
    for (int splits : {1, 2, 3, 7, 16, 2000}) {
      Index next = 0;
      for (int s = 0; s < splits; ++s) {
        std::int64_t a = -1, b = -1;
        tiles::split_range(n, splits, s, &a, &b);
        INFO("n " << n << " splits " << splits << " split " << s << ": [" << a << ", " << b << ")");
        REQUIRE(a <= b);
        if (a < b) REQUIRE(a == next);
        if (a < b) next = b;
      }
      REQUIRE(next == n);
    }
}

TEST_CASE("cuda tiles: the dropout draw picked without indexing equals RandomStream::uniform", "[cuda][tiles]") {
  std::int64_t mismatches = 0;
  for (const RandomStream rng : {RandomStream{0, 0}, RandomStream{2024, 1}.fork(3), RandomStream{7, 1}.from(4 * 9 + 3)})
    for (std::uint64_t i = 0; i < 4099; ++i) mismatches += tiles::uniform_draw(rng, i) != rng.uniform(i);
  REQUIRE(mismatches == 0);
}

TEST_CASE("cuda tiles: tile classification agrees with the element-wise causal and key masks", "[cuda][tiles]") {
  // every (query tile, key tile) pair of many tile sizes, lengths not divisible by them, and decoding offsets
  std::vector<std::uint8_t> mask;
  std::int64_t pairs = 0, counts[3] = {0, 0, 0}, failures = 0;
  std::string first_failure;
  for (bool causal : {true, false})
    for (bool padding : {false, true})
      for (Index q_len : {1, 5, 64, 97})
        for (Index extra_keys : {0, 1, 17, 100}) {
          ops::AttentionProblem<float> p;
          p.batch = 2;
          p.q_len = q_len;
          p.k_len = q_len + extra_keys;
          p.q_offset = extra_keys;  // queries are the last positions, as when decoding with a cache
          p.causal = causal;
          mask.assign(sz(2 * p.k_len), 1);
          if (padding) {
            const RandomStream coin{std::uint64_t(q_len * 131 + extra_keys), 3};
            for (Index j = 0; j < p.k_len; ++j) {
              mask[sz(j)] = coin.uniform(std::uint64_t(j / 7)) < 0.3 ? 0 : 1;  // runs of 7: whole tiles masked too
              mask[sz(p.k_len + j)] = j >= p.k_len / 2 ? 0 : 1;               // right padding
            }
            p.key_mask = mask.data();
            p.key_mask_stride = p.k_len;
          }
          for (Index bq : {1, 3, 16, 64})
            for (Index bk : {1, 5, 32, 64})
              for (Index b = 0; b < 2; ++b)
                for (Index i0 = 0; i0 < p.q_len; i0 += bq)
                  for (Index j0 = 0; j0 < p.k_len; j0 += bk) {
                    const Index rows = std::min(bq, p.q_len - i0), cols = std::min(bk, p.k_len - j0);
                    Index shown = 0, causal_shown = 0;
                    for (Index i = i0; i < i0 + rows; ++i)
                      for (Index j = j0; j < j0 + cols; ++j) {
                        shown += tiles::visible(p, b, i, j);
                        causal_shown += !causal || j <= i + p.q_offset;
                      }
                    const auto kind = tiles::classify(p, b, i0, rows, j0, cols);
                    const auto geometric = tiles::classify_causal(causal, p.q_offset, i0, rows, j0, cols);
                    const bool all = shown == rows * cols, none = shown == 0;
                    const bool ok =
                        // the causal geometry alone is exact
                        (geometric == tiles::TileKind::masked) == (causal_shown == 0) &&
                        (geometric == tiles::TileKind::visible) == (causal_shown == rows * cols) &&
                        // with the key mask: masked ⇒ nothing visible, visible ⇔ everything visible
                        (kind != tiles::TileKind::masked || none) && (kind == tiles::TileKind::visible) == all &&
                        (padding || kind == geometric) &&
                        // key_end and first_query bound the tiles a kernel loops over
                        (j0 < tiles::key_end(p, i0, rows) || causal_shown == 0) &&
                        (i0 + rows > tiles::first_query(p, j0) || causal_shown == 0);
                    if (!ok && failures++ == 0) {
                      std::ostringstream s;
                      s << "causal " << causal << " padding " << padding << " Tq " << p.q_len << " Tk " << p.k_len
                        << " tile " << bq << "x" << bk << " at (" << i0 << ", " << j0 << ") batch " << b << ": kind "
                        << int(kind) << ", causal kind " << int(geometric) << ", " << shown << " of " << rows * cols
                        << " visible (" << causal_shown << " by the causal mask)";
                      first_failure = s.str();
                    }
                    ++pairs;
                    ++counts[int(kind)];
                  }
        }
  INFO("first wrong classification: " << first_failure);
  REQUIRE(failures == 0);
  INFO(pairs << " pairs: " << counts[0] << " masked, " << counts[1] << " visible, " << counts[2] << " partial");
  CHECK(counts[0] > 1000);  // every kind occurs often
  CHECK(counts[1] > 1000);
  CHECK(counts[2] > 1000);
}

TEMPLATE_TEST_CASE("cuda tiles: score-bias tiles equal the CPU backend's bias and mask tiles", "[cuda][tiles]", float,
                   double) {
  using T = TestType;
  // a (query tile, key tile) pair at a time, through modify_tile and through cpu::detail::bias_tile + mask_tile
  const Index heads = 3;
  std::int64_t compared = 0, wrong = 0;
  std::string first;
  for (Index q_offset : {0, 7, 64})
    for (bool causal : {true, false}) {
      ops::AttentionProblem<T> p;
      p.batch = 2;
      p.heads = heads;
      p.q_len = 70;
      p.k_len = p.q_len + q_offset;
      p.q_offset = q_offset;
      p.causal = causal;
      p.bias_zero = q_offset + p.q_len - 1;
      p.bias_stride = p.bias_zero + p.k_len;
      const auto table = cast<T>(random_values(heads * p.bias_stride, std::uint64_t(40 + q_offset)));
      p.bias = table.data();
      std::vector<std::uint8_t> mask(sz(2 * p.k_len), 1);
      for (Index j = 0; j < 2 * p.k_len; ++j) mask[sz(j)] = (j * 7919) % 5 == 0 ? 0 : 1;
      p.key_mask = mask.data();
      p.key_mask_stride = p.k_len;
      for (Index bq : {16, 64})
        for (Index bk : {13, 64})
          for (Index b = 0; b < 2; ++b)
            for (Index h = 0; h < heads; ++h)
              for (Index i0 = 0; i0 < p.q_len; i0 += bq)
                for (Index j0 = 0; j0 < p.k_len; j0 += bk) {
                  const Index rows = std::min(bq, p.q_len - i0), cols = std::min(bk, p.k_len - j0);
                  const auto scores = cast<T>(random_values(rows * cols, std::uint64_t(i0 * 1000 + j0)));
                  RowMatrix<T> cpu = Eigen::Map<const RowMatrix<T>>(scores.data(), rows, cols);
                  cpu::detail::bias_tile(p, h, i0, j0, cpu);
                  cpu::detail::mask_tile(p, b, i0, j0, cpu);
                  std::vector<T> mine = scores;
                  const auto kind = tiles::classify(p, b, i0, rows, j0, cols);
                  // a masked tile is skipped by a kernel: the CPU's tile is −∞ throughout
                  if (kind == tiles::TileKind::masked) std::fill(mine.begin(), mine.end(), -tiles::infinity<T>());
                  else tiles::modify_tile(p, kind, b, h, i0, j0, int(rows), int(cols), mine.data(), cols);
                  for (Index e = 0; e < rows * cols; ++e)
                    if (mine[sz(e)] != cpu.data()[e] && wrong++ == 0) {  // the same additions: bit for bit
                      std::ostringstream s;
                      s << "offset " << q_offset << (causal ? " causal" : "") << " tile " << bq << "x" << bk << " at ("
                        << i0 << ", " << j0 << ") batch " << b << " head " << h << " element " << e << ": "
                        << mine[sz(e)] << " vs the CPU's " << cpu.data()[e];
                      first = s.str();
                    }
                  ++compared;
                }
    }
  INFO(compared << " tiles compared; first difference: " << first);
  REQUIRE(wrong == 0);
  CHECK(compared > 100);
}

TEMPLATE_TEST_CASE("cuda tiles: ALiBi per element equals the score-bias layer's table", "[cuda][tiles]", float, double) {
  using T = TestType;
  for (Index alibi_heads : {0, 5}) {  // all heads, and the first 5 of 8 (slopes interleaved: 5 is no power of two)
    LayersConfig L;
    L.dim = 32;
    L.depth = 1;
    L.heads = 8;
    L.dim_head = 4;
    L.alibi.num_heads = alibi_heads;
    ParameterStore<T> store;
    ScoreBiasLayer<ALiBi, Reference<T>> layer;
    layer.declare(store, "", L, true);
    Arena arena;
    Pass<Reference<T>> pass{arena, store};
    for (Index q_offset : {0, 9}) {
      const Index q_len = 13, k_len = q_len + q_offset;
      const auto table = layer.forward(pass, q_len, k_len, q_offset);
      const auto slopes = ALiBi::slopes(alibi_heads ? alibi_heads : L.heads);
      ops::AttentionProblem<T> p;
      p.q_offset = q_offset;
      p.bias = table.table;
      p.bias_stride = table.width;
      p.bias_zero = table.zero;
      for (Index h = 0; h < L.heads; ++h) {
        const T slope = h < Index(slopes.size()) ? T(slopes[sz(h)]) : T(0);
        for (Index i = 0; i < q_len; ++i)
          for (Index j = 0; j < k_len; ++j) {
            INFO("head " << h << " query " << i << " key " << j << " offset " << q_offset);
            REQUIRE(tiles::alibi_bias(slope, i, j, q_offset) == tiles::table_bias(p, h, i, j));
          }
      }
    }
  }
}

TEST_CASE("cuda tiles: tiled forward and backward equal the reference attention (masks, GQA, head dims, odd T)",
          "[cuda][tiles]") {
  Worst worst;
  std::uint64_t seed = 1000;
  const tiles::TileShape shapes[] = {{64, 64}, {16, 32}, {32, 16}, {7, 13}};
  int shape = 0;
  for (bool causal : {true, false})
    for (KeyMask mask : {KeyMask::none, KeyMask::padding})
      for (Index dh : {32, 64, 128})
        for (Index T : {97, 257}) {
          // time: T = 257 with one batch row and two heads, dh 128 only once per causal mode
          if (T == 257 && dh == 128 && mask == KeyMask::none) continue;
          Case c;
          c.batch = T == 257 || mask == KeyMask::none ? 1 : 2;  // two batch rows where their masks differ
          c.heads = T == 257 ? 2 : 4;
          c.kv_heads = T == 257 ? (dh == 64 ? 1 : 2) : (dh == 32 ? 4 : (dh == 64 ? 2 : 1));  // GQA: 2 and 4 per kv head
          c.dim_head = dh;
          c.q_len = c.k_len = T;
          c.causal = causal;
          c.mask = mask;
          c.tile = shapes[shape++ % 4];
          compare_both(c, seed++, worst);
        }
  INFO("worst scaled error, float: forward " << worst.forward[0] << ", backward " << worst.backward[0]
                                             << "; double: forward " << worst.forward[1] << ", backward "
                                             << worst.backward[1]);
  CHECK(worst.forward[0] > 1e-9);  // float is not secretly double: the comparison can fail
  report("tiled vs reference", worst);
}

TEST_CASE("cuda tiles: tiled attention with every modifier equals the reference (bias table, memory keys, padded "
          "queries, dropout, decoding offsets, empty rows)",
          "[cuda][tiles]") {
  Worst worst;
  std::uint64_t seed = 2000;
  for (bool causal : {true, false})
    for (Index q_len : {1, 3, 70})
      for (int variant = 0; variant < 3; ++variant) {
        Case c;
        c.heads = 4;
        c.kv_heads = variant == 1 ? 2 : 4;
        c.dim_head = 32;
        c.q_len = q_len;
        c.k_len = q_len == 70 ? 97 : 70;
        c.q_offset = variant == 2 ? 5 : c.k_len - c.q_len;  // 5: later keys stay invisible to causal queries
        c.causal = causal;
        c.mask = variant == 0 ? KeyMask::empty_batch : KeyMask::padding;
        c.query_mask = variant != 1;
        c.bias = true;
        c.mem_len = variant == 1 ? 0 : 3;
        c.dropout = variant == 2 ? 0.2 : 0.0;
        c.tile = {16, 32};
        compare_both(c, seed++, worst);
      }
  CHECK(worst.forward[0] > 1e-9);
  report("every modifier", worst);
}

TEST_CASE("cuda tiles: every key masked gives zero output, +inf lse and zero, finite gradients", "[cuda][tiles]") {
  for (bool causal : {false, true}) {
    Case c;
    c.q_len = c.k_len = 40;
    c.causal = causal;
    c.mask = KeyMask::empty_batch;  // batch 1: every key masked
    c.tile = {16, 16};
    const Inputs in = make_inputs(c, 31);
    const Outputs run = tiled<float>(c, in);
    const Index per_q = c.q_len * c.heads * c.dim_head, per_k = c.k_len * c.kv_heads * c.dim_head;
    for (Index i = 0; i < per_q; ++i) {
      REQUIRE(run.o[sz(per_q + i)] == 0.0);
      REQUIRE(run.dq[sz(per_q + i)] == 0.0);
    }
    for (Index i = 0; i < per_k; ++i) {
      REQUIRE(run.dk[sz(per_k + i)] == 0.0);
      REQUIRE(run.dv[sz(per_k + i)] == 0.0);
    }
    for (Index i = c.heads * c.q_len; i < 2 * c.heads * c.q_len; ++i) REQUIRE(run.lse[sz(i)] == inf_v);
    for (const auto* x : {&run.o, &run.dq, &run.dk, &run.dv})
      for (double e : *x) REQUIRE(std::isfinite(e));
  }
}

TEST_CASE("cuda tiles: split-KV decoding equals the reference for any number of splits", "[cuda][tiles]") {
  double worst[2] = {0, 0};
  std::uint64_t seed = 3000;
  for (bool causal : {true, false})
    for (Index q_len : {1, 3})
      for (Index k_len : {1, 97, 300})
        for (int splits : {1, 2, 5, 16, 400}) {
          Case c;
          c.heads = 4;
          c.kv_heads = 2;
          c.dim_head = 64;
          c.q_len = q_len;
          c.k_len = std::max(k_len, q_len);
          c.q_offset = c.k_len - c.q_len;
          c.causal = causal;
          c.mask = k_len > 1 ? KeyMask::padding : KeyMask::none;
          c.bias = splits == 5;
          c.mem_len = splits == 2 ? 2 : 0;
          c.query_mask = splits == 16;
          const Inputs in = make_inputs(c, seed++);
          const Outputs ref = reference_attention(c, in);
          auto run = [&]<class T>(T) {
            Operands<T> x(c, in);
            tiles::forward_split(x.p, x.cq(c, x.q), x.ck(c, x.k), x.ck(c, x.v), x.mq(c, x.o), x.lse.data(), splits,
                                 {1, 32});
            const Outputs out = x.outputs(c);
            INFO(c.str() << " splits " << splits << " in " << precision_name<T>);
            const double e = scaled_error(out.o, ref.o);
            CHECK(e <= TileTolerance<T>::forward);
            require_lse_close(out.lse, ref.lse, TileTolerance<T>::forward);
            double& w = worst[std::is_same_v<T, float> ? 0 : 1];
            w = std::max(w, e);
          };
          run(float{});
          run(double{});
        }
  INFO("split-KV decoding, worst scaled error: float " << worst[0] << ", double " << worst[1]);
  CHECK(worst[0] > 1e-9);
  report("split-KV decoding", Worst{{worst[0], worst[1]}, {0, 0}});
}

// ---------------------------------------------------------------------------------------------------------------------
// The Cuda<float> backend's host side (backend/cuda/backend.hpp): each policy and epilogue type becomes the run-time
// description its one launcher reads. (The launchers themselves run only on a GPU: kernels/cuda_backend_tests.cpp.)

TEST_CASE("Cuda backend: norm policies, activations and epilogue expressions lower to the launchers' descriptions",
          "[cuda]") {
  using cuda::NormFormula;
  constexpr NormFormula ln = cuda::formula_of<LayerNorm>(), rms = cuda::formula_of<RMSNorm>(),
                        scale = cuda::formula_of<ScaleNorm>(), simple = cuda::formula_of<SimpleRMSNorm>(),
                        l2 = cuda::formula_of<L2Norm>();
  CHECK((ln.subtracts_mean && ln.root_dim && ln.gain == NormFormula::Gain::channel && ln.eps == LayerNorm::eps));
  CHECK((!rms.subtracts_mean && rms.root_dim && rms.gain == NormFormula::Gain::channel && rms.eps == RMSNorm::eps));
  CHECK((!scale.subtracts_mean && scale.gain == NormFormula::Gain::scalar && scale.eps == ScaleNorm::eps));
  CHECK((!simple.subtracts_mean && simple.root_dim && simple.gain == NormFormula::Gain::none));
  CHECK((!l2.subtracts_mean && !l2.root_dim && l2.gain == NormFormula::Gain::channel));

  CHECK(cuda::activation_of<void> == cuda::Activation::identity);
  CHECK(cuda::activation_of<act::Gelu> == cuda::Activation::gelu);
  CHECK(cuda::activation_of<act::Silu> == cuda::Activation::silu);
  CHECK(cuda::activation_of<act::ReluSquared> == cuda::Activation::relu_squared);
  CHECK(cuda::activation_of<act::Sigmoid> == cuda::Activation::sigmoid);

  using namespace epilogue;
  constexpr auto swiglu = cuda::epilogue_of<Dropout<Glu<act::Silu, Bias<Acc>>>>();
  CHECK((swiglu.activation == cuda::Activation::silu && swiglu.gated && swiglu.dropout && !swiglu.add_to));
  constexpr auto residual = cuda::epilogue_of<AddTo<Bias<Acc>>>();
  CHECK((residual.activation == cuda::Activation::identity && !residual.gated && !residual.dropout && residual.add_to));
  // No activation and no dropout: cuBLASLt writes (or accumulates into) the output itself, the bias in its epilogue;
  // otherwise the GEMM writes the pre-activation and the generated kernel finishes.
  CHECK(kernel<Cuda<float>, ops::Linear<AddTo<Bias<Acc>>>>::direct);
  CHECK(kernel<Cuda<float>, ops::Linear<Bias<Scale<Acc>>>>::direct);
  CHECK_FALSE(kernel<Cuda<float>, ops::Linear<Act<act::Gelu, Bias<Acc>>>>::direct);
  CHECK_FALSE(kernel<Cuda<float>, ops::Linear<Dropout<Bias<Acc>>>>::direct);
  CHECK(Cuda<float>::name == "Cuda<float>");
}

}  // namespace test_cuda_tiles
