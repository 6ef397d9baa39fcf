// CUDA kernels against their CPU reference, and the device plumbing. Plain main: exit 0 on success, 1 on a failure.
// The host-side checks and the no-device error paths run everywhere; on a machine without a CUDA device, after they
// pass, it prints "skipped: no CUDA device" (ctest then reports the device part as skipped; a failure is printed as
// FAILED instead, so it is never hidden as a skip).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_runtime_api.h>

#include "attention_tiles.cuh"
#include "device.hpp"
#include "dropout.cuh"
#include "xtr/backend/cuda/tiles.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/rng.hpp"

namespace xtr::cuda::testing {  // kernels/cuda_backend_tests.cpp
extern int backend_failures;
void check_backend_without_device();
void compare_backend_on_device();
}  // namespace xtr::cuda::testing

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

template <class F>
bool throws_xtr_error(F&& f, const char* expected = "") {
  try {
    f();
  } catch (const xtr::Error& e) {
    if (std::strstr(e.what(), expected)) return true;
    std::printf("  message was: %s\n  expected to contain: %s\n", e.what(), expected);
    return false;
  }
  return false;
}

/// Device plumbing that needs no device: error formatting, argument checks, the arena's arithmetic.
void check_plumbing_on_host() {
  check(throws_xtr_error([] { XTR_CUDA_CHECK(cudaErrorMemoryAllocation); },
                         "cuda_tests.cpp:"),
        "XTR_CUDA_CHECK names the source location");
  check(throws_xtr_error([] { XTR_CUDA_CHECK(cudaErrorMemoryAllocation); }, "cudaErrorMemoryAllocation"),
        "XTR_CUDA_CHECK names CUDA's error");
  XTR_CUDA_CHECK(cudaSuccess);  // no throw
  check(throws_xtr_error([] { xtr::cuda::DeviceBuffer<float> b(-1); }, "element count must be >= 0, got -1"),
        "a negative buffer size is rejected");
  xtr::cuda::DeviceBuffer<float> empty(0);  // allocates nothing: fine without a device
  check(empty.data() == nullptr && empty.size() == 0, "an empty buffer holds nothing");
  const float three[3] = {1, 2, 3};
  check(throws_xtr_error([&] { empty.upload(three); }, "3 host elements for a buffer of 0"),
        "upload checks the element count");
  xtr::cuda::ArenaLayout layout{.capacity = 1024};
  check(layout.take(10) == 0 && layout.take(1) == 256 && layout.take(256) == 512, "arena slices are 256-byte aligned");
  check(layout.used == 768, "the arena counts what it handed out");
  check(throws_xtr_error([&] { (void)layout.take(300); }, "a slice of 300 bytes (0.0 MiB) does not fit: 256 bytes"),
        "an arena overflow names the request and what is left");
  check(xtr::cuda::byte_count(3u << 20) == "3145728 bytes (3.0 MiB)", "byte counts read as bytes and MiB");
}

/// What a machine without a GPU says: the errors a user meets there.
void check_without_device() {
  check(xtr::cuda::device_count() == 0, "device_count() is 0");
  check(throws_xtr_error([] { xtr::cuda::require_device(); }, "no CUDA device at run time"),
        "require_device() explains that there is no device");
  check(throws_xtr_error([] { xtr::cuda::DeviceBuffer<float> b(1024); }, "cannot allocate 4096 bytes (0.0 MiB)"),
        "an allocation without a device names the bytes asked for");
}

/// Device memory round trips, an impossible allocation, the arena's slices on a real device.
void check_plumbing_on_device() {
  xtr::cuda::require_device();
  std::vector<float> values(1000), back(1000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = float(i) * 0.5f - 3;
  xtr::cuda::DeviceBuffer<float> buffer(1000);
  buffer.upload(values);
  buffer.download(back);
  check(back == values, "upload then download returns the same values");
  xtr::cuda::DeviceBuffer<float> moved(std::move(buffer));
  check(buffer.data() == nullptr && moved.size() == 1000, "a moved-from buffer is empty");
  check(throws_xtr_error([] { xtr::cuda::DeviceBuffer<std::byte> huge(std::int64_t(1) << 50); },
                         "cannot allocate 1125899906842624 bytes"),
        "an allocation beyond the device names the bytes asked for and what is free");
  xtr::cuda::DeviceArena arena(1 << 20);
  float* a = arena.allocate<float>(100);
  float* b = arena.allocate<float>(100);
  check(reinterpret_cast<std::uintptr_t>(b) - reinterpret_cast<std::uintptr_t>(a) == 512, "arena slices are aligned");
  arena.reset();
  check(arena.allocate<float>(1) == a, "reset() reuses the arena from its start");
}

bool cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess) std::printf("FAIL: %s: %s\n", what, cudaGetErrorString(status));
  failures += status != cudaSuccess;
  return status == cudaSuccess;
}

