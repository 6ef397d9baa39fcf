// Decoding from quantised weights (core/weight_format.hpp, backend/cpu/quantized.hpp, io/quantized.hpp): error bounds
// of each format, every compiled ISA path of the quantised GEMV against the float GEMV of the dequantised matrix,
// cached decoding with quantised weights against full recomputation with the dequantised weights, save → load, and
// the errors for shapes that do not split into groups and for files whose scales have the wrong shape; the same blocked
// kernel for bf16 and float matrices and for more rows of x than one pass takes; the automatic choice of bf16 above
// the last-level cache and what overrides it; int8 activations (the integer VNNI kernel and the rounded values every
// other path multiplies): the quantiser's bounds and bits, the GEMV on every path, token-by-token decoding against one
// prefill, the fused against the reference backend, and what chooses them.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>
#include <vector>

#include "testing.hpp"
#include "xtr/io/quantized.hpp"
#include "xtr/xtr.hpp"

namespace test_quantized {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using Catch::Contains;

namespace {

using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>>;
using Model = AutoregressiveWrapper<Net>;

TransformerConfig quant_config(Index dim = 64) {
  return {.num_tokens = 40, .max_seq_len = 48, .layers = {.dim = dim, .depth = 2, .heads = 2, .dim_head = 32}, .seed = 8};
}

/// A float model whose parameters are the copy's dequantised values (the reference for quantised decoding).
Model dequantised_twin(const Model& model) {
  Model twin(Net(model.net.config()));
  const auto& copy = *model.net.decode_weights();
  const auto& params = model.net.parameters();
  for (std::size_t e = 0; e < params.entries().size(); ++e) {
    const auto& entry = params.entries()[e];
    if (entry.alias_of >= 0) continue;
    for (Index i = 0; i < entry.shape.numel(); ++i)
      twin.net.parameters().values().data()[entry.offset + i] = copy.value(params, int(e), i);
  }
  return twin;
}

}  // namespace

TEST_CASE("quantisation error bounds: int8 within s/2 = max/254 per group, q4 within max/14, bf16 within 2^-8", "[quantized]") {
  // the scales are halves rounded up: s ≥ max/127 (max/7), at most one half-ulp (2^-10 relative, 2^-24 absolute) more
  for (std::uint16_t h = 0; h < 0x7C00; ++h) {  // every finite non-negative half converts back to itself
    REQUIRE(xtr::detail::float_to_half_bits(xtr::detail::half_bits_to_float(h), true) == h);
    REQUIRE(xtr::detail::float_to_half_bits(xtr::detail::half_bits_to_float(h), false) == h);
  }
  RandomStream halves{7, 1};
  for (std::uint64_t i = 0; i < 20000; ++i) {  // rounded up: the smallest half ≥ f; nearest: no half closer
    const float f = std::ldexp(float(halves.uniform(i)), int(i % 40) - 28);
    const std::uint16_t up = xtr::detail::float_to_half_bits(f, true), near = xtr::detail::float_to_half_bits(f, false);
    const float u = xtr::detail::half_bits_to_float(up);
    REQUIRE(u >= f);
    if (up > 0) REQUIRE(xtr::detail::half_bits_to_float(std::uint16_t(up - 1)) < f);
    const float n = xtr::detail::half_bits_to_float(near);
    REQUIRE(std::fabs(n - f) <= std::fabs(xtr::detail::half_bits_to_float(std::uint16_t(near + 1)) - f));
    if (near > 0) REQUIRE(std::fabs(n - f) <= std::fabs(xtr::detail::half_bits_to_float(std::uint16_t(near - 1)) - f));
  }
  Model model{Net{quant_config()}};
  auto& params = model.net.parameters();
  for (auto format : {WeightFormat::bf16, WeightFormat::int8, WeightFormat::q4}) {
    const auto copy = WeightCopy::make(params, format, 32);
    CHECK_FALSE(copy.stale(params));
    double worst_ratio = 0;
    Index quantised = 0;
    for (std::size_t e = 0; e < params.entries().size(); ++e) {
      const auto& entry = params.entries()[e];
      if (entry.alias_of >= 0 || !copy.holds(int(e))) continue;
      ++quantised;
      for (Index g = 0; g < entry.shape.numel() / 32; ++g) {
        double amax = 0;
        for (Index k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(double(params.values()[entry.offset + g * 32 + k])));
        for (Index k = 0; k < 32; ++k) {
          const double w = params.values()[entry.offset + g * 32 + k];
          const double err = std::fabs(copy.value(params, int(e), g * 32 + k) - w);
          const double bound = format == WeightFormat::int8 ? amax / 254 * (1 + 0x1p-10) + 0x1p-25
                               : format == WeightFormat::q4 ? amax / 14 * (1 + 0x1p-10) + 0x1p-25
                                                            : std::fabs(w) / 256;
          REQUIRE(err <= bound + 1e-12);
          if (amax > 0) worst_ratio = std::max(worst_ratio, err / amax);
        }
      }
    }
    CHECK(quantised >= 10);  // every GEMM weight: to_q/k/v, to_out, ff, logits, embeddings
    INFO(format_name(format) << ": worst error / group max " << worst_ratio);
    CHECK(worst_ratio > 0);
  }
  CHECK(bytes_per_weight(WeightFormat::int8) == 1.0625);
  CHECK(bytes_per_weight(WeightFormat::q4) == 0.5625);
  CHECK(parse_weight_format("q4") == WeightFormat::q4);
  CHECK_THROWS_WITH(parse_weight_format("int4"), Contains("unknown weight format 'int4' (f32, bf16, int8, q4)"));
  CHECK_THROWS_WITH(WeightCopy::make(params, WeightFormat::q4, 31), Contains("quantisation group 31 must be even"));
}

TEST_CASE("quantised GEMV on every compiled ISA path equals the float GEMV of the dequantised matrix", "[quantized]") {
  // with int8 activations (every path: the integer kernel of avx512_vnni, the others on the rounded values), the
  // reference multiplies the values the activations stand for
  namespace q = cpu::quantized;
  const Index out = 37;
  RandomStream rs{3, 1};
  for (Index in : {128, 160})  // 160: five groups of 32, not a whole number of the integer kernels' steps
    for (Index group : {32, 64}) {
      if (in % group != 0) continue;
      std::vector<float> w(std::size_t(out * in));
      for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(rs.fork(in).normal(i)) * (1 + float(i % 7));
      // quantise through a ParameterStore, as models do
      ParameterStore<float> store;
      const auto id = store.add("w", {out, in}, Init::fill(0));
      store.allocate(0);
      std::copy(w.begin(), w.end(), store.value(id).data());
      for (auto format : {WeightFormat::int8, WeightFormat::q4}) {
        const auto copy = WeightCopy::make(store, format, group);
        const q::QuantizedMatrix m{format == WeightFormat::int8 ? copy.q8.data() : nullptr,
                                   format == WeightFormat::q4 ? copy.q4.data() : nullptr, copy.scales.data(), out, in,
                                   group};
        std::vector<double> deq(std::size_t(out * in));
        for (Index i = 0; i < out * in; ++i) deq[std::size_t(i)] = copy.value(store, 0, i);
        for (Index R : {1, 3, 8, 13, 45}) {  // 45: more rows than a step's batch (a prefill)
          std::vector<float> x(std::size_t(R * in));
          for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(rs.fork(R).normal(i));
          x[5] = 0;  // a zero and a large value among the activations
          x[std::size_t(in + 7) % x.size()] = 40;
          for (bool int8_activations : {false, true}) {
            std::vector<float> xr = x;
            if (int8_activations) round_activations(xr.data(), R, in);
            for (auto isa : q::compiled_isas()) {
              std::vector<float> y(std::size_t(R * out), 0.5f);
              q::gemv(m, x.data(), R, y.data(), out, /*add=*/true, isa, int8_activations);
              double worst = 0;
              for (Index r = 0; r < R; ++r)
                for (Index j = 0; j < out; ++j) {
                  double ref = 0.5, mag = 0;
                  for (Index k = 0; k < in; ++k) {
                    ref += deq[std::size_t(j * in + k)] * xr[std::size_t(r * in + k)];
                    mag += std::fabs(deq[std::size_t(j * in + k)] * xr[std::size_t(r * in + k)]);
                  }
                  worst = std::max(worst, std::fabs(y[std::size_t(r * out + j)] - ref) / (mag + 1));
                }
              INFO(format_name(format) << " group " << group << " in " << in << " rows " << R << " isa "
                                       << q::isa_name(isa) << (int8_activations ? " int8 activations" : ""));
              CHECK(worst < 1e-5);
            }
          }
        }
      }
    }
}

TEST_CASE("int8 activations: within s/2 of x per chunk of 32, the vector quantiser gives the scalar one's bits, "
          "non-finite chunks propagate", "[quantized]") {
  RandomStream rs{9, 4};
  const Index R = 3, n = 96 + 20;  // a last chunk of 20 values
  std::vector<float> x(std::size_t(R * n));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(rs.normal(i)) * float(1 + i % 5);
  for (Index k = 32; k < 64; ++k) x[std::size_t(k)] = 0;  // an all-zero chunk
  std::vector<float> rounded = x;
  round_activations(rounded.data(), R, n);
  for (Index r = 0; r < R; ++r)
    for (Index c = 0; c < n; c += kActivationChunk) {
      double amax = 0;
      const Index len = std::min<Index>(32, n - c);
      for (Index k = 0; k < len; ++k) amax = std::max(amax, std::fabs(double(x[std::size_t(r * n + c + k)])));
      for (Index k = 0; k < len; ++k) {
        const auto i = std::size_t(r * n + c + k);
        REQUIRE(std::fabs(double(rounded[i]) - double(x[i])) <= amax / 254 * 1.0001 + 1e-30);
      }
    }
  for (Index k = 32; k < 64; ++k) CHECK(rounded[std::size_t(k)] == 0);
  // the CPU's vector path (whole chunks) against the scalar definition, bit for bit
  std::vector<float> whole(x.begin(), x.begin() + 2 * 96), scalar = whole;
  cpu::quantized::detail::round_activation_rows(whole.data(), 2, 96);
  round_activations(scalar.data(), 2, 96);
  CHECK(std::memcmp(whole.data(), scalar.data(), whole.size() * sizeof(float)) == 0);
#if defined(XTR_QUANTIZED_AVX2_INT)
  // the AVX2 quantiser (also compiled on AVX-512 machines, where round_activation_rows uses the AVX-512 one)
  for (Index c = 0; c + 32 <= Index(x.size()); c += 32) {
    std::vector<float> chunk(x.begin() + c, x.begin() + c + 32);
    if (c == 64) chunk[7] = std::numeric_limits<float>::quiet_NaN();
    if (c == 96) chunk[31] = -std::numeric_limits<float>::infinity();
    std::int8_t a[32], b[32];
    const float sa = quantize_activation_chunk(chunk.data(), 32, a);
    const float sb = cpu::quantized::detail::quantize_chunk_avx2(chunk.data(), b);
    INFO("chunk at " << c);
    CHECK(std::memcmp(a, b, 32) == 0);
    CHECK((std::memcmp(&sa, &sb, sizeof sa) == 0 || (std::isnan(sa) && std::isnan(sb))));
  }
#endif
  // a NaN or an infinity makes its chunk NaN (not silently zero); other chunks are unaffected
  std::vector<float> bad(x.begin(), x.begin() + 96);
  bad[40] = std::numeric_limits<float>::infinity();
  std::vector<float> bad_vec = bad;
  round_activations(bad.data(), 1, 96);
  cpu::quantized::detail::round_activation_rows(bad_vec.data(), 1, 96);
  for (auto* v : {&bad, &bad_vec}) {
    CHECK(std::isnan((*v)[33]));
    CHECK((*v)[3] == rounded[3]);
  }
  CHECK(parse_activation_format("int8") == ActivationFormat::int8);
  CHECK_THROWS_WITH(parse_activation_format("int4"), Contains("unknown activation format 'int4' (auto, f32, int8)"));
  CHECK(resolve_activations(WeightFormat::bf16, ActivationFormat::int8) == ActivationFormat::f32);
  CHECK(resolve_activations(WeightFormat::q4, ActivationFormat::f32) == ActivationFormat::f32);
  CHECK(resolve_activations(WeightFormat::q4, ActivationFormat::automatic, nullptr) ==
        (has_integer_dot_products() ? ActivationFormat::int8 : ActivationFormat::f32));
}

TEST_CASE("cached decoding from quantised weights equals recomputation with the dequantised weights", "[quantized][generation]") {
  for (auto format : {WeightFormat::bf16, WeightFormat::int8, WeightFormat::q4}) {
    Model model{Net{quant_config()}};
    model.eval();
    quantize(model, format, 32, ActivationFormat::f32);  // float activations: exactly the dequantised model
    CHECK(model.net.weight_format() == format);
    Model twin = dequantised_twin(model);
    twin.eval();
    const auto prompts = testing::random_tokens(3, 5, 40, 12);
    const auto cached = model.generate(prompts, 12, {.temperature = 0});
    const auto uncached = twin.generate(prompts, 12, {.temperature = 0, .cache_kv = false});
    INFO(format_name(format));
    CHECK(cached.data == uncached.data);
    // logits of one cached step against the twin's full forward
    Net::Cache cache = model.net.make_cache(1);
    const TokenBatch one{{3, 7, 1, 9, 2, 5, 6, 8, 4, 11}};
    const auto step = model.net.forward_cached(one, cache, 10);
    std::vector<float> got(step.data(), step.data() + step.size());
    const auto full = twin.net.forward(one);
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, double(std::fabs(got[i] - full.data()[i])));
    CHECK(worst < 1e-4);
  }
}