/// GPU mask of n elements vs the CPU rule TransformerWrapper::dropout applies: keep iff uniform(i) >= float(p).
void compare_dropout_mask(xtr::RandomStream rng, double p, std::int64_t n) {
  void* allocation = nullptr;
  if (!cuda_ok(cudaMalloc(&allocation, std::size_t(n)), "cudaMalloc")) return;
  auto* device = static_cast<std::uint8_t*>(allocation);
  std::vector<std::uint8_t> gpu(std::size_t(n), 2);
  xtr::cuda::dropout_mask(rng, p, device, n);
  cuda_ok(cudaMemcpy(gpu.data(), device, std::size_t(n), cudaMemcpyDeviceToHost), "cudaMemcpy");
  cuda_ok(cudaFree(device), "cudaFree");

  const float threshold = float(p);
  std::int64_t mismatches = 0, first = -1, kept = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint8_t cpu = rng.uniform(std::uint64_t(i)) >= threshold ? 1 : 0;
    if (gpu[std::size_t(i)] != cpu && mismatches++ == 0) first = i;
    kept += gpu[std::size_t(i)] == 1;
  }
  const double kept_fraction = double(kept) / double(n);
  std::printf("dropout_mask seed %llu stream %llu p %.2f n %lld: %lld mismatches, kept %.4f (expected %.4f)\n",
              (unsigned long long)rng.seed, (unsigned long long)rng.stream, p, (long long)n, (long long)mismatches,
              kept_fraction, 1 - p);
  if (mismatches) std::printf("  first mismatch at element %lld\n", (long long)first);
  check(mismatches == 0, "GPU dropout mask equals the CPU RandomStream mask");
  check(kept_fraction > 1 - p - 0.005 && kept_fraction < 1 - p + 0.005, "kept fraction is 1 - p within 0.005");
}

// ---------------------------------------------------------------------------------------------------------------------
// Attention (attention_tiles.cu) against the host drivers of the same tiles (backend/cuda/tiles.hpp), which
// tests/unit/test_cuda_tiles.cpp checks against the reference backend: the fp64 driver is the truth, the fp32 driver
// the same-precision composition the GPU's error is held to (at most 2x, or 2e-6 of the largest |O| where the fp32
// composition happens to be more exact than that).

struct AttentionCase {
  std::int64_t batch = 2, heads = 4, kv_heads = 2, dim_head = 64, q_len = 97, k_len = 97, q_offset = 0;
  bool causal = true, padding = false, bias = false, query_mask = false;
  double dropout = 0;
  int splits = 0;  // > 0: attention_decode with this many splits
};

/// A problem over the operands of a case (contiguous rows), its pointers on the host or the device.
template <class T>
xtr::ops::AttentionProblem<T> attention_problem(const AttentionCase& c, const std::uint8_t* key_mask,
                                                const std::uint8_t* query_mask, const T* bias) {
  xtr::ops::AttentionProblem<T> p;
  p.batch = c.batch;
  p.heads = c.heads;
  p.kv_heads = c.kv_heads;
  p.dim_head = c.dim_head;
  p.q_len = c.q_len;
  p.k_len = c.k_len;
  p.q_offset = c.q_offset;
  p.causal = c.causal;
  p.scale = T(1.0 / std::sqrt(double(c.dim_head)));
  p.key_mask = key_mask;
  p.key_mask_stride = c.k_len;
  p.query_mask = query_mask;
  p.query_mask_stride = c.q_len;
  p.bias = bias;
  p.bias_zero = c.q_offset + c.q_len - 1;
  p.bias_stride = p.bias_zero + c.k_len;
  p.dropout = c.dropout;
  p.dropout_stream = xtr::RandomStream{99, 1}.fork(7);
  return p;
}