TEST_CASE("int8 activations: token-by-token decoding agrees with one prefill of the whole sequence",
          "[quantized][generation]") {
  // The one-row steps take the integer kernel (VNNI and AVX2 builds); the prefill of 2 × 20 rows takes it too on AVX2
  // (integer_kernel_takes_any_rows) and elsewhere widens the matrix for a GEMM on the rounded activations: the same
  // arithmetic, so the logits agree but where a rounding boundary falls between the two paths' float sums (below).
  for (auto format : {WeightFormat::int8, WeightFormat::q4}) {
    Model model{Net{quant_config()}};
    model.eval();
    quantize(model, format, 32, ActivationFormat::int8);
    CHECK_THAT(model.net.decoding(), Contains("int8 activations"));
    const auto tokens = testing::random_tokens(2, 20, 40, 17);
    auto whole = model.net.make_cache(2);
    const auto at_once = model.net.forward_cached(tokens, whole, 20);
    const std::vector<float> all(at_once.data(), at_once.data() + at_once.size());
    auto steps = model.net.make_cache(2);
    const Index V = 40;
    double worst = 0, scale = 0;
    for (Index t = 0; t < 20; ++t) {
      TokenBatch one(2, 1);
      for (Index b = 0; b < 2; ++b) one.data[std::size_t(b)] = tokens.data[std::size_t(b * 20 + t)];
      const auto step = model.net.forward_cached(one, steps);
      for (Index b = 0; b < 2; ++b) {
        double w = 0;
        for (Index v = 0; v < V; ++v) {
          const double a = all[std::size_t((b * 20 + t) * V + v)], c = step.data()[b * V + v];
          w = std::max(w, std::fabs(a - c));
          scale = std::max(scale, std::fabs(a));
        }
        worst = std::max(worst, w);
      }
    }
    // Rounding to int8 is discontinuous: where the two paths' float sums differ in the last bit, an activation next
    // to a rounding boundary can round the other way (one step s = max/127 of its chunk), and the positions after it
    // move by about what the rounding itself moves them — how many depends on the compiler's float order, so only the
    // bound is checked here; the same inputs give the same results to float rounding (the GEMV test on every path
    // and the Linear test against the reference backend, both with int8 activations).
    INFO(format_name(format) << ": worst " << worst << " of scale " << scale);
    CHECK(worst <= 0.05 * std::max(1.0, scale));
    // and int8 activations are not float ones: the logits move, by little
    Model floats{Net{quant_config()}};
    floats.eval();
    quantize(floats, format, 32, ActivationFormat::f32);
    auto fc = floats.net.make_cache(2);
    const auto f = floats.net.forward_cached(tokens, fc, 20);
    double moved = 0;
    for (std::size_t i = 0; i < all.size(); ++i) moved = std::max(moved, double(std::fabs(all[i] - f.data()[i])));
    CHECK(moved > 1e-5);
    CHECK(moved < 0.05 * std::max(1.0, scale));
  }
}

TEST_CASE("quantised weights: stale copies, shapes that are not whole groups, save and load", "[quantized][errors]") {
  SECTION("training after quantize() makes the copy stale and decoding refuses it") {
    Model model{Net{quant_config()}};
    quantize(model, WeightFormat::int8);
    auto opt = Adam(model.parameters(), {.lr = 1e-2});
    model.train();
    model(testing::random_tokens(2, 9, 40, 3)).backward();
    opt.step();
    model.eval();
    CHECK_THROWS_WITH(model.generate(testing::random_tokens(1, 3, 40, 4), 2),
                      Contains("int8 weight copy is stale") && Contains("call quantize() again"));
    quantize(model, WeightFormat::f32);
    CHECK(model.net.decode_weights() == nullptr);
    CHECK(model.generate(testing::random_tokens(1, 3, 40, 4), 2).length == 2);
  }
  SECTION("weights too large for a half-precision scale are refused, naming the parameter") {
    Model model{Net{quant_config()}};
    const auto& entries = model.net.parameters().entries();
    const auto held = WeightCopy::make(model.net.parameters(), WeightFormat::q4);
    const auto ff = std::find_if(entries.begin(), entries.end(), [&](const auto& e) {
      return held.holds(int(&e - entries.data())) && e.name.find("emb") == std::string::npos;
    });
    REQUIRE(ff != entries.end());
    model.net.parameters().values().data()[ff->offset] = 1e6f;  // q4: 1e6 / 7 > 65504
    const std::string name = ff->name;
    CHECK_THROWS_WITH(quantize(model, WeightFormat::q4),
                      Contains("cannot quantise parameter '" + name + "'") && Contains("above the largest half-precision scale (65504)"));
    CHECK(model.net.decode_weights() == nullptr);
    quantize(model, WeightFormat::int8);  // 1e6 / 127 fits
    CHECK(model.net.weight_format() == WeightFormat::int8);
  }
  SECTION("a 4-bit request on rows that are not whole groups names the parameter") {
    Model model{Net{quant_config(48)}};  // to_q (64, 48): rows of 48 values, groups of 32
    quantize(model, WeightFormat::q4);
    model.eval();
    CHECK_THROWS_WITH(model.generate(testing::random_tokens(1, 3, 40, 4), 2),
                      Contains("its rows of 48 values are not whole groups of 32") && Contains("cannot be read as q4"));
    quantize(model, WeightFormat::q4, 16);  // a group that divides 48 (the scalar path)
    CHECK(model.generate(testing::random_tokens(1, 3, 40, 4), 2, {.temperature = 0}).length == 2);
  }
  SECTION("save → load decodes exactly as the saved model; wrong scales are a clear error") {
    const auto dir = std::filesystem::temp_directory_path() / ("xtr_quant_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    for (auto format : {WeightFormat::int8, WeightFormat::q4}) {
      Model model{Net{quant_config()}};
      model.eval();
      quantize(model, format);
      const auto path = dir / (std::string(format_name(format)) + ".safetensors");
      save_quantized(path, model.net);
      Model loaded{Net{quant_config()}};
      loaded.eval();
      load_quantized(path, loaded.net);
      CHECK(loaded.net.weight_format() == format);
      const auto prompts = testing::random_tokens(2, 4, 40, 5);
      CHECK(loaded.generate(prompts, 10, {.temperature = 0}).data == model.generate(prompts, 10, {.temperature = 0}).data);
      // the saved file is smaller than float: q4 about 1/6, int8 about 1/3.5 of the float bytes
      const double ratio = double(std::filesystem::file_size(path)) / double(4 * model.parameters().count());
      CHECK(ratio < (format == WeightFormat::q4 ? 0.25 : 0.4));
      // the scales are halves (F16); a file with F32 scales (written by earlier versions) loads to the same model
      {
        auto f32 = safetensors::read(path);
        for (auto& t : f32.tensors)
          if (t.name.ends_with(".scales")) {
            REQUIRE(t.dtype == safetensors::Dtype::F16);
            const auto v = safetensors::to_vector<float>(t);
            t = safetensors::make_record<float>(t.name, t.shape, std::span<const float>(v));
          }
        f32.metadata.erase("xtr.crc32c");
        const auto f32_path = dir / "f32_scales.safetensors";
        safetensors::write(f32_path, f32);
        Model widened{Net{quant_config()}};
        widened.eval();
        load_quantized(f32_path, widened.net);
        CHECK(widened.generate(prompts, 10, {.temperature = 0}).data == model.generate(prompts, 10, {.temperature = 0}).data);
      }
      // scales of the wrong shape
      auto file = safetensors::read(path);
      for (auto& t : file.tensors)
        if (t.name == "attn_layers.layers.0.1.net.0.proj.weight.scales" || t.name.ends_with("to_q.weight.scales")) {
          t.shape[1] += 1;
          t.bytes.resize(t.bytes.size() + std::size_t(t.shape[0]) * 2);
          break;
        }
      file.metadata.erase("xtr.crc32c");
      safetensors::write(path, file);
      Model again{Net{quant_config()}};
      const auto before = std::vector<float>(again.parameters().values().data(),
                                             again.parameters().values().data() + again.parameters().count());
      CHECK_THROWS_WITH(load_quantized(path, again.net),
                        Contains(".scales' is F16 [") && Contains("expected F16 (or F32) [") && Contains("one scale per group of 32"));
      CHECK(std::equal(before.begin(), before.end(), again.parameters().values().data()));  // nothing changed
      CHECK(again.net.decode_weights() == nullptr);
    }
    std::filesystem::remove_all(dir);
    Model plain{Net{quant_config()}};
    CHECK_THROWS_WITH(save_quantized(dir / "x.safetensors", plain.net), Contains("call quantize() first"));
  }
}