template <class T>
xtr::ops::HeadsView<T> heads_view(T* data, std::int64_t length, std::int64_t width) {
  return {data, length * width, width};
}

/// max |a − truth| / max(1, max |truth|).
double scaled_error(const std::vector<float>& a, const std::vector<double>& truth) {
  double err = 0, scale = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    err = std::max(err, std::abs(double(a[i]) - truth[i]));
    scale = std::max(scale, std::abs(truth[i]));
  }
  return err / scale;
}

void compare_attention(const AttentionCase& c, std::uint64_t seed) {
  namespace tiles = xtr::cuda::tiles;
  const std::int64_t qw = c.heads * c.dim_head, kw = c.kv_heads * c.dim_head;
  auto random = [](std::int64_t n, std::uint64_t s) {
    std::vector<double> v(static_cast<std::size_t>(n));
    const xtr::RandomStream rs{s, 11};
    for (std::int64_t i = 0; i < n; ++i) v[std::size_t(i)] = rs.normal(std::uint64_t(i));
    return v;
  };
  const auto q = random(c.batch * c.q_len * qw, seed), k = random(c.batch * c.k_len * kw, seed + 1),
             v = random(c.batch * c.k_len * kw, seed + 2);
  const std::int64_t bias_width = c.q_offset + c.q_len - 1 + c.k_len;
  const auto bias = c.bias ? random(c.heads * bias_width, seed + 3) : std::vector<double>{};
  std::vector<std::uint8_t> key_mask, query_mask;
  const xtr::RandomStream coin{seed, 5};
  if (c.padding) {
    key_mask.resize(std::size_t(c.batch * c.k_len));
    for (std::size_t j = 0; j < key_mask.size(); ++j) key_mask[j] = coin.uniform(j / 5) < 0.2 ? 0 : 1;
  }
  if (c.query_mask) {
    query_mask.resize(std::size_t(c.batch * c.q_len));
    for (std::size_t i = 0; i < query_mask.size(); ++i) query_mask[i] = coin.uniform(100000 + i) < 0.25 ? 0 : 1;
  }
  const std::uint8_t* km = key_mask.empty() ? nullptr : key_mask.data();
  const std::uint8_t* qm = query_mask.empty() ? nullptr : query_mask.data();

  // the host drivers: fp64 truth and the fp32 composition
  std::vector<double> o64(q.size()), lse64(std::size_t(c.batch * c.heads * c.q_len));
  tiles::forward(attention_problem<double>(c, km, qm, c.bias ? bias.data() : nullptr),
                 heads_view<const double>(q.data(), c.q_len, qw), heads_view<const double>(k.data(), c.k_len, kw),
                 heads_view<const double>(v.data(), c.k_len, kw), heads_view<double>(o64.data(), c.q_len, qw),
                 lse64.data());
  const std::vector<float> qf(q.begin(), q.end()), kf(k.begin(), k.end()), vf(v.begin(), v.end()),
      biasf(bias.begin(), bias.end());
  std::vector<float> o32(q.size()), lse32(lse64.size());
  tiles::forward(attention_problem<float>(c, km, qm, c.bias ? biasf.data() : nullptr),
                 heads_view<const float>(qf.data(), c.q_len, qw), heads_view<const float>(kf.data(), c.k_len, kw),
                 heads_view<const float>(vf.data(), c.k_len, kw), heads_view<float>(o32.data(), c.q_len, qw),
                 lse32.data());

  // the GPU
  xtr::cuda::DeviceBuffer<float> dq(std::int64_t(qf.size())), dk(std::int64_t(kf.size())),
      dv(std::int64_t(vf.size())), dout(std::int64_t(qf.size())), dlse(std::int64_t(lse64.size())),
      dbias(std::int64_t(biasf.size()));
  xtr::cuda::DeviceBuffer<std::uint8_t> dkm(std::int64_t(key_mask.size())), dqm(std::int64_t(query_mask.size()));
  dq.upload(qf);
  dk.upload(kf);
  dv.upload(vf);
  dbias.upload(biasf);
  dkm.upload(key_mask);
  dqm.upload(query_mask);
  const auto p = attention_problem<float>(c, km ? dkm.data() : nullptr, qm ? dqm.data() : nullptr,
                                          c.bias ? dbias.data() : nullptr);
  const auto Q = heads_view<const float>(dq.data(), c.q_len, qw), K = heads_view<const float>(dk.data(), c.k_len, kw),
             V = heads_view<const float>(dv.data(), c.k_len, kw);
  const auto O = heads_view<float>(dout.data(), c.q_len, qw);
  if (c.splits > 0) {
    xtr::cuda::DeviceBuffer<float> work(xtr::cuda::attention_decode_workspace(p, c.splits));
    xtr::cuda::attention_decode(p, Q, K, V, O, dlse.data(), c.splits, work.data());
    XTR_CUDA_CHECK(cudaDeviceSynchronize());
  } else {
    xtr::cuda::attention_forward(p, Q, K, V, O, dlse.data());
    XTR_CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::vector<float> gpu(qf.size()), gpu_lse(lse64.size());
  dout.download(gpu);
  dlse.download(gpu_lse);

  const double e_gpu = scaled_error(gpu, o64), e_cpu = scaled_error(o32, o64);
  double e_lse = 0;
  bool lse_inf_ok = true;
  for (std::size_t i = 0; i < lse64.size(); ++i) {
    if (std::isinf(lse64[i])) {
      lse_inf_ok = lse_inf_ok && std::isinf(gpu_lse[i]) && gpu_lse[i] > 0;
    } else {
      e_lse = std::max(e_lse, std::abs(double(gpu_lse[i]) - lse64[i]) / std::max(1.0, std::abs(lse64[i])));
    }
  }
  std::printf("attention %s B %lld H %lld KV %lld dh %lld Tq %lld Tk %lld offset %lld%s%s%s%s dropout %.2f splits %d: "
              "error GPU %.3g, CPU fp32 %.3g, lse %.3g\n",
              c.splits ? "decode" : "forward", (long long)c.batch, (long long)c.heads, (long long)c.kv_heads,
              (long long)c.dim_head, (long long)c.q_len, (long long)c.k_len, (long long)c.q_offset,
              c.causal ? " causal" : "", c.padding ? " padding" : "", c.bias ? " bias" : "",
              c.query_mask ? " query-mask" : "", c.dropout, c.splits, e_gpu, e_cpu, e_lse);
  check(e_gpu <= std::max(2 * e_cpu, 2e-6), "GPU attention within 2x the fp32 composition's error");
  check(e_lse <= 1e-5, "GPU lse within 1e-5");
  check(lse_inf_ok, "GPU lse is +inf exactly where nothing is visible or the query is padded");
}

void compare_attention_cases() {
  std::uint64_t seed = 1;
  for (bool causal : {true, false})
    for (std::int64_t dh : {32, 64, 128})
      for (std::int64_t t : {97, 257}) {
        AttentionCase c;
        c.dim_head = dh;
        c.q_len = c.k_len = t;
        c.causal = causal;
        c.kv_heads = dh == 128 ? 1 : (dh == 64 ? 2 : 4);
        c.padding = t == 257;
        compare_attention(c, seed++);
      }
  {
    AttentionCase c;  // T = 1025, every modifier
    c.q_len = c.k_len = 1025;
    c.batch = 1;
    c.padding = c.bias = c.query_mask = true;
    c.dropout = 0.1;
    compare_attention(c, seed++);
  }
  for (int splits : {1, 4, 16, 64})
    for (bool causal : {true, false}) {
      AttentionCase c;  // decoding: one or three new queries over a long cache
      c.q_len = splits == 4 ? 3 : 1;
      c.k_len = 1025;
      c.q_offset = c.k_len - c.q_len;
      c.causal = causal;
      c.padding = c.bias = true;
      c.dim_head = splits == 16 ? 128 : 64;
      c.splits = splits;
      compare_attention(c, seed++);
    }
}

/// What the attention launchers refuse before launching anything: testable without a device.
void check_attention_arguments() {
  AttentionCase c;
  float dummy = 0;
  const auto view = heads_view<const float>(&dummy, 1, 1 << 10);
  const auto out = heads_view<float>(&dummy, 1, 1 << 10);
  auto forward = [&](xtr::ops::AttentionProblem<float> p) {
    return [=] { xtr::cuda::attention_forward(p, view, view, view, out, nullptr); };
  };
  auto p = attention_problem<float>(c, nullptr, nullptr, nullptr);
  p.dim_head = 80;
  check(throws_xtr_error(forward(p), "head dim 80 has no compiled kernel; the supported head dims are 32, 64 and 128"),
        "attention_forward names the head dims it supports");
  p = attention_problem<float>(c, nullptr, nullptr, nullptr);
  p.kv_heads = 3;
  check(throws_xtr_error(forward(p), "kv_heads 3 must divide heads 4"), "attention_forward checks kv_heads");
  p = attention_problem<float>(c, nullptr, nullptr, nullptr);
  p.mem_len = 2;
  check(throws_xtr_error(forward(p), "memory keys (mem_len 2) have no CUDA kernel yet"),
        "attention_forward refuses memory keys");
  p = attention_problem<float>(c, nullptr, nullptr, nullptr);
  check(throws_xtr_error([&] { xtr::cuda::attention_forward(p, {}, view, view, out, nullptr); }, "null q, k, v or o"),
        "attention_forward refuses null operands");
  check(throws_xtr_error([&] { xtr::cuda::attention_decode(p, view, view, view, out, nullptr, 0, &dummy); },
                         "splits must be in [1, 65535], got 0"),
        "attention_decode checks splits");
  check(throws_xtr_error([&] { xtr::cuda::attention_decode(p, view, view, view, out, nullptr, 4, nullptr); },
                         "null workspace"),
        "attention_decode refuses a null workspace");
  p.dropout = 0.1;
  check(throws_xtr_error([&] { xtr::cuda::attention_decode(p, view, view, view, out, nullptr, 4, &dummy); },
                         "decoding takes no attention dropout"),
        "attention_decode refuses dropout");
  p = attention_problem<float>(c, nullptr, nullptr, nullptr);
  check(xtr::cuda::attention_decode_workspace(p, 4) == 2 * 4 * 97 * 4 * (2 + 64),
        "attention_decode_workspace counts (m, l, o) per row and split");
}

}  // namespace