TEST_CASE("quantised decoding: the fused CPU kernels equal the reference backend reading the same copy", "[quantized][backends]") {
  using RefNet = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Reference<float>>;
  for (auto format : {WeightFormat::bf16, WeightFormat::int8, WeightFormat::q4})
  for (auto activations : {ActivationFormat::f32, ActivationFormat::int8}) {
    Model cpu{Net{quant_config()}};
    AutoregressiveWrapper<RefNet> ref{RefNet{quant_config()}};
    std::copy_n(cpu.parameters().values().data(), cpu.parameters().count(), ref.parameters().values().data());
    quantize(cpu, format, 32, activations);
    quantize(ref, format, 32, activations);
    auto c_cache = cpu.net.make_cache(2);
    auto r_cache = ref.net.make_cache(2);
    // 2 prompts of 9: a prefill of 18 rows (bf16: the AVX2 panel kernel's 16 rows and 2 through dense_avx2)
    const auto prompt = testing::random_tokens(2, 9, 40, 21);
    double worst = 0, scale = 0;
    for (Index step = 0; step < 5; ++step) {
      const auto tokens = step == 0 ? prompt : testing::random_tokens(2, 1, 40, 30 + std::uint64_t(step));
      const auto a = cpu.net.forward_cached(tokens, c_cache);
      std::vector<float> got(a.data(), a.data() + a.size());
      const auto b = ref.net.forward_cached(tokens, r_cache);
      for (Index i = 0; i < b.size(); ++i) {
        worst = std::max(worst, double(std::fabs(got[std::size_t(i)] - b.data()[i])));
        scale = std::max(scale, double(std::fabs(b.data()[i])));
      }
    }
    INFO(format_name(format) << " " << activation_name(activations) << " activations: worst " << worst << " of scale "
                             << scale);
    // int8 activations: where the backends' float and double sums straddle a rounding boundary an activation rounds
    // the other way, and the rows after it move by about what rounding moves them (the same inputs give the same
    // bits: the next test); float activations agree to float rounding
    const bool rounded = activations == ActivationFormat::int8 && format != WeightFormat::bf16;
    CHECK(worst <= (rounded ? 0.05 : 1e-4) * std::max(1.0, scale));
  }
}