int main() {
  // Argument checks happen on the host before any launch: testable without a device.
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, 1.0, nullptr, 8); }), "p = 1 is rejected");
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, -0.1, nullptr, 8); }), "p < 0 is rejected");
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, 0.1, nullptr, -1); }), "n < 0 is rejected");
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, 0.1, nullptr, 8); }), "a null mask is rejected");

  check_plumbing_on_host();
  check_attention_arguments();

  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    check_without_device();
    xtr::cuda::testing::check_backend_without_device();
    failures += xtr::cuda::testing::backend_failures;
    if (failures) {
      std::printf("FAILED: %d host-side check(s)\n", failures);
      return 1;
    }
    std::printf("host-side checks passed; skipped: no CUDA device (%s)\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
    return 0;
  }

  check_plumbing_on_device();
  compare_dropout_mask({.seed = 0, .stream = 0}, 0.1, 1 << 20);
  compare_dropout_mask({.seed = 1234, .stream = 7}, 0.5, 3'000'001);  // n not a multiple of 4: a partial last block
  // The streams TransformerWrapper draws from: RandomStream{seed, 1}.fork(forward_pass * 1024 + site).
  compare_dropout_mask(xtr::RandomStream{42, 1}.fork(3 * 1024 + 2), 0.25, 4'194'307);
  compare_dropout_mask({.seed = 5, .stream = 1ull << 40}, 0.0, 1000);  // p = 0 keeps everything
  // a data-parallel rank's slice: the stream from draw 4·k + 3 (a block split across the slice's start)
  compare_dropout_mask(xtr::RandomStream{42, 1}.fork(7).from(4 * 1000 + 3), 0.25, 100'001);
  compare_attention_cases();  // kernels that have never run before the first machine with a GPU
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  xtr::cuda::testing::compare_backend_on_device();
  failures += xtr::cuda::testing::backend_failures;

  std::printf(failures ? "FAILED: %d check(s)\n" : "all CUDA checks passed\n", failures);
  return failures ? 1 : 0;
}