TEST_CASE("int8 activations: the CPU Linear (integer kernel, prefill GEMM) equals the reference backend's on the same "
          "inputs", "[quantized][backends]") {
  using E = epilogue::Bias<epilogue::Acc>;
  // groups of 32 in rows of 96 (three groups, not whole steps of the integer kernels); groups of 64, which no integer
  // kernel takes (rounded activations through the float kernel, or a prefill GEMM over the widened matrix)
  for (const auto& [in, group] : {std::pair<Index, Index>{96, 32}, {128, 64}})
  for (auto format : {WeightFormat::int8, WeightFormat::q4}) {
    const Index out = 48;
    RandomStream rs{12, 7};
    ParameterStore<float> store;
    const auto id = store.add("w", {out, in}, Init::fill(0));
    store.allocate(0);
    for (Index i = 0; i < out * in; ++i) store.value(id).data()[i] = float(rs.normal(std::uint64_t(i))) * 0.2f;
    std::vector<float> bias(static_cast<std::size_t>(out));
    for (Index i = 0; i < out; ++i) bias[std::size_t(i)] = float(rs.fork(1).normal(std::uint64_t(i)));
    const auto copy = WeightCopy::make(store, format, group);
    ops::Weights<float> w{View<const float>(store.value(id).data(), out, in)};
    if (format == WeightFormat::int8) w.q8 = copy.q8.data();
    else w.q4 = copy.q4.data();
    w.scales = copy.scales.data();
    w.group = group;
    w.int8_activations = true;
    // 40 and 77 rows: a prefill, through the integer kernel where it takes any number of rows
    // (integer_kernel_takes_any_rows), through a GEMM over the widened matrix elsewhere
    for (Index N : {1, 5, 40, 77}) {
      std::vector<float> x(std::size_t(N * in)), y_cpu(std::size_t(N * out)), y_ref(std::size_t(N * out));
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(rs.fork(2 + N).normal(i)) * float(1 + i % 3);
      epilogue::Operands<float> o;
      o.bias = bias.data();
      Arena arena;
      kernel<Cpu<float>, ops::Linear<E>>::forward(View<const float>(x.data(), N, in), w,
                                                  View<float>(y_cpu.data(), N, out), o, arena);
      kernel<Reference<float>, ops::Linear<E>>::forward(View<const float>(x.data(), N, in), w,
                                                        View<float>(y_ref.data(), N, out), o, arena);
      // and the float-activation product, to see that rounding happened
      ops::Weights<float> f = w;
      f.int8_activations = false;
      std::vector<float> y_float(std::size_t(N * out));
      kernel<Reference<float>, ops::Linear<E>>::forward(View<const float>(x.data(), N, in), f,
                                                        View<float>(y_float.data(), N, out), o, arena);
      double worst = 0, moved = 0;
      for (std::size_t i = 0; i < y_cpu.size(); ++i) {
        worst = std::max(worst, double(std::fabs(y_cpu[i] - y_ref[i])) / (1 + std::fabs(y_ref[i])));
        moved = std::max(moved, double(std::fabs(y_float[i] - y_ref[i])));
      }
      INFO(format_name(format) << " group " << group << " rows " << N << ": worst " << worst << ", rounding moved "
                               << moved);
      CHECK(worst < 1e-5);
      CHECK(moved > 1e-4);
    }
  }
}

TEST_CASE("bfloat16 matrices through the blocked GEMV equal the float GEMV of the bfloat16 values on every path", "[quantized]") {
  namespace q = cpu::quantized;
  RandomStream rs{5, 2};
  // 200: not a whole number of 32-value blocks; 100: nor of the AVX-512 kernel's 16-value steps, nor of AVX2's 8
  // (the scalar tails); 2048: AVX2's panel kernel takes 53 rows as chunks of 32 and 16 panel rows, then 5 more rows
  for (Index in : {64, 96, 100, 200, 2048}) {
    const Index out = 13;
    std::vector<std::uint16_t> w(std::size_t(out * in));
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = detail::float_to_bf16_bits(float(rs.normal(i)));
    q::QuantizedMatrix m;
    m.bf16 = w.data();
    m.out = out;
    m.in = in;
    for (Index R : {1, 2, 5, 8, 16, 37, 53}) {  // from 16: AVX2's panel kernel (and the rows after whole 16s)
      std::vector<float> x(std::size_t(R * in));
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(rs.fork(R + in).normal(i));
      for (auto isa : q::compiled_isas()) {
        std::vector<float> y(std::size_t(R * out), 0.25f);
        q::gemv(m, x.data(), R, y.data(), out, /*add=*/true, isa);
        double worst = 0;
        for (Index r = 0; r < R; ++r)
          for (Index j = 0; j < out; ++j) {
            double ref = 0.25, mag = 0;
            for (Index k = 0; k < in; ++k) {
              const double p = double(detail::bf16_bits_to_float(w[std::size_t(j * in + k)])) * x[std::size_t(r * in + k)];
              ref += p;
              mag += std::fabs(p);
            }
            worst = std::max(worst, std::fabs(y[std::size_t(r * out + j)] - ref) / (mag + 1));
          }
        INFO("in " << in << " rows " << R << " isa " << q::isa_name(isa));
        CHECK(worst < 1e-5);
      }
    }
  }
}

TEST_CASE("parallel_blocks_ahead runs every block once, after the first job on every share, each told the block its "
          "thread runs next", "[quantized]") {
  // the panel kernel's schedule: what it prefetches is only as right as `next`
  for (const Index n : {Index(1), Index(6), Index(100), Index(203)})
    for (const Index work : {Index(1), Index(100000)}) {  // serial, and (from two threads) in parallel
      const Index block = 6, blocks = (n + block - 1) / block, n_first = 37;
      std::vector<std::vector<std::array<Index, 4>>> runs(std::size_t(cpu::max_threads()));
      std::vector<int> firsts(std::size_t(n_first), 0);
      std::atomic<Index> early{0};  // blocks run before every share of `first` was done
      std::atomic<Index> first_done{0};
      cpu::parallel_blocks_ahead(
          n_first,
          [&](Index b, Index e) {
            for (Index i = b; i < e; ++i) ++firsts[std::size_t(i)];
            first_done += e - b;
          },
          n, block, work, [&](Index b, Index e, Index nb, Index ne) {
            if (first_done.load() != n_first) ++early;
            runs[std::size_t(omp_get_thread_num())].push_back({b, e, nb, ne});
          });
      INFO("n " << n << " work per row " << work);
      CHECK(early.load() == 0);
      CHECK(std::count(firsts.begin(), firsts.end(), 1) == n_first);
      std::vector<int> seen(std::size_t(blocks), 0);
      for (const auto& thread : runs)
        for (std::size_t k = 0; k < thread.size(); ++k) {
          const auto [b, e, nb, ne] = thread[k];
          REQUIRE(b % block == 0);
          REQUIRE(b / block < blocks);
          ++seen[std::size_t(b / block)];
          CHECK(e == std::min(n, b + block));
          if (k + 1 < thread.size()) {  // the block this thread ran next
            CHECK(nb == thread[k + 1][0]);
            CHECK(ne == thread[k + 1][1]);
          } else {  // none: an empty range at the end
            CHECK(nb == n);
            CHECK(ne == n);
          }
        }
      CHECK(std::count(seen.begin(), seen.end(), 1) == blocks);
    }
}

TEST_CASE("automatic decoding weights: bf16 above the last-level cache, f32 below, the environment and quantize() override it", "[quantized][generation]") {
  CHECK(last_level_cache_bytes() > 0);
  CHECK(automatic_decode_weights(100 << 20, 64 << 20, nullptr).format == WeightFormat::bf16);
  CHECK_THAT(automatic_decode_weights(100 << 20, 64 << 20, nullptr).reason,
             Contains("100.0 MiB of float weights > 64.0 MiB last-level cache"));
  CHECK(automatic_decode_weights(64 << 20, 64 << 20, nullptr).format == WeightFormat::f32);
  ::setenv("XTR_TEST_DECODE_WEIGHTS", "q4", 1);
  CHECK(automatic_decode_weights(1, 64, "XTR_TEST_DECODE_WEIGHTS").format == WeightFormat::q4);
  ::setenv("XTR_TEST_DECODE_WEIGHTS", "auto", 1);
  CHECK(automatic_decode_weights(1, 64, "XTR_TEST_DECODE_WEIGHTS").format == WeightFormat::f32);
  ::setenv("XTR_TEST_DECODE_WEIGHTS", "int4", 1);
  CHECK_THROWS_WITH(automatic_decode_weights(1, 64, "XTR_TEST_DECODE_WEIGHTS"),
                    Contains("XTR_TEST_DECODE_WEIGHTS='int4' is not a weight format"));
  ::unsetenv("XTR_TEST_DECODE_WEIGHTS");

  struct Unset {  // the environment of the other tests stays as it was, whatever fails here
    ~Unset() { ::unsetenv("XTR_DECODE_WEIGHTS"); }
  } unset;
  const auto prompts = testing::random_tokens(2, 4, 40, 21);
  Model reference{Net{quant_config()}};
  reference.eval();
  quantize(reference, WeightFormat::bf16);  // explicit: the same copy the automatic choice makes
  const auto expected = reference.generate(prompts, 8, {.temperature = 0});

  // a small model stays float by default; the environment makes it bf16 (as a model above the cache would be)
  Model model{Net{quant_config()}};
  model.eval();
  CHECK(model.net.weight_format() == WeightFormat::f32);
  CHECK_THAT(model.net.decoding(), Contains("f32 (automatic:"));
  ::setenv("XTR_DECODE_WEIGHTS", "bf16", 1);
  CHECK(model.net.weight_format() == WeightFormat::bf16);
  CHECK(model.generate(prompts, 8, {.temperature = 0}).data == expected.data);
  REQUIRE(model.net.decode_weights() != nullptr);
  CHECK(model.net.decode_weights()->format == WeightFormat::bf16);
  CHECK(model.net.decoding() == "bf16 (XTR_DECODE_WEIGHTS=bf16)");
  // training changes the parameters: the automatic copy is made again (an explicit one would be refused as stale)
  model.train();
  auto opt = Adam(model.parameters(), {.lr = 1e-2});
  auto loss = model(testing::random_tokens(2, 9, 40, 22));
  loss.backward();
  opt.step();
  model.eval();
  Model trained{Net{model.net.config()}};
  std::copy_n(model.parameters().values().data(), model.parameters().count(), trained.parameters().values().data());
  trained.eval();
  quantize(trained, WeightFormat::bf16);
  CHECK(model.generate(prompts, 8, {.temperature = 0}).data == trained.generate(prompts, 8, {.temperature = 0}).data);
  // an explicit choice wins over the environment, until automatic_decode_weights()
  quantize(model, WeightFormat::f32);
  CHECK(model.net.weight_format() == WeightFormat::f32);
  CHECK(model.net.decoding() == "f32 (quantize())");
  quantize(model, WeightFormat::int8, 32, ActivationFormat::f32);
  CHECK(model.net.decoding() == "int8, groups of 32, f32 activations (quantize())");
  quantize(model, WeightFormat::int8);  // automatic activations: int8 where the build has the integer kernel
  CHECK(model.net.decoding() == std::string("int8, groups of 32, ") + (has_integer_dot_products() ? "int8" : "f32") +
                                    " activations (quantize())");
  ::setenv("XTR_DECODE_ACTIVATIONS", "f32", 1);
  quantize(model, WeightFormat::q4);
  CHECK(model.net.decode_weights()->activations == ActivationFormat::f32);
  quantize(model, WeightFormat::q4, 32, ActivationFormat::int8);  // an explicit request wins over the environment
  CHECK(model.net.decode_weights()->activations == ActivationFormat::int8);
  ::setenv("XTR_DECODE_ACTIVATIONS", "int4", 1);
  CHECK_THROWS_WITH(quantize(model, WeightFormat::q4), Contains("XTR_DECODE_ACTIVATIONS='int4' is not an activation format"));
  ::unsetenv("XTR_DECODE_ACTIVATIONS");
  model.net.automatic_decode_weights();
  CHECK(model.net.weight_format() == WeightFormat::bf16);
  ::setenv("XTR_DECODE_WEIGHTS", "fp8", 1);
  CHECK_THROWS_WITH(model.generate(prompts, 2, {.temperature = 0}), Contains("XTR_DECODE_WEIGHTS='fp8'"));
  ::unsetenv("XTR_DECODE_WEIGHTS");
  CHECK(model.net.weight_format() == WeightFormat::f32);
}

TEST_CASE("the blocked kernel with more rows of x than one pass takes equals the float GEMM, in every format", "[quantized]") {
  namespace q = cpu::quantized;
  const Index out = 203, in = 128;  // 203 rows of W: two whole cache blocks and a remainder
  std::vector<float> w(std::size_t(out * in));
  RandomStream rs{9, 4};
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(rs.normal(i));
  ParameterStore<float> store;
  const auto id = store.add("w", {out, in}, Init::fill(0));
  store.allocate(0);
  std::copy(w.begin(), w.end(), store.value(id).data());
  for (auto format : {WeightFormat::f32, WeightFormat::bf16, WeightFormat::int8, WeightFormat::q4}) {
    const auto copy = WeightCopy::make(store, format, 32);
    q::QuantizedMatrix m;
    m.q8 = format == WeightFormat::int8 ? copy.q8.data() : nullptr;
    m.q4 = format == WeightFormat::q4 ? copy.q4.data() : nullptr;
    m.scales = copy.quantized() ? copy.scales.data() : nullptr;
    m.bf16 = format == WeightFormat::bf16 ? copy.bf16.data() : nullptr;
    m.f32 = format == WeightFormat::f32 ? w.data() : nullptr;
    m.out = out;
    m.in = in;
    m.group = 32;
    const auto weight = [&](Index j, Index k) {
      return format == WeightFormat::f32 ? double(w[std::size_t(j * in + k)]) : copy.value(store, 0, j * in + k);
    };
    // 17, 32, 45, 100: the panel kernel for bf16 and float on AVX2 (whole 16s of rows, the rest through dense_avx2;
    // 203 rows of W: blocks of 6 and a remainder)
    for (Index R : {9, 17, 32, 45, 100}) {
      std::vector<float> x(std::size_t(R * in));
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(rs.fork(R).normal(i));
      for (auto isa : q::compiled_isas()) {
        const Index ldy = out + 3;  // y rows further apart than out
        std::vector<float> y(std::size_t(R * ldy), 0.5f);
        q::gemv(m, x.data(), R, y.data(), ldy, /*add=*/true, isa);
        double worst = 0;
        for (Index r = 0; r < R; ++r)
          for (Index j = 0; j < out; ++j) {
            double ref = 0.5, mag = 0;
            for (Index k = 0; k < in; ++k) {
              const double p = weight(j, k) * x[std::size_t(r * in + k)];
              ref += p;
              mag += std::fabs(p);
            }
            worst = std::max(worst, std::fabs(y[std::size_t(r * ldy + j)] - ref) / (mag + 1));
          }
        INFO(format_name(format) << " rows " << R << " isa " << q::isa_name(isa));
        CHECK(worst < 1e-5);
      }
    }
  }
}

}  // namespace test_quantized

namespace test_quantized {

TEST_CASE("f16 KV cache: decoding within the halves' rounding of the float cache, the same greedy tokens and beams, "
          "past max_seq_len too, and refused where it cannot hold the values or the backend cannot read it",
          "[quantized][generation][kv_cache]") {
  const auto prompts = testing::random_tokens(3, 4, 40, 21);
  SECTION("float and q4 weights: the logits of every step within the rounding, the same tokens and beams") {
    Model model{Net{quant_config()}};
    model.eval();
    CHECK(model.net.kv_format() == KVFormat::f32);
    // a prompt, single tokens and chunks, 110 tokens in all: the buffer grows to its full size (96), the window (48)
    // slides and the live rows move to the buffer's front; the worst logit difference between a float and an f16 cache
    const auto worst_difference = [&] {
      use_kv_format(model, KVFormat::f32);
      Net::Cache full = model.net.make_cache(2);
      use_kv_format(model, KVFormat::f16);
      Net::Cache half = model.net.make_cache(2);
      REQUIRE(half.format == KVFormat::f16);
      CHECK((half.k.empty() && half.k_half.size() == 2 && half.v_half.size() == 2));
      double worst = 0;
      Index step = 0, total = 0;
      while (total < 110) {
        const Index n = total == 0 ? 5 : step % 7 == 3 ? 3 : 1;
        const auto tokens = testing::random_tokens(2, n, 40, 100 + std::uint64_t(step++));
        const auto a = model.net.forward_cached(tokens, full, n);
        const std::vector<float> expected(a.data(), a.data() + a.size());
        const auto b = model.net.forward_cached(tokens, half, n);
        REQUIRE(b.size() == Index(expected.size()));
        for (Index i = 0; i < b.size(); ++i)
          worst = std::max(worst, double(std::fabs(b.data()[i] - expected[std::size_t(i)])));
        total += n;
      }
      return worst;
    };
    const double float_weights = worst_difference();
    CHECK_THAT(model.net.decoding(), Contains("; f16 KV cache"));
    quantize(model, WeightFormat::q4, 32, ActivationFormat::f32);
    const double q4_weights = worst_difference();
    INFO("worst logit difference: float weights " << float_weights << ", q4 weights " << q4_weights);
    CHECK((float_weights > 0 && q4_weights > 0));  // the halves were read
    CHECK(float_weights < 5e-3);
    CHECK(q4_weights < 5e-3);
    // generation and beam search (rows repeated and reordered in halves) give the float cache's tokens
    quantize(model, WeightFormat::f32);
    use_kv_format(model, KVFormat::f16);
    const auto greedy_half = model.generate(prompts, 20, {.temperature = 0});
    const auto beams_half = model.beam_search(prompts, 10, {.beams = 3});
    use_kv_format(model, KVFormat::f32);
    CHECK(model.generate(prompts, 20, {.temperature = 0}).data == greedy_half.data);
    const auto beams_full = model.beam_search(prompts, 10, {.beams = 3});
    for (std::size_t j = 0; j < 3; ++j) {
      CHECK(beams_full.beams[j].data == beams_half.beams[j].data);
      for (std::size_t b = 0; b < 3; ++b) CHECK(beams_full.scores[j][b] == Approx(beams_half.scores[j][b]).epsilon(1e-3));
    }
  }
  SECTION("a value beyond the half range is refused, naming the layer") {
    Model big{Net{quant_config()}};
    use_kv_format(big, KVFormat::f16);
    for (const auto& e : big.net.parameters().entries())
      if (e.name.find("layers.2.1.to_v") != std::string::npos)  // the second attention layer's values
        for (Index i = 0; i < e.shape.numel(); ++i) big.net.parameters().values().data()[e.offset + i] *= 1e7f;
    CHECK_THROWS_WITH(big.generate(prompts, 2), Contains("layer 1: a value of") &&
                                                    Contains("outside the f16 KV cache's range (±65504)") &&
                                                    Contains("KVFormat::f32"));
    use_kv_format(big, KVFormat::f32);
    CHECK(big.generate(prompts, 2).length == 2);  // the float cache holds them
  }
  SECTION("a backend whose attention does not read halves refuses the format") {
    TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Reference<float>> reference(quant_config());
    CHECK_THROWS_WITH(reference.use_kv_format(KVFormat::f16),
                      Contains("an f16 KV cache needs a backend whose attention reads halves") &&
                          Contains("Reference<float>"));
    CHECK(reference.kv_format() == KVFormat::f32);
  }
  SECTION("format names") {
    CHECK(parse_kv_format("f16") == KVFormat::f16);
    CHECK(parse_kv_format("f32") == KVFormat::f32);
    CHECK_THROWS_WITH(parse_kv_format("f8"), Contains("unknown KV cache format 'f8' (f32, f16)"));
  }
}

}  // namespace test_quantized
